"""Concurrency (issue 15 §2): one Extractor shared by 4 threads == serial; 4 processes creating the same cache
entries at once (weights download from a local HTTP server, ONNX export) each get a valid file, one per key.

Thread-safety choice (documented in `Extractor`): the torch backend runs concurrently; the onnxruntime and
tensorrt backends are serialised by a lock per Extractor. Cache entries are written to temp files and renamed;
ONNX / TensorRT entries are also built under a per-key `flock` (`dinofeat.export.cache.entry_lock`).

The feature store gets the same test (`test_processes_share_feature_store`): 4 processes fill the same on-disk
entries at once, a torn entry among them; every process reads back valid features, one final file per key.
"""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing as mp
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_cases import one_torch_thread  # noqa: F401 - autouse fixture

import dinofeat

N = 4
LOAD = 16


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (30 + 6 * i, 40 - 4 * i, 3), dtype=np.uint8) for i in range(N)]


def _together(fn, args: list) -> list:
    """fn(*a) for every a, on N threads released at once by a barrier; results in order."""
    barrier = threading.Barrier(len(args))

    def call(a):
        barrier.wait(timeout=60)
        return fn(*a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


def test_extractor_from_4_threads_equals_serial(extractor):
    images = _images()

    def features(img):
        batch, _ = extractor.preprocess(img, LOAD)
        f = extractor.extract(batch, layer=9, facet="key", bin=True, saliency=True)
        return f.descriptors, f.saliency

    serial = [features(img) for img in images]
    for _ in range(2):  # twice: the second round reuses the per-size caches the first filled concurrently
        threaded = _together(features, [(img,) for img in images])
        for (d0, s0), (d1, s1) in zip(serial, threaded, strict=True):
            assert torch.equal(d0, d1) and torch.equal(s0, s1)


def test_find_correspondences_from_4_threads_equals_serial(extractor):
    images = _images()
    pairs = [(images[i], images[(i + 1) % N]) for i in range(N)]

    def match(a, b):
        c = dinofeat.find_correspondences(a, b, num_pairs=4, load_size=LOAD, extractor=extractor)
        return c.points1, c.points2, c.nn_1, c.sim_1, c.nn_2, c.bbs_mask

    serial = [match(a, b) for a, b in pairs]
    threaded = _together(match, pairs)
    for s, t in zip(serial, threaded, strict=True):
        assert s[0] == t[0] and s[1] == t[1]
        assert all(torch.equal(x, y) for x, y in zip(s[2:], t[2:], strict=True))


# ------------------------------------------------------------------------------------------------ processes
class _Slow(http.server.BaseHTTPRequestHandler):
    """Serves one file, pausing half-way so that the downloads overlap."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        body = self.server.body
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        half = len(body) // 2
        self.wfile.write(body[:half])
        self.wfile.flush()
        time.sleep(0.3)
        self.wfile.write(body[half:])


def _cache_child(url: str, cache: str, barrier, results) -> None:
    """One process: download the weights into the shared cache, then get the ONNX export of a 1-block graph."""
    import dataclasses
    import os
    import warnings

    os.environ["DINOFEAT_CACHE"] = cache
    torch.set_num_threads(1)
    try:
        import onnx

        from dinofeat.export.onnx import get_onnx
        from dinofeat.model.vit import Request, StridedViT
        from dinofeat.model.weights import file_sha256, load_weights
        from dinofeat.model.zoo import MODELS

        spec = dataclasses.replace(MODELS["dino_vits8"], url=url, sha256=None)
        barrier.wait(timeout=120)
        loaded = load_weights(spec, None, progress=False)
        vit = StridedViT(spec, 4)
        vit.load_state_dict(loaded.state_dict)
        barrier.wait(timeout=120)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            path = get_onnx(vit.eval(), Request(facets=((0, "key"),)), 16, 16, weights_id=loaded.sha256,
                            cache_dir=cache)
        data = Path(path).read_bytes()
        onnx.checker.check_model(onnx.load_from_string(data))
        refused = sum("fails its SHA-256" in str(w.message) for w in seen)
        results.put(("ok", loaded.sha256, file_sha256(loaded.source), str(path), hashlib.sha256(data).hexdigest(),
                     refused))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def run_processes(target, args: tuple, n: int = N, timeout: float = 300) -> list:
    """Start n forked processes of target(*args, barrier, results) together; return their results."""
    ctx = mp.get_context("fork")  # children inherit the imports (spawn: ~10 s of imports each on 2 loaded cores)
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def assert_one_final_file_per_key(directory: Path, expected: list[str]) -> None:
    """The folder holds exactly the expected final files (hidden lock files aside): no temp / partial file."""
    names = sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") or not p.name.endswith(".lock"))
    assert names == sorted(expected), names


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared_cache")


def _corrupt_onnx_entry(root: Path, weights_file: Path) -> tuple[str, str]:
    """Store, under the key get_onnx will compute, an entry whose graph bytes changed after it was stored."""
    from dinofeat.export import cache
    from dinofeat.export.onnx import graph_spec
    from dinofeat.model.vit import Request, StridedViT
    from dinofeat.model.weights import file_sha256
    from dinofeat.model.zoo import MODELS

    with torch.device("meta"):
        vit = StridedViT(MODELS["dino_vits8"], 4)
    key = cache.make_key(graph_spec(vit, Request(facets=((0, "key"),)), 16, 16, "fp32",
                                    file_sha256(weights_file)).cache_fields("plain"))
    name = f"dino_vits8_s4_16x16_fp32_plain_{key}.onnx"
    cache.store(root / "onnx", key, {name: b"a graph"}, {"onnx": name})
    (root / "onnx" / name).write_bytes(b"a torn gr")
    return name, key


def test_processes_share_cache(shared_cache, vits8_weights_file):
    body = vits8_weights_file.read_bytes()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    srv.body, srv.hits = body, 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cache = shared_cache
    onnx_name, key = _corrupt_onnx_entry(cache, vits8_weights_file)  # the processes must rebuild it, once
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/dino_deitsmall8_pretrain.pth"
        results = run_processes(_cache_child, (url, str(cache)))
    finally:
        srv.shutdown()
        srv.server_close()
    errors = [r for r in results if r[0] != "ok"]
    assert not errors, errors
    want = hashlib.sha256(body).hexdigest()
    assert {r[1] for r in results} == {r[2] for r in results} == {want}  # every process: the whole, valid file
    assert len({r[3] for r in results}) == 1 and len({r[4] for r in results}) == 1  # one ONNX entry, same bytes
    assert 1 <= srv.hits <= N
    name = "dino_deitsmall8_pretrain.pth"
    assert_one_final_file_per_key(cache / "weights", [name, name + ".sha256"])
    onnx_file = Path(results[0][3])
    assert onnx_file.name == onnx_name and sum(r[5] for r in results) == 1  # one process refused the torn entry
    assert_one_final_file_per_key(cache / "onnx", [onnx_file.name, f"{key}.json"])
    assert (cache / "onnx" / f".{key}.lock").exists()


def test_onnxruntime_backend_is_serialised_and_equals_serial(extractor, shared_cache):
    """The lock path: an onnxruntime-backed Extractor from 4 threads gives the serial results, one session.

    Runs after `test_processes_share_cache`, whose plain ONNX graph (same weights, size and output) it reuses."""
    import copy

    from dinofeat.engine.backends.onnxruntime import OnnxRuntimeBackend

    ex = copy.copy(extractor)  # same weights and model, its own backend and lock
    ex.backend = OnnxRuntimeBackend(extractor.backend.model, "cpu", "fp32", extractor.weights_sha256, optimize=False,
                                    threads=1, cache_dir=shared_cache)
    ex._lock = threading.Lock()
    assert not getattr(ex.backend, "thread_safe", False)
    batches = [ex.preprocess(np.full((16, 16, 3), 40 * i, np.uint8), LOAD)[0] for i in range(N)]

    def keys(b):
        return ex.extract(b, layer=0, facet="key").descriptors

    threaded = _together(keys, [(b,) for b in batches])
    serial = [keys(b) for b in batches]
    assert all(torch.equal(s, t) for s, t in zip(serial, threaded, strict=True))
    assert len(ex.backend._sessions) == 1
    reference = [extractor.extract(b, layer=0, facet="key").descriptors for b in batches]
    assert all(torch.allclose(s, r, rtol=1e-4, atol=1e-5) for s, r in zip(serial, reference, strict=True))


# ------------------------------------------------------------------------------------------- feature store
def _store_child(store_dir: str, images: list, extractor, barrier, results) -> None:
    """One process: a Matcher on the shared on-disk store computes (or reads) every image's features at once
    with the others, then a fresh store (no memory cache) reads every entry back."""
    torch.set_num_threads(1)
    try:
        from dinofeat.pipeline.store import FeatureStore

        m = dinofeat.Matcher(extractor=extractor, load_size=LOAD, cache_dir=store_dir, cache_bytes=0)
        keys = [m.key(img) for img in images]
        barrier.wait(timeout=120)
        mine = [m.features(img) for img in images]
        barrier.wait(timeout=120)  # every process has written (or read) every entry
        fresh = FeatureStore(store_dir, cache_bytes=0)
        back = [fresh.get(k) for k in keys]
        same = [b is not None and torch.equal(a.descriptors, b.descriptors) and torch.equal(a.saliency, b.saliency)
                for a, b in zip(mine, back, strict=True)]
        results.put(("ok", keys, same, dict(m.store.stats), dict(fresh.stats),
                     [hashlib.sha256(a.descriptors.numpy().tobytes()).hexdigest() for a in mine]))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_share_feature_store(extractor, tmp_path):
    """4 processes fill the same feature-store entries at once: each gets valid features (equal across
    processes), a pre-existing corrupt entry is rebuilt and never used, and each key ends as one final file."""
    images = _images()
    store_dir = tmp_path / "store"
    probe = dinofeat.Matcher(extractor=extractor, load_size=LOAD, cache_dir=store_dir, cache_bytes=0)
    keys = [probe.key(img) for img in images]
    torn = probe.store.path(keys[0])
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}torn")  # a torn entry left by a crashed writer
    results = run_processes(_store_child, (str(store_dir), images, extractor))
    errors = [r for r in results if r[0] != "ok"]
    assert not errors, errors
    assert all(r[1] == keys for r in results)
    assert all(all(r[2]) for r in results), [r[2] for r in results]  # every entry read back == own features
    assert len({tuple(r[5]) for r in results}) == 1  # every process: the same features
    assert all(r[4]["corrupt"] == 0 and r[4]["disk_hits"] == N for r in results)  # nothing torn at the end
    assert sum(r[3]["corrupt"] for r in results) >= 1  # the torn entry was refused (by one or more processes)
    by_dir: dict[str, list[str]] = {}
    for k in keys:
        by_dir.setdefault(k[:2], []).append(f"{k}.safetensors")
    assert sorted(p.name for p in store_dir.iterdir()) == sorted(by_dir)
    for sub, names in by_dir.items():
        assert_one_final_file_per_key(store_dir / sub, names)
