"""The GPU check: everything that needs an NVIDIA GPU, in one run of a few minutes, into ``gpu_check.json`` + ``.md``.

``dinofeat doctor --gpu --out DIR`` (or, in a source checkout, ``python -m benchmarks.gpu_check --out DIR``, the same
flags); ``--dry-run`` prints every
row it would measure and exits (runs anywhere). Offline: deterministic weights from `dinofeat.testing`, the bundled
example images, no download. Sections, in order (each row records its status, figures and the reason of a skip or
failure; a failing row never stops the others; the files are rewritten after every section, so a run cut short
still leaves what it measured):

1. ``doctor``: `dinofeat.doctor.selftests.self_tests` (every backend / kernel self-test, GPU ones included).
2. ``vit``: ViT-S/8 forward, 224x224, stride 4, layer-9 keys + saliency: images/s for fp32, tf32, bf16, fp16 x
   eager / CUDA graph x batch 1, 8, 32, with the keys / saliency deviation of image 0 against the CPU fp32
   reference; ONNX Runtime CUDA EP and TensorRT rows (skipped: not installed where they are not).
3. ``best_buddies``: the paper pair size (3025 x 3025 x 6528) and a large one (18921 x 18921 x 6528, load ~560):
   time, TFLOP/s and the cuBLAS GEMM rate of the same shape and dtype measured in the same run.
   ``binned``: `best_buddies_binned` (the default matching path) through the CUDA kernels against the CPU
   reference (``impl="reference"``) on the paper grid (55 x 55, C 384): nn / mask agreement (a disagreement must
   be a near-tie of the binned cosine), similarity deviation, time.
4. ``log_bin``: GB/s (bytes read + written) against the device-to-device copy bandwidth of the same run.
5. ``paper_pair``: `find_correspondences` on the two example images (load 224, fp32, cuda): latency p50 / p99
   and pairs/s.
6. ``stream_latency``: `dinofeat.stream.FrameStream` over 480x640 rgb8 host frames cut from the example images
   (keyframe + matches, load 224): per-frame latency p50 / p95 / p99 / max, jitter, cold start, fps per backend
   (`dinofeat bench latency`'s measurement; ONNX Runtime / TensorRT skipped where not installed).
7. ``profiles``: one TensorRT engine from the dynamic-H, W graph with a profile per size bucket (224x224,
   320x480); a row per profile: a size inside it, the keys / saliency deviation against the CPU fp32 reference
   and images/s (skipped without tensorrt).
8. ``precision``: `dinofeat bench precision` on the GPU (deterministic weights, 2 WILLOW pairs per class from
   ``../shared/data/willow``): a row per backend x precision, its files under ``DIR/precision``.
9. ``pytest``: ``pytest -m gpu`` in a subprocess (JUnit XML parsed), bounded by the time left of the budget (a
   row that fails when less than PYTEST_MIN_S is left); tests of a package that is not installed here (tensorrt,
   onnxruntime-gpu) are named in DINOFEAT_ALLOW_GPU_SKIPS. A missing pytest is a failure (the dry run too: it
   marks the row FAIL and exits 1).

Peak GPU memory (torch's allocator) is recorded per section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..bench.checkout import ROOT
from ..io import atomic_write_text
from .gpu_pytest import PYTEST_MISSING, pytest_importable
from .gpu_pytest import pytest_row as _pytest

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MODES = ("eager", "cuda_graph")
BATCHES = (1, 8, 32)
LOAD = 224
STRIDE = 4
LAYER = 9
BB_SIZES = ((3025, 3025, 6528), (18921, 18921, 6528))  # paper pair (224, stride 4); ~560 load
BB_PRECISIONS = ("fp32", "bf16", "fp16")
LOG_BIN_SHAPE = (8, 55, 55, 384)  # (B, Hp, Wp, C): 8 images of the paper setting
PAIR_RUNS = 30
BINNED_GRID, BINNED_C = (55, 55), 384  # the paper pair's grid (224, stride 4) and ViT-S keys
BINNED_TOL = 1e-5  # |sim| deviation, and the margin of a near-tie, of the binned CUDA kernel vs the reference
STREAM_FRAMES = 40  # frames per stream-latency row (keyframe + warm-up match + 38 measured), <= 30 s each
STREAM_ROWS = (("torch", "fp32"), ("torch", "fp16"), ("onnxruntime", "fp32"), ("tensorrt", "fp16"))
PROFILE_BUCKETS = ((224, 224), (320, 480))  # TensorRT size buckets of the profiles section
PROFILE_SIZES = ((120, 180), (300, 412))  # one input inside each bucket (not a multiple of the patch)
BUDGET_S = 360.0  # the whole check, H100/H200 class


# ------------------------------------------------------------------------------------------------- plan
def plan() -> list[tuple[str, str]]:
    """Every (section, row) the check measures, in order (what --dry-run prints)."""
    rows = [("doctor", "dinofeat doctor self-tests (every backend and kernel, GPU included)")]
    for p in PRECISIONS:
        for m in MODES:
            for b in BATCHES:
                rows.append(("vit", f"torch {p} {m} batch {b}: images/s, keys/saliency deviation vs CPU fp32"))
    rows.append(("vit", "onnxruntime CUDA EP fp32 batch 1: images/s, deviation (skipped: not installed without "
                        "onnxruntime-gpu)"))
    rows.append(("vit", "tensorrt fp32 / fp16 batch 1: images/s, deviation (skipped: not installed without tensorrt)"))
    for t1, t2, c in BB_SIZES:
        for p in BB_PRECISIONS:
            rows.append(("best_buddies", f"{t1}x{t2}x{c} {p}: time, TFLOP/s, cuBLAS GEMM TFLOP/s same shape"))
    (h, w), c = BINNED_GRID, BINNED_C
    rows.append(("binned", f"best_buddies_binned cuda fp32 {h}x{w} vs {h}x{w}, C {c}, against the CPU reference: "
                           "nn/mask agreement, sim deviation, ms"))
    b, hp, wp, c = LOG_BIN_SHAPE
    rows.append(("log_bin", f"({b}, {hp * wp}, {c}) fp32 -> 17 bins: GB/s vs device copy GB/s"))
    rows.append(("paper_pair", f"find_correspondences examples, load {LOAD}, fp32 cuda: latency p50/p99, pairs/s"))
    for backend, precision in STREAM_ROWS:
        rows.append(("stream_latency", f"FrameStream {backend} {precision} cuda 480x640 rgb8, load {LOAD}: latency "
                                       "p50/p95/p99/max, jitter, cold, fps"))
    for h, w in PROFILE_BUCKETS:
        rows.append(("profiles", f"tensorrt fp32 dynamic engine, profile up to {h}x{w}: a size inside it, "
                                 "deviation vs CPU fp32, images/s (skipped: not installed without tensorrt)"))
    rows.append(("precision", "dinofeat bench precision on cuda: cosine / saliency / Best Buddies vs fp32 per "
                              "backend x precision (fp32, tf32, bf16, fp16)"))
    rows.append(("pytest", "pytest -m gpu: passed / failed / skipped, failing tests named"))
    rows.append(("memory", "peak GPU memory per section (torch allocator)"))
    return rows


# ------------------------------------------------------------------------------------------------- helpers
class Check:
    """Collects rows and writes gpu_check.json / gpu_check.md (atomically) after every section."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        self.rows: list[dict] = []
        self.meta: dict = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, section: str, name: str, status: str, detail: str = "", **metrics) -> None:
        row = {"section": section, "name": name, "status": status, "detail": detail, **metrics}
        self.rows.append(row)
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        print(f"[{self.elapsed():6.1f}s] {status.upper():7} {section}: {name}  {figures} {detail}", flush=True)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"meta": {**self.meta, "wall_s": round(self.elapsed(), 1), "load_average_end": os.getloadavg()},
               "rows": self.rows}
        atomic_write_text(self.out / "gpu_check.json", json.dumps(doc, indent=2, default=str))
        atomic_write_text(self.out / "gpu_check.md", markdown(doc))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(doc: dict) -> str:
    m = doc["meta"]
    lines = ["# dinofeat GPU check", "", f"GPU: **{m.get('gpu', '?')}**; {m.get('versions', '')}",
             f"Started {m.get('started', '?')}, wall time {m.get('wall_s', '?')} s, load average at start / end: "
             f"{m.get('load_average_start', '?')} / {m.get('load_average_end', '?')}.", ""]
    section = None
    for r in doc["rows"]:
        if r["section"] != section:
            section = r["section"]
            lines += ["", f"## {section}", "", "| row | status | figures | detail |", "|---|---|---|---|"]
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("section", "name", "status",
                                                                                "detail"))
        lines.append(f"| {r['name']} | {r['status']} | {figures} | {r['detail'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _events_time(fn, *, warmup: int = 2, min_iters: int = 3, min_s: float = 0.5, max_iters: int = 200) -> list:
    """Seconds per call of fn (CUDA events around each call, after warm-up)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, start = [], time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - start < min_s and len(times) < max_iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return times


def _median(v: list) -> float:
    s = sorted(v)
    return s[len(s) // 2]


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def _peak(check: Check, section: str) -> None:
    import torch

    check.meta.setdefault("peak_gpu_memory_MiB", {})[section] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    torch.cuda.reset_peak_memory_stats()


def _section(check: Check, section: str, fn) -> None:
    try:
        fn(check)
    except Exception as e:  # noqa: BLE001 - one failing section never stops the check
        check.add(section, "section", "fail", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    _peak(check, section)
    check.write()


# ------------------------------------------------------------------------------------------------- sections
def _doctor(check: Check) -> None:
    from .selftests import self_tests

    checks, what = self_tests(device="auto")
    for c in checks:
        check.add("doctor", c.name, c.status, c.detail, **({"deviation": c.deviation} if c.deviation else {}))


def _vit_model():
    from ..model.vit import StridedViT
    from ..model.zoo import get_model_spec
    from ..testing import deterministic_weights

    vit = StridedViT(get_model_spec("dino_vits8"), STRIDE)
    vit.load_state_dict(deterministic_weights("dino_vits8"))
    return vit.eval()


def _vit(check: Check) -> None:
    import numpy as np
    import torch

    from ..engine.backends.torch import TorchBackend
    from ..model.vit import Request

    req = Request(facets=((LAYER, "key"),), saliency=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((max(BATCHES), 3, LOAD, LOAD)).astype("float32"))
    with torch.inference_mode():
        ref = TorchBackend(_vit_model(), torch.device("cpu"), "fp32").run(x[:1], req)
    xg = x.cuda()  # images already on the device: the rows time the forward, not the host-to-device copy
    for precision in PRECISIONS:
        be = TorchBackend(_vit_model(), torch.device("cuda"), precision)
        for mode in MODES:
            for b in BATCHES:
                name = f"torch {precision} {mode} batch {b}"
                try:
                    run = _graphed(be, xg[:b].clone(), req) if mode == "cuda_graph" else \
                        (lambda b=b, be=be: be.run(xg[:b], req))
                    out = run()
                    torch.cuda.synchronize()
                    dev = {f"{k}_dev": _rel(out[k][:1].float(), ref[k]) for k in ref}
                    t = _median(_events_time(run, min_s=0.4))
                    check.add("vit", name, "ok", images_per_s=b / t, ms_per_batch=t * 1e3, **dev)
                except Exception as e:  # noqa: BLE001
                    check.add("vit", name, "fail", f"{type(e).__name__}: {e}")
                torch.cuda.empty_cache()
    _vit_other_backends(check, x[:1], req, ref)


def _graphed(be, static_x, req):
    """A CUDA-graph replay of be.run on a static input (warm-up on a side stream, as torch documents)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            be.run(static_x, req)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = be.run(static_x, req)

    def replay():
        graph.replay()
        return static_out

    return replay


def _vit_other_backends(check: Check, x1, req, ref) -> None:
    import torch

    try:
        import onnxruntime

        has_cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    name = "onnxruntime CUDA EP fp32 batch 1"
    if not has_cuda_ep:
        check.add("vit", name, "skipped", "not installed (onnxruntime-gpu; this onnxruntime is the CPU build)")
    else:
        _backend_row(check, name, "onnxruntime", "fp32", x1, req, ref)
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        check.add("vit", "tensorrt fp32 / fp16 batch 1", "skipped", "not installed (tensorrt)")
        return
    for precision in ("fp32", "fp16"):
        _backend_row(check, f"tensorrt {precision} batch 1", "tensorrt", precision, x1, req, ref)
        torch.cuda.empty_cache()


def _backend_row(check, name, backend, precision, x1, req, ref) -> None:
    import tempfile

    import torch

    from ..engine.backends import create_backend

    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["DINOFEAT_CACHE"] = tmp
            be = create_backend(backend, _vit_model(), torch.device("cuda"), precision, "gpu-check")
            xc = x1.cuda()
            out = be.run(xc, req)
            torch.cuda.synchronize()
            dev = {f"{k}_dev": _rel(out[k].float(), ref[k]) for k in ref}
            t = _median(_events_time(lambda: be.run(xc, req), min_s=0.4))
            check.add("vit", name, "ok", images_per_s=1 / t, **dev)
    except Exception as e:  # noqa: BLE001
        check.add("vit", name, "fail", f"{type(e).__name__}: {e}")
    finally:
        os.environ.pop("DINOFEAT_CACHE", None)


def _best_buddies(check: Check) -> None:
    import torch

    from ..engine.backends.torch import tf32_mode
    from ..kernels import best_buddies

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for t1, t2, c in BB_SIZES:
        g = torch.Generator(device="cuda").manual_seed(0)
        d1 = torch.randn(t1, c, device="cuda", generator=g)
        d2 = torch.randn(t2, c, device="cuda", generator=g)
        flop = 2.0 * t1 * t2 * c
        for p in BB_PRECISIONS:
            name = f"{t1}x{t2}x{c} {p}"
            try:
                t = _median(_events_time(lambda p=p, d1=d1, d2=d2: best_buddies(d1, d2, precision=p), min_s=0.3, warmup=1))
                a, b = d1[: min(t1, 8192)].to(dtypes[p]), d2.to(dtypes[p])
                with tf32_mode(False):
                    tg = _median(_events_time(lambda a=a, b=b: a @ b.T, min_s=0.3, warmup=1))
                gemm_tflops = 2.0 * a.shape[0] * t2 * c / tg / 1e12
                check.add("best_buddies", name, "ok", ms=t * 1e3, tflops=flop / t / 1e12,
                          cublas_gemm_tflops=gemm_tflops, fraction_of_gemm=flop / t / 1e12 / gemm_tflops)
            except Exception as e:  # noqa: BLE001
                check.add("best_buddies", name, "fail", f"{type(e).__name__}: {e}")
        del d1, d2
        torch.cuda.empty_cache()


def _binned(check: Check) -> None:
    import torch

    from ..kernels import best_buddies_binned

    (h, w), c = BINNED_GRID, BINNED_C
    name = f"best_buddies_binned cuda fp32 {h}x{w} vs {h}x{w}, C {c}, vs CPU reference"
    g = torch.Generator().manual_seed(0)
    k1, k2 = torch.randn(h * w, c, generator=g), torch.randn(h * w, c, generator=g)
    ref = best_buddies_binned(k1, (h, w), k2, (h, w), impl="reference")
    d1, d2 = k1.cuda(), k2.cuda()
    got = [r.cpu() for r in best_buddies_binned(d1, (h, w), d2, (h, w)).check()]
    t = _median(_events_time(lambda: best_buddies_binned(d1, (h, w), d2, (h, w)), min_s=0.3))
    figures = {"ms": t * 1e3, "nn_1_mismatch": int((got[0] != ref.nn_1).sum()),
               "nn_2_mismatch": int((got[2] != ref.nn_2).sum()), "mask_mismatch": int((got[4] != ref.mask).sum()),
               "sim_dev": max(float((got[1] - ref.sim_1).abs().max()), float((got[3] - ref.sim_2).abs().max()))}
    ties = _near_ties(k1, k2, (h, w), got[0], ref.nn_1, ref.sim_1) and \
        _near_ties(k2, k1, (h, w), got[2], ref.nn_2, ref.sim_2)
    ok = figures["sim_dev"] <= BINNED_TOL and ties
    check.add("binned", name, "ok" if ok else "fail", "" if ok else
              f"deviation above {BINNED_TOL} or a disagreement that is not a near-tie", **figures)


def _near_ties(k1, k2, grid, nn, ref_nn, ref_sim) -> bool:
    """Every row where the kernel's argmax differs from the reference's reaches the reference's maximum within
    BINNED_TOL (binned cosine of the two rows, recomputed on the CPU)."""
    import torch

    from ..kernels import log_bin_rows

    rows = torch.nonzero(nn != ref_nn).flatten()
    if rows.numel() == 0:
        return True
    if bool((nn[rows] < 0).any()):
        return False
    r1, r2 = log_bin_rows(k1, grid, rows), log_bin_rows(k2, grid, nn[rows])
    cos = torch.nn.functional.cosine_similarity(r1, r2, dim=-1, eps=1e-8)
    return bool(((cos - ref_sim[rows]).abs() <= BINNED_TOL).all())


def _log_bin(check: Check) -> None:
    import torch

    from ..kernels import log_bin

    b, hp, wp, c = LOG_BIN_SHAPE
    x = torch.randn(b, hp * wp, c, device="cuda")
    out = log_bin(x, (hp, wp))
    nbytes = x.numel() * 4 + out.numel() * 4
    t = _median(_events_time(lambda: log_bin(x, (hp, wp)), min_s=0.3))
    src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    tc = _median(_events_time(lambda: dst.copy_(src), min_s=0.3))
    copy_gbs = 2 * src.numel() / tc / 1e9
    check.add("log_bin", f"({b}, {hp * wp}, {c}) fp32 -> 17 bins", "ok", ms=t * 1e3, gb_per_s=nbytes / t / 1e9,
              copy_gb_per_s=copy_gbs, fraction_of_copy=nbytes / t / 1e9 / copy_gbs)


def _paper_pair(check: Check) -> None:
    import tempfile

    import torch

    from ..correspondences import find_correspondences
    from ..engine.extractor import Extractor
    from ..testing import deterministic_weights

    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp) / "dino_vits8_deterministic.pth"
        torch.save(deterministic_weights("dino_vits8"), w)
        ex = Extractor(model="dino_vits8", stride=STRIDE, weights=str(w), device="cuda", progress=False)
        a, b = str(ROOT / "examples" / "img_a.png"), str(ROOT / "examples" / "img_b.png")
        res = find_correspondences(a, b, load_size=LOAD, extractor=ex)  # warm-up
        lat = []
        start = time.perf_counter()
        while len(lat) < PAIR_RUNS and time.perf_counter() - start < 25:
            t0 = time.perf_counter()
            find_correspondences(a, b, load_size=LOAD, extractor=ex)
            torch.cuda.synchronize()
            lat.append(time.perf_counter() - t0)
    s = sorted(lat)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    check.add("paper_pair", f"find_correspondences examples, load {LOAD}, fp32 cuda", "ok",
              p50_ms=_median(lat) * 1e3, p99_ms=p99 * 1e3, pairs_per_s=len(lat) / sum(lat), runs=len(lat),
              pairs=len(res.points1))


