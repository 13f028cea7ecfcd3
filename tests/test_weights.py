"""dinofeat.model.weights: local files in every layout, safe loading, the cache, and real downloads from 127.0.0.1."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dinofeat.errors import InputError, WeightsError
from dinofeat.model.weights import (
    DINOV3_ACCESS_URL,
    LoadedWeights,
    cache_dir,
    download_weights,
    file_sha256,
    list_weights,
    load_weights,
    read_sidecar,
    verify_weights,
)
from dinofeat.model.zoo import MODELS
from dinofeat.testing import deterministic_weights

VITS8 = MODELS["dino_vits8"]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def vits8():
    return deterministic_weights("dino_vits8")


@pytest.fixture(scope="module")
def vits8_file(tmp_path_factory, vits8) -> Path:
    path = tmp_path_factory.mktemp("w") / "dino_deitsmall8_pretrain.pth"
    torch.save(vits8, path)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------------------
# local HTTP server
# ---------------------------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        name = self.path.lstrip("/")
        srv.hits[name] = srv.hits.get(name, 0) + 1
        kind, _, key = name.partition("/")
        body = srv.files.get(key)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) + (1000 if kind in ("short", "reset") else 0)))
        self.end_headers()
        if kind == "slow":
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            time.sleep(0.2)
            self.wfile.write(body[half:])
        elif kind == "reset":  # part of the body, then a TCP reset
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:  # "ok" and "short" (Content-Length larger than the body, then the connection closes)
            self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the reset route breaks its own socket on purpose
        pass


@pytest.fixture(scope="module")
def server(vits8_file):
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files = {"dino_deitsmall8_pretrain.pth": vits8_file.read_bytes(), "small.bin": os.urandom(300_000)}
    srv.hits = {}
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# cache location
# ---------------------------------------------------------------------------------------------------------------
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("DINOFEAT_CACHE")
    assert cache_dir() == tmp_path / "x" / "dinofeat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dinofeat"


# ---------------------------------------------------------------------------------------------------------------
# local files and dicts
# ---------------------------------------------------------------------------------------------------------------
def test_official_pth(vits8_file, vits8):
    loaded = load_weights(VITS8, str(vits8_file))
    assert isinstance(loaded, LoadedWeights)
    assert_same(loaded.state_dict, vits8)
    assert loaded.sha256 == hashlib.sha256(vits8_file.read_bytes()).hexdigest() == file_sha256(vits8_file)
    assert loaded.source == str(vits8_file)
    assert "state_dict" not in repr(loaded)


def test_dino_training_checkpoint_file(tmp_path, vits8):
    ckpt = {"student": {f"module.backbone.{k}": v + 1 for k, v in vits8.items()},
            "teacher": {**{f"backbone.{k}": v for k, v in vits8.items()}, "head.last_layer.weight_v": torch.ones(3)},
            "epoch": 800, "args": argparse.Namespace(arch="vit_small", patch_size=8, lr=5e-4),
            "dino_loss": {"center": torch.zeros(1, 8)}}
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    assert_same(load_weights("dino_vits8", path).state_dict, vits8)


def test_timm_safetensors_dino_and_dinov2_reg(tmp_path, vits8):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import checkpoint_filter_fn

    for zoo, timm_name, official in [("dino_vits8", "vit_small_patch8_224.dino", vits8),
                                     ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2.lvd142m",
                                      deterministic_weights("dinov2_vits14_reg"))]:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False, num_classes=0)
        path = tmp_path / f"{zoo}.safetensors"
        save_file({k: v.contiguous() for k, v in checkpoint_filter_fn(dict(official), model).items()}, path)
        out = load_weights(zoo, path).state_dict
        assert out.keys() == official.keys()
        same = [k for k in out if torch.equal(out[k], official[k])]
        if zoo == "dino_vits8":
            assert len(same) == len(official)
        else:  # timm drops mask_token and folds the CLS position into cls_token (see layouts.py)
            assert sorted(set(official) - set(same)) == ["cls_token", "mask_token", "pos_embed"]
            assert torch.equal(out["cls_token"] + out["pos_embed"][:, :1],
                               official["cls_token"] + official["pos_embed"][:, :1])


def test_hugging_face_model_directory(tmp_path, vits8):
    hf = {"embeddings.cls_token": vits8["cls_token"], "embeddings.position_embeddings": vits8["pos_embed"],
          "embeddings.patch_embeddings.projection.weight": vits8["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": vits8["patch_embed.proj.bias"],
          "layernorm.weight": vits8["norm.weight"], "layernorm.bias": vits8["norm.bias"],
          "pooler.dense.weight": torch.zeros(384, 384), "pooler.dense.bias": torch.zeros(384)}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(12):
        for p in ("weight", "bias"):
            for ours, theirs in names.items():
                hf[f"encoder.layer.{i}.{theirs}.{p}"] = vits8[f"blocks.{i}.{ours}.{p}"]
            q, k, v = vits8[f"blocks.{i}.attn.qkv.{p}"].chunk(3)
            for n, t in zip(("query", "key", "value"), (q, k, v), strict=True):
                hf[f"encoder.layer.{i}.attention.attention.{n}.{p}"] = t.clone()
    (tmp_path / "dino-vits8").mkdir()
    save_file(hf, tmp_path / "dino-vits8" / "model.safetensors")
    loaded = load_weights(VITS8, tmp_path / "dino-vits8")
    assert_same(loaded.state_dict, vits8)
    assert loaded.source.endswith("model.safetensors")


def test_in_memory_dict_hash_is_layout_independent(vits8):
    a = load_weights(VITS8, vits8)
    b = load_weights(VITS8, {"teacher": {"module.backbone." + k: v for k, v in vits8.items()}})
    assert a.source == "<state_dict>" and a.sha256 == b.sha256 and len(a.sha256) == 64
    changed = dict(vits8)
    changed["norm.bias"] = vits8["norm.bias"] + 1
    assert load_weights(VITS8, changed).sha256 != a.sha256


# ---------------------------------------------------------------------------------------------------------------
# local-file errors
# ---------------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file not found: .*nope\.pth.*weights=None"):
        load_weights(VITS8, tmp_path / "nope.pth")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(WeightsError, match=r"unsupported file type '\.npz'.*\.safetensors"):
        load_weights(VITS8, path)


@pytest.mark.parametrize("content,looks", [
    # seeded: 4096 random bytes make torch's weights-only unpickler raise UnpicklingError (seed 0), IndexError
    # (seed 17, about 1 seed in 15) or UnicodeDecodeError (seed 54); every one must be a WeightsError
    (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
    (np.random.default_rng(17).bytes(4096), "not a PyTorch checkpoint"),
    (np.random.default_rng(54).bytes(4096), "not a PyTorch checkpoint"),
    (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "it looks like a PNG image"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    (b"", "an empty file"),
])
def test_not_a_checkpoint(tmp_path, content, looks):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=looks):
        load_weights(VITS8, path)


def test_random_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(WeightsError, match="could not be read as a safetensors file"):
        load_weights(VITS8, path)


def test_truncated_checkpoint(tmp_path, vits8_file):
    path = tmp_path / "cut.pth"
    path.write_bytes(vits8_file.read_bytes()[:1_000_000])
    with pytest.raises(WeightsError, match="truncated or corrupted"):
        load_weights(VITS8, path)


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that happens."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path, vits8):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**vits8, "extra": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match=r"(?s)pickled Python objects.*open.*never unpickles arbitrary"):
        load_weights(VITS8, path)
    assert not marker.exists()


def test_wrong_architecture_file(tmp_path):
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(deterministic_weights("dinov2_vits14"), path)
    with pytest.raises(WeightsError) as err:
        load_weights(VITS8, path)
    msg = str(err.value)
    assert str(path) in msg and "model='dino_vits8'" in msg
    assert "looks like a dinov2_vits14 checkpoint (embed dim 384, patch 14, 12 blocks); pass model='dinov2_vits14'" \
        in msg


def test_bad_weights_argument():
    with pytest.raises(InputError, match="weights="):
        load_weights(VITS8, 123)


# ---------------------------------------------------------------------------------------------------------------
# downloads (real HTTP on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------------
def test_download_then_load_from_cache(server, cache, vits8):
    name = "dino_deitsmall8_pretrain.pth"
    spec = dataclasses.replace(VITS8, url=f"{server.base}/ok/{name}")
    server.hits.clear()
    loaded = load_weights(spec, None, progress=False)
    path = cache / "weights" / name
    assert loaded.source == str(path) and path.is_file()
    assert_same(loaded.state_dict, vits8)
    digest = hashlib.sha256(server.files[name]).hexdigest()
    assert loaded.sha256 == digest == read_sidecar(path)
    assert (cache / "weights" / (name + ".sha256")).read_text() == f"{digest}  {name}\n"
    assert leftovers(cache / "weights") == [name, name + ".sha256"]
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (sidecar_mode := 0o666 & ~mask)  # not mkstemp's 0600
    assert ((cache / "weights" / (name + ".sha256")).stat().st_mode & 0o777) == sidecar_mode
    # second use: no new request
    assert load_weights(spec, None, progress=False).sha256 == digest
    assert download_weights(spec, progress=False) == path
    assert server.hits == {f"ok/{name}": 1}
    # verify / list see it
    res = verify_weights(spec)
    assert res["ok"] and res["sha256"] == digest and res["expected_source"] == "sidecar"
    row = next(r for r in list_weights() if r["name"] == "dino_vits8")
    assert row["cached_path"] == str(path) and row["recorded_sha256"] == digest and row["family"] == "dino"
    assert next(r for r in list_weights() if r["name"] == "dino_vits16")["cached_path"] is None
    # later corruption is detected, by verify and by load
    with open(path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    res = verify_weights("dino_vits8")
    assert not res["ok"] and "corrupted" in res["message"]
    with pytest.raises(WeightsError, match=rf"(?s){digest} was recorded.*corrupted.*dinofeat weights download"):
        load_weights(spec, None, progress=False)


def test_download_with_progress_bar(server, tmp_path, capsys):
    data = server.files["small.bin"]
    path = download_weights("dino_vits16", url=f"{server.base}/ok/small.bin", dest_dir=tmp_path,
                            sha256=hashlib.sha256(data).hexdigest()[:12], progress=True)
    assert path == tmp_path / "dino_deitsmall16_pretrain.pth"  # the official name, whatever the URL
    assert path.read_bytes() == data
    assert "dino_deitsmall16_pretrain.pth" in capsys.readouterr().err


def test_checksum_mismatch(server, tmp_path):
    data = server.files["small.bin"]
    wrong = "ab" * 32
    with pytest.raises(WeightsError) as err:
        download_weights("dino_vits8", url=f"{server.base}/ok/small.bin", sha256=wrong, dest_dir=tmp_path,
                         progress=False)
    msg = str(err.value)
    assert wrong in msg and hashlib.sha256(data).hexdigest() in msg and "mismatch" in msg
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("route", ["short", "reset"])
def test_interrupted_download(server, tmp_path, route):
    with pytest.raises(WeightsError, match=r"interrupted.*run it again") as err:
        download_weights("dino_vits8", url=f"{server.base}/{route}/small.bin", dest_dir=tmp_path, progress=False)
    if route == "short":
        assert "received 300000 of 301000 bytes" in str(err.value)
    assert leftovers(tmp_path) == []


def test_http_404(server, tmp_path):
    with pytest.raises(WeightsError, match=r"HTTP 404.*Check the URL"):
        download_weights("dino_vits8", url=f"{server.base}/ok/absent.pth", dest_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_offline_message(cache):
    url = f"http://127.0.0.1:{closed_port()}/dino_deitsmall8_pretrain.pth"
    spec = dataclasses.replace(VITS8, url=url)
    with pytest.raises(WeightsError) as err:
        load_weights(spec, None, progress=False)
    msg = str(err.value)
    dest = cache / "weights" / "dino_deitsmall8_pretrain.pth"
    assert msg.startswith(f"could not download {url}: ")
    assert f"download {url} on a machine with internet access, then pass weights='/path/to/dino_deitsmall8_pretrain.pth'" in msg
    assert f"or copy it to {dest}" in msg
    assert leftovers(cache / "weights") == []


def test_gated_model_needs_a_local_file(cache):
    for call in (lambda: download_weights("dinov3_vits16"), lambda: load_weights("dinov3_vits16", None)):
        with pytest.raises(WeightsError) as err:
            call()
        msg = str(err.value)
        assert "no public download URL" in msg and DINOV3_ACCESS_URL in msg and "weights='/path/to/" in msg


def test_concurrent_downloads_do_not_corrupt(server, tmp_path):
    data = server.files["small.bin"]
    errors = []

    def run():
        try:
            download_weights("dino_vits8", url=f"{server.base}/slow/small.bin", dest_dir=tmp_path, progress=False)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    name = "dino_deitsmall8_pretrain.pth"
    assert (tmp_path / name).read_bytes() == data
    assert read_sidecar(tmp_path / name) == hashlib.sha256(data).hexdigest()
    assert leftovers(tmp_path) == [name, name + ".sha256"]


def test_stale_cached_file_is_downloaded_again(server, tmp_path):
    data = server.files["small.bin"]
    name = "dino_deitsmall8_pretrain.pth"
    (tmp_path / name).write_bytes(b"old")
    with pytest.warns(UserWarning, match="downloading it again"):
        path = download_weights("dino_vits8", url=f"{server.base}/ok/small.bin", dest_dir=tmp_path,
                                sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert path.read_bytes() == data


def test_cached_file_copied_by_hand_gets_a_sidecar(cache, vits8_file, vits8):
    dest = cache / "weights" / vits8_file.name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(vits8_file.read_bytes())
    assert not verify_weights("dino_vits8")["ok"]  # nothing to compare with yet
    loaded = load_weights(VITS8, None, progress=False)  # no download: the URL is never contacted
    assert_same(loaded.state_dict, vits8)
    assert read_sidecar(dest) == loaded.sha256
    assert verify_weights("dino_vits8")["ok"]


def test_verify_paths(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    res = verify_weights(str(path))
    assert res["sha256"] == digest and res["ok"] is False and res["expected_sha256"] is None
    hub = tmp_path / f"dinov3_vits16_pretrain_lvd1689m-{digest[:8]}.pth"  # torch.hub naming
    hub.write_bytes(b"abc")
    res = verify_weights(hub)
    assert res["ok"] and res["expected_source"] == "filename"
    res = verify_weights("dino_vitb16")
    assert res["ok"] is False and res["path"] is None and "dinofeat weights download dino_vitb16" in res["message"]
    with pytest.raises(InputError, match="neither a zoo model"):
        verify_weights(str(tmp_path / "absent.pth"))
