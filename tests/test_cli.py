"""The `dinofeat` CLI, run for real as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from testutil import EXAMPLES


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "dinofeat", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_match_draws_png_and_saves_npz(tmp_path, vits8_weights_file):
    png, npz = tmp_path / "m.png", tmp_path / "m.npz"
    proc = run("match", EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", "--weights", vits8_weights_file,
               "--load-size", 64, "--num-pairs", 5, "-o", png, "--save", npz, "-q")
    assert f"drawn to {png}" in proc.stdout
    im = Image.open(png)
    assert im.size == (96 + 10 + 64, 64)
    data = np.load(npz)
    assert data["points1"].shape == (5, 2) and data["nn_1"].shape == (15 * 23,)
    for field in ("sim_1", "nn_2", "sim_2", "bbs_mask", "fg_mask1", "fg_mask2", "saliency1", "saliency2",
                  "kmeans_labels", "image1", "image2"):
        assert field in data.files
    # the drawing differs from the plain side-by-side images where the pairs are
    plain = np.concatenate([data["image1"], np.full((64, 10, 3), 255, np.uint8), data["image2"]], axis=1)
    assert (np.asarray(im) != plain).any(axis=2).sum() > 5 * 20


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_extract_writes_descriptors(tmp_path, vits8_weights_file, suffix):
    out = tmp_path / f"f{suffix}"
    run("extract", EXAMPLES / "img_b.png", EXAMPLES / "img_a.png", "--weights", vits8_weights_file,
        "--load-size", 32, "--layer", 9, "--facet", "key", "--bin", "--saliency", "-o", out, "-q")
    if suffix == ".npz":
        data = dict(np.load(out))
    else:
        from safetensors.numpy import load_file

        data = load_file(out)
    assert data["descriptors_0"].shape == (49, 384 * 17) and data["saliency_0"].shape == (49,)
    assert data["descriptors_1"].shape == (7 * 11, 384 * 17)
    assert list(data["num_patches_1"]) == [7, 11]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["match", "nope.png", EXAMPLES / "img_b.png"], "IMG1: file not found"),
     (["match", EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", "-o", "x.gif"], "expected a file ending in .png"),
     (["extract", EXAMPLES / "img_a.png", "-o", "x.txt"], "expected a file ending in .npz or .safetensors"),
     (["match", EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", "--stride", "3", "--weights", "W"],
      "--stride 3 must be a positive int dividing"),
     (["match", EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", "--model", "vit_huge"], "not in the model zoo")],
)
def test_bad_arguments_give_one_clear_line(tmp_path, args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_weights_file_is_one_line(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"garbage")
    proc = run("match", EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", "--weights", bad, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(bad) in proc.stderr


def test_help_lists_commands():
    out = run("--help").stdout
    for cmd in ("match", "extract", "weights"):
        assert cmd in out


def test_weights_download_verify_list_via_local_server(tmp_path, vits8_weights_file, capsys, monkeypatch):
    """`dinofeat weights download --url` from a real HTTP server on 127.0.0.1, then verify and list (the first and
    last commands in a real process, for the exit codes and streams a user sees; the others in-process)."""
    import functools
    import http.server
    import os
    import threading

    from dinofeat.model.weights import file_sha256

    served = tmp_path / "srv"
    served.mkdir()
    (served / "w.pth").write_bytes(vits8_weights_file.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = {**os.environ, "DINOFEAT_CACHE": str(tmp_path / "cache")}
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/w.pth"
        sha = file_sha256(vits8_weights_file)

        def cli(*args, check=True):
            p = subprocess.run([sys.executable, "-m", "dinofeat", *args], capture_output=True, text=True, env=env,
                               timeout=120)
            assert not check or p.returncode == 0, p.stderr
            return p

        def in_process(*args):
            from dinofeat.cli import main

            monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
            capsys.readouterr()
            code = main(list(args))
            return code, capsys.readouterr().out

        bad = cli("weights", "download", "dino_vits8", "--url", url, "--sha256", "0" * 64, check=False)
        assert bad.returncode == 2 and sha in bad.stderr and "Traceback" not in bad.stderr
        code, out = in_process("weights", "download", "dino_vits8", "--url", url, "--sha256", sha)
        path = out.strip().split(": ", 1)[1]
        assert code == 0 and file_sha256(path) == sha and str(tmp_path / "cache") in path
        code, out = in_process("weights", "verify", "dino_vits8")
        assert code == 0 and "OK" in out
        code, out = in_process("weights", "list")
        assert code == 0 and path in out
        with open(path, "r+b") as f:  # corrupt the cached file: verify must fail, exit 1
            f.seek(1000)
            f.write(b"\x00" * 16)
        failed = cli("weights", "verify", "dino_vits8", check=False)
        assert failed.returncode == 1 and "FAILED" in failed.stdout
    finally:
        httpd.shutdown()