def _stream_latency(check: Check) -> None:
    from ..bench.latency import measure
    from ..config import ExtractorConfig, MatchConfig
    from ..errors import BackendUnavailableError
    from ..testing import deterministic_weights

    weights = deterministic_weights("dino_vits8")
    for backend, precision in STREAM_ROWS:
        name = f"FrameStream {backend} {precision} cuda 480x640 rgb8, load {LOAD}"
        try:
            config = ExtractorConfig(weights=weights, stride=STRIDE, backend=backend, device="cuda",
                                     precision=precision, load_size=LOAD)
            doc = measure(config, MatchConfig(layer=LAYER), frames=STREAM_FRAMES, frame_size=(480, 640),
                          max_seconds=30)
        except (BackendUnavailableError, ImportError) as e:
            check.add("stream_latency", name, "skipped", f"not installed: {str(e).splitlines()[0]}")
            continue
        except Exception as e:  # noqa: BLE001 - one failing row never stops the others
            check.add("stream_latency", name, "fail", f"{type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        lat, jit = doc["latency_ms"], doc["jitter_ms"]
        check.add("stream_latency", name, "ok", p50_ms=lat["p50"], p95_ms=lat["p95"], p99_ms=lat["p99"],
                  max_ms=lat["max"], jitter_std_ms=jit["std"], cold_ms=doc["cold_ms"], fps=doc["fps"],
                  frames=doc["frames_in_percentiles"], peak_gpu_mb=doc.get("peak_gpu_mb"))


def _profiles(check: Check) -> None:
    import tempfile

    import numpy as np
    import torch

    from ..engine.backends.torch import TorchBackend
    from ..export.tensorrt import bucket_profiles
    from ..model.vit import Request

    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        check.add("profiles", "tensorrt dynamic engine", "skipped", "not installed (tensorrt)")
        return
    from ..engine.backends.tensorrt import TensorRTBackend

    req = Request(facets=((LAYER, "key"),), saliency=True)
    with tempfile.TemporaryDirectory() as tmp:
        be = TensorRTBackend(_vit_model(), torch.device("cuda"), "fp32", "gpu-check", cache_dir=tmp,
                             shape_profiles=bucket_profiles(PROFILE_BUCKETS, 8, max_batch=1))
        for i, ((bh, bw), (h, w)) in enumerate(zip(PROFILE_BUCKETS, PROFILE_SIZES, strict=True)):
            name = f"tensorrt fp32 dynamic engine, profile {i} (up to {bh}x{bw}) at {h}x{w}"
            try:
                x = torch.from_numpy(np.random.default_rng(i).standard_normal((1, 3, h, w)).astype("float32"))
                with torch.inference_mode():
                    ref = TorchBackend(_vit_model(), torch.device("cpu"), "fp32").run(x, req)
                xc = x.cuda()
                out = be.run(xc, req)
                torch.cuda.synchronize()
                dev = {f"{k}_dev": _rel(out[k].float(), ref[k]) for k in ref}
                t = _median(_events_time(lambda xc=xc: be.run(xc, req), min_s=0.4))
                check.add("profiles", name, "ok", images_per_s=1 / t, **dev)
            except Exception as e:  # noqa: BLE001
                check.add("profiles", name, "fail", f"{type(e).__name__}: {e}")


def _precision(check: Check) -> None:
    from ..bench.precision import run_precision_bench

    data = ROOT.parent / "shared" / "data" / "willow"
    if not data.is_dir():
        check.add("precision", "dinofeat bench precision", "skipped", f"no WILLOW data at {data}")
        return
    doc = run_precision_bench(model="dino_vits8", stride=STRIDE, weights=None, data=data,
                              out=check.out / "precision", pairs_per_class=2, load_size=LOAD, layer=LAYER,
                              device="cuda", progress=False)
    for r in doc["rows"]:
        name = f"{r['backend']} {r['precision']}"
        if r["status"] != "measured":
            check.add("precision", name, "skipped", r["reason"])
            continue
        check.add("precision", name, "fail" if r["nan"] else "ok", r["note"], cosine_min=r["cosine_min"],
                  saliency_max_dev=r["saliency_max_dev"], bb_jaccard_mean=r["bb_jaccard_mean"],
                  s_per_image=r["seconds_per_image"])


SECTIONS = (("doctor", _doctor), ("vit", _vit), ("best_buddies", _best_buddies), ("binned", _binned),
            ("log_bin", _log_bin), ("paper_pair", _paper_pair), ("stream_latency", _stream_latency),
            ("profiles", _profiles), ("precision", _precision), ("pytest", _pytest))


def _meta(check: Check) -> None:
    import platform
    from datetime import datetime, timezone

    import torch

    from ..version import __version__

    props = torch.cuda.get_device_properties(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "dinofeat": __version__}
    for mod in ("cupy", "onnxruntime", "tensorrt"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    check.meta.update(gpu=f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})",
                      versions=versions, started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      load_average_start=os.getloadavg(), cpu_count=os.cpu_count())


def run_check(out, *, dry_run: bool = False, budget_s: float = BUDGET_S, sections=None) -> int:
    """Run the check into `out` (or print the plan with `dry_run`). Returns the exit code: 0 all rows ok or
    skipped, 1 a row failed (the dry run: pytest cannot be imported), 2 no GPU."""
    if dry_run:
        print(f"dinofeat GPU check plan (budget {budget_s:.0f} s; writes gpu_check.json and gpu_check.md):")
        for section, row in plan():
            print(f"  {section:<13} {row}")
        if not pytest_importable():
            print(f"  {'pytest':<13} FAIL: {PYTEST_MISSING}")
            return 1
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU (torch.cuda.is_available() is False); use --dry-run to see the plan",
              file=sys.stderr)
        return 2
    check = Check(Path(out), budget_s)
    _meta(check)
    torch.cuda.reset_peak_memory_stats()
    for name, fn in SECTIONS:
        if sections is None or name in sections:
            _section(check, name, fn)
    check.write()
    failed = [r for r in check.rows if r["status"] == "fail"]
    print(f"gpu_check: {len(check.rows)} rows, {len(failed)} failed, {check.elapsed():.0f} s; "
          f"wrote {check.out / 'gpu_check.json'} and {check.out / 'gpu_check.md'}")
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="gpu_check", help="output directory (default ./gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="print every row it would measure, run nothing")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="time budget of the whole check (s)")
    parser.add_argument("--sections", nargs="+", default=None, choices=[s for s, _ in SECTIONS],
                        help="run only these sections")


def main(argv: list[str] | None = None, prog: str = "python -m dinofeat.doctor.gpu_check") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_check(args.out, dry_run=args.dry_run, budget_s=args.budget_s, sections=args.sections)


if __name__ == "__main__":
    sys.exit(main())
