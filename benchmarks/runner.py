"""The benchmark runner behind `dinofeat bench` and `python -m benchmarks`.

One run measures, on the same weights and images:

* the main pipeline per load size and torch precision, stage by stage — preprocess, ViT forward (keys + saliency
  in one pass), log-bin, Best Buddies, foreground filter + selection — as one staged call per repetition (the body
  of ``find_correspondences`` with a clock mark after each stage), giving per-stage times and memory, pairs/s and,
  per image, images/s; and the public ``find_correspondences`` end to end at ``--e2e-sizes``;
* images/s for batches at ``--batch-at``;
* at ``--matrix-sizes``: other backends (ONNX Runtime CPU / CUDA / TensorRT EP, native TensorRT), kernel
  implementations (reference, C++ CPU, CUDA) and the alternatives (torch dense, kornia, faiss);
* the baseline (a re-implementation of the original code's structure, :mod:`benchmarks.baseline`) at the paper's
  setting, and ``benchmarks/bench_kernels.py``'s ``run()``;
* the machine's floor (GEMM rates fp32 / bf16 / fp16 and copy bandwidth), so every figure gets its FLOPs, its floor
  and the fraction of the floor it reaches.

Anything that cannot run here is recorded as skipped with the reason. Results: ``TAG.json`` (everything),
``TAG.md`` (the tables) and ``TAG_*.png``; see :mod:`benchmarks.report`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from dinofeat.io import atomic_write_text

from . import flops as FL
from . import timing as T
from .timing import Clock, PeakRSS, measure, summarize

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"model": "dino_vits8", "stride": 4, "load_size": 224, "layer": 9, "facet": "key", "bin": True,
         "saliency": True, "num_pairs": 10, "thresh": 0.05}
SPEEDUP_TARGET = 100.0


@dataclass
class Config:
    sizes: list[int]
    precisions: list[str]
    batch_sizes: list[int]
    batch_at: list[int]
    backends: list[str]
    impls: list[str]
    alternatives: list[str]
    matrix_sizes: list[int]
    e2e_sizes: list[int]
    cpu_fp16: bool
    kernel_bench: bool
    baseline: bool
    baseline_size: int
    baseline_rows: int | None
    model: str
    stride: int
    weights: str | None
    image1: str
    image2: str
    layer: int
    facet: str
    num_pairs: int
    thresh: float
    device: str
    threads: int | None
    warmup: int
    repeat: int
    min_repeat: int
    budget: float
    quick: bool
    out: str
    tag: str
    plots: bool
    quiet: bool
    command: str = ""
    notes: list[str] = field(default_factory=list)
    # GEMM shapes (m, k, n) the machine floor is measured on (also the CPU fp16 one); None = the pipeline's own
    # (`flops.gemm_rates`). Smoke tests pass a small one: the default shapes are ~400 GFLOP (seconds to minutes).
    floor_shapes: list[tuple[int, int, int]] | None = None
    floor_copy_bytes: int | None = None  # buffer of the copy-bandwidth floor; None = 256 MiB (32 MiB with --quick)
    # Before each memory mark: a full gc.collect() (True: the tightest peak-RSS figures) or only the youngest
    # generation (False: ~0.3 s less per mark in a large process; smoke tests, where the figures are not read).
    full_gc: bool = True


def _default_out() -> Path:
    """Under the current directory, never inside the installed (or checked-out) package."""
    return Path.cwd() / "dinofeat-bench-results"


def config_from_args(args) -> Config:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = args.precisions or ["fp32", "bf16", "fp16"]
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]  # the reference every other figure is compared with
    image1 = args.image1 or str(ROOT / "examples" / "img_a.png")
    image2 = args.image2 or str(ROOT / "examples" / "img_b.png")
    cfg = Config(
        sizes=sorted(set(args.sizes)), precisions=list(dict.fromkeys(precisions)), batch_sizes=args.batch_sizes,
        batch_at=args.batch_at, backends=args.backends, impls=args.impls, alternatives=list(args.alternatives or []),
        matrix_sizes=args.matrix_sizes, e2e_sizes=args.e2e_sizes, cpu_fp16=args.cpu_fp16,
        kernel_bench=not args.no_kernel_bench, baseline=not args.no_baseline, baseline_size=args.baseline_size,
        baseline_rows=None if args.full_baseline else args.baseline_rows, model=args.model, stride=args.stride,
        weights=args.weights, image1=image1, image2=image2, layer=args.layer, facet=args.facet,
        num_pairs=args.num_pairs, thresh=args.thresh, device=device, threads=args.threads, warmup=args.warmup,
        repeat=args.repeat, min_repeat=args.min_repeat, budget=args.budget, quick=args.quick,
        out=str(args.out or _default_out()), tag=args.tag, plots=not args.no_plots, quiet=args.quiet,
    )
    if args.quick:
        cfg.sizes = [40, 56]
        cfg.batch_at = [40]
        cfg.matrix_sizes = [40]
        cfg.e2e_sizes = [40]
        cfg.baseline_size = 40
        cfg.baseline_rows = None
        cfg.repeat = min(cfg.repeat, 2)
        cfg.min_repeat = 1
        cfg.budget = min(cfg.budget, 5.0)
    return cfg


# ------------------------------------------------------------------------------------------------ helpers


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return repr(o)


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rel(a, b) -> float:
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _pairs(nn_1, mask) -> set[tuple[int, int]]:
    nn_1 = torch.as_tensor(nn_1).cpu()
    idx = torch.nonzero(torch.as_tensor(mask).cpu(), as_tuple=False).squeeze(1)
    return {(int(i), int(nn_1[i])) for i in idx.tolist()}


def _bb_agreement(bb, ref) -> dict:
    """How far a Best-Buddies result is from the fp32 reference result (same descriptors or not)."""
    from .alternatives import agreement

    out = agreement(_pairs(bb.nn_1, bb.mask), _pairs(ref.nn_1, ref.mask))
    out["nn_1_equal"] = float((torch.as_tensor(bb.nn_1).cpu() == torch.as_tensor(ref.nn_1).cpu()).double().mean())
    out["nn_2_equal"] = float((torch.as_tensor(bb.nn_2).cpu() == torch.as_tensor(ref.nn_2).cpu()).double().mean())
    return out


def _fit_exponent(xs, ys) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys, strict=False) if x and y and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


@contextlib.contextmanager
def _instrumented(ex, acc: dict):
    """Time what find_correspondences calls (preprocess, extract, best_buddies, select_pairs) without changing it."""
    import dinofeat.correspondences as corr_mod
    from dinofeat import kernels as kernels_mod

    def wrap(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    orig_bb, orig_sel = kernels_mod.best_buddies, corr_mod.select_pairs
    orig_bbb = kernels_mod.best_buddies_binned  # the bin=True path of find_correspondences (issue 10)
    ex.preprocess = wrap("preprocess", type(ex).preprocess.__get__(ex))
    ex.extract = wrap("extract", type(ex).extract.__get__(ex))
    kernels_mod.best_buddies = wrap("best_buddies", orig_bb)
    kernels_mod.best_buddies_binned = wrap("best_buddies", orig_bbb)
    corr_mod.select_pairs = wrap("select_pairs", orig_sel)
    try:
        yield
    finally:
        del ex.preprocess, ex.extract
        kernels_mod.best_buddies, corr_mod.select_pairs = orig_bb, orig_sel
        kernels_mod.best_buddies_binned = orig_bbb


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_reason() -> str:
    from dinofeat.doctor import cuda_status

    ok, why = cuda_status()
    return "" if ok else f"no CUDA GPU: {why}"


# ------------------------------------------------------------------------------------------------ runner


class Runner:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.cases: list[dict] = []
        self.skipped: list[dict] = []
        self._extractors: dict = {}
        self.t0 = time.perf_counter()

    # ---- bookkeeping -------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}", flush=True)

    def skip(self, what: str, reason: str, **keys) -> None:
        entry = {"what": what, "reason": reason, **keys}
        if entry not in self.skipped:
            self.skipped.append(entry)
            self.log(f"skip {what}: {reason}")

    def add(self, case: dict) -> dict:
        self.cases.append(case)
        return case

    def protocol(self, **over) -> dict:
        p = {"warmup": self.cfg.warmup, "repeat": self.cfg.repeat, "min_repeat": self.cfg.min_repeat,
             "budget_s": self.cfg.budget, "device": self.device}
        p.update(over)
        return p

    # ---- set-up ------------------------------------------------------------------------------------------
    def setup(self) -> dict:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        from dinofeat.testing import deterministic_weights

        if cfg.weights:
            self.weights, self.weights_note = cfg.weights, f"file {cfg.weights}"
        else:
            self.weights = deterministic_weights(cfg.model)
            self.weights_note = ("deterministic weights (dinofeat.testing.deterministic_weights, the goldens' rule, "
                                 "seed 0): no download; timings do not depend on weight values")
        for p in (cfg.image1, cfg.image2):
            if not Path(p).is_file():
                from dinofeat.errors import InputError

                raise InputError(f"image {p!r} not found; pass --image1/--image2")
        from PIL import Image

        images = {}
        for key, p in (("a", cfg.image1), ("b", cfg.image2)):
            with Image.open(p) as im:
                images[key] = {"path": str(p), "sha256": _sha256_file(p), "size_wh": list(im.size)}
        self.images = images
        return images

    def extractor(self, backend: str, precision: str, device=None, **backend_kw):
        import dinofeat

        device = torch.device(device or self.device)
        key = (backend, precision, str(device), tuple(sorted(backend_kw.items())))
        if key not in self._extractors:
            ex = dinofeat.Extractor(model=self.cfg.model, stride=self.cfg.stride, weights=self.weights,
                                    backend="onnxruntime" if backend.startswith("onnxruntime") else backend,
                                    device=device, precision=precision, progress=False)
            if backend_kw:  # pin ORT provider choice (use_tensorrt) on an otherwise identical backend
                from dinofeat.engine.backends.onnxruntime import OnnxRuntimeBackend

                ex.backend = OnnxRuntimeBackend(ex.backend.model, ex.device, precision, ex.weights_sha256,
                                                **backend_kw)
            self._extractors[key] = ex
        return self._extractors[key]

    def drop_extractors(self, keep=("torch",)) -> None:
        for key in [k for k in self._extractors if k[0] not in keep]:
            del self._extractors[key]
        gc.collect()

    # ---- machine floor -----------------------------------------------------------------------------------
    def floor(self) -> dict:
        self.log("machine floor: GEMM rates (fp32, bf16, fp16) and copy bandwidth")
        shapes = self.cfg.floor_shapes
        small = {"fp16_cpu_shape": min(shapes, key=lambda s: s[0] * s[1] * s[2])} if shapes else {}
        rates = FL.gemm_rates(("fp32", "bf16", "fp16"), device=self.device, repeat=3 if not self.cfg.quick else 2,
                              shapes=shapes, **small)
        nbytes = self.cfg.floor_copy_bytes or ((256 << 20) if not self.cfg.quick else (32 << 20))
        bw = FL.copy_bandwidth(device=self.device, nbytes=nbytes)
        self.rates, self.bandwidth = rates, bw
        for k, r in rates.items():
            self.log(f"  {k}: {r['rate_flops'] / 1e9:.1f} GFLOP/s (best of {len(r['shapes'])} shape(s))")
        self.log(f"  copy: {bw['bytes_per_s'] / 1e9:.1f} GB/s")
        return {"gemm": rates, "copy": bw}

    def with_floor(self, case: dict, flops: float | None, nbytes: float | None = None) -> dict:
        f = FL.floors(flops, self.rates, nbytes, self.bandwidth)
        case.update(f)
        med = case.get("time", {}).get("median_s")
        for k, name in (("floor_fp32_s", "fraction_of_floor_fp32"), ("floor_bf16_s", "fraction_of_floor_bf16"),
                        ("bytes_floor_s", "fraction_of_bytes_floor")):
            if k in f and med:
                case[name] = f[k] / med
        return case

    # ---- variants ----------------------------------------------------------------------------------------
    def torch_reason(self, precision: str, device: torch.device) -> str:
        if device.type == "cuda":
            return _cuda_reason()
        if precision == "fp16" and not self.cfg.cpu_fp16:
            r = self.rates.get("fp16", {})
            rate = r.get("rate_flops")
            if rate:
                return (f"torch fp16 on this CPU: the fp16 GEMM measured {rate / 1e9:.2f} GFLOP/s in this run "
                        f"(fp32: {self.rates['fp32']['rate_flops'] / 1e9:.1f}); a 224 forward would take minutes. "
                        "Pass --cpu-fp16 to run it anyway")
        return ""

    def backend_reason(self, backend: str, precision: str) -> str:
        """Why a non-torch backend variant cannot run here ('' if it can)."""
        if backend.startswith("onnxruntime"):
            try:
                import onnxruntime as ort
            except Exception as e:  # noqa: BLE001
                return f"onnxruntime not installed ({e}); pip install 'dinofeat[onnx]'"
            providers = ort.get_available_providers()
            if backend == "onnxruntime":
                return "" if precision == "fp32" else "ONNX Runtime's CPU EP runs fp32 only"
            ep = "CUDAExecutionProvider" if backend == "onnxruntime-cuda" else "TensorrtExecutionProvider"
            cuda = _cuda_reason()
            if cuda:
                return cuda
            if ep not in providers:
                return f"{ep} not in onnxruntime.get_available_providers() = {providers} (needs onnxruntime-gpu)"
            return "" if precision in ("fp32", "fp16") else f"{backend} runs fp32/fp16"
        if backend == "tensorrt":
            try:
                import tensorrt  # noqa: F401
            except Exception as e:  # noqa: BLE001
                return f"tensorrt not installed ({type(e).__name__}: {e}); needs an NVIDIA GPU and 'dinofeat[gpu]'"
            cuda = _cuda_reason()
            if cuda:
                return cuda
            return "" if precision in ("fp32", "fp16") else "native TensorRT runs fp32/fp16"
        return f"unknown backend {backend!r}"

    # ---- the staged pipeline -----------------------------------------------------------------------------
    def _select(self, ex, f1, f2, d1, d2, bb) -> dict:
        """Foreground filter + k-means selection + coordinates, exactly as find_correspondences does them."""
        from dinofeat.correspondences import foreground_filter, select_pairs, token_to_pixel

        sal1, sal2 = f1.saliency[0], f2.saliency[0]
        fg1, fg2 = sal1 > self.cfg.thresh, sal2 > self.cfg.thresh
        bbs = foreground_filter(bb.mask, bb.nn_2, fg1, fg2)
        bb_idx = torch.nonzero(bbs, as_tuple=False).squeeze(1)
        partner = bb.nn_1[bb_idx]
        scores = ((sal1[bb_idx] + sal2[partner]) / 2).cpu().numpy()
        if bb_idx.numel():
            chosen, _ = select_pairs(d1[bb_idx].cpu().numpy(), d2[partner].cpu().numpy(), scores, self.cfg.num_pairs)
        else:
            chosen = np.zeros(0, dtype=np.int64)
        idx1 = bb_idx.cpu().numpy()[chosen]
        idx2 = bb.nn_1.cpu().numpy()[idx1]
        p, s = ex.patch_size, ex.stride
        return {"points1": token_to_pixel(idx1, f1.num_patches, s, p),
                "points2": token_to_pixel(idx2, f2.num_patches, s, p), "bbs": bbs, "n_bb": int(bbs.sum())}

    def pair_pipeline(self, size: int, precision: str) -> dict | None:
        from dinofeat import kernels

        cfg, dev = self.cfg, self.device
        variant = {"backend": "torch", "precision": precision, "device": str(dev)}
        reason = self.torch_reason(precision, dev)
        if reason:
            self.skip(f"torch {precision} on {dev.type}", reason, **variant)
            return None
        ex = self.extractor("torch", precision)
        clock = Clock(dev)

        def fn():
            b1, _ = ex.preprocess(cfg.image1, size)
            clock.mark("preprocess_a")
            f1 = ex.extract(b1, layer=cfg.layer, facet=cfg.facet, bin=False, saliency=True)
            clock.mark("forward_a")
            d1 = kernels.log_bin(f1.descriptors, f1.num_patches)[0]
            clock.mark("log_bin_a")
            b2, _ = ex.preprocess(cfg.image2, size)
            clock.mark("preprocess_b")
            f2 = ex.extract(b2, layer=cfg.layer, facet=cfg.facet, bin=False, saliency=True)
            clock.mark("forward_b")
            d2 = kernels.log_bin(f2.descriptors, f2.num_patches)[0]
            clock.mark("log_bin_b")
            bb = kernels.best_buddies(d1, d2, precision=precision)
            clock.mark("best_buddies")
            sel = self._select(ex, f1, f2, d1, d2, bb)
            clock.mark("fg_filter_selection")
            return {"f1": f1, "f2": f2, "d1": d1, "d2": d2, "bb": bb, **sel}

        self.log(f"[{size}] torch {precision}: staged pair pipeline")
        timing, mem, out = measure(fn, clock=clock, **self.protocol())
        t_a, t_b = out["f1"].num_patches, out["f2"].num_patches
        T1, T2 = t_a[0] * t_a[1], t_b[0] * t_b[1]
        c = out["d1"].shape[-1]
        c_raw = out["f1"].descriptors.shape[-1]
        spec = ex.spec
        summary = timing.summary()
        parts = summary.pop("parts")
        base = {"size": size, "batch": 1, **variant, "impl": "auto", "source": "staged pipeline"}
        grids = {"a": (t_a, T1), "b": (t_b, T2)}
        for img in ("a", "b"):
            grid, T = grids[img]
            common = {**base, "image": img, "grid": list(grid), "T": T}
            self.add({"kind": "stage", "stage": "preprocess", **common, "time": parts[f"preprocess_{img}"],
                      "memory": mem["parts"].get(f"preprocess_{img}", {})})
            self.add(self.with_floor({"kind": "stage", "stage": "forward", **common, "time": parts[f"forward_{img}"],
                                      "memory": mem["parts"].get(f"forward_{img}", {})},
                                     FL.engine_forward_flops(spec, T, cfg.layer, True)))
            self.add(self.with_floor({"kind": "stage", "stage": "log_bin", **common, "time": parts[f"log_bin_{img}"],
                                      "memory": mem["parts"].get(f"log_bin_{img}", {})},
                                     FL.log_bin_flops(T, c_raw), FL.log_bin_bytes(T, c_raw)))
            # one image end to end (preprocess + forward + log-bin): consecutive intervals of the same repetition
            per_rep = [sum(vals) for vals in zip(*(parts[f"{s}_{img}"]["all_s"]
                                                  for s in ("preprocess", "forward", "log_bin")), strict=False)]
            tm = summarize(per_rep)
            self.add(self.with_floor({"kind": "images", "stage": "image_end_to_end", **common, "time": tm,
                                      "images_per_s": 1.0 / tm["median_s"]},
                                     FL.engine_forward_flops(spec, T, cfg.layer, True) + FL.log_bin_flops(T, c_raw)))
        pair = {**base, "image": "pair", "grid": [list(t_a), list(t_b)], "T": [T1, T2], "T_pair": math.sqrt(T1 * T2)}
        self.add(self.with_floor({"kind": "stage", "stage": "best_buddies", **pair, "time": parts["best_buddies"],
                                  "memory": mem["parts"].get("best_buddies", {}), "bb_precision": precision,
                                  "best_buddies": int(out["bb"].mask.sum())},
                                 FL.best_buddies_flops(T1, T2, c)))
        self.add({"kind": "stage", "stage": "fg_filter_selection", **pair, "time": parts["fg_filter_selection"],
                  "memory": mem["parts"].get("fg_filter_selection", {}), "foreground_best_buddies": out["n_bb"],
                  "pairs_returned": len(out["points1"])})
        e2e_flops = (FL.engine_forward_flops(spec, T1, cfg.layer, True) + FL.engine_forward_flops(spec, T2, cfg.layer,
                                                                                                   True)
                     + FL.best_buddies_flops(T1, T2, c) + FL.log_bin_flops(T1, c_raw) + FL.log_bin_flops(T2, c_raw))
        total = self.with_floor({"kind": "stage", "stage": "end_to_end", **pair, "time": summary, "memory": mem,
                                 "pairs_per_s": 1.0 / summary["median_s"], "points1": out["points1"],
                                 "points2": out["points2"]}, e2e_flops)
        self.add(total)
        self.log(f"[{size}] torch {precision}: pair {summary['median_s']:.2f} s median (n={summary['n']}), "
                 f"forward a {parts['forward_a']['median_s']:.2f} s, best buddies "
                 f"{parts['best_buddies']['median_s']:.2f} s")
        out["case"] = total
        out["T"] = (T1, T2)
        return out

    def public_e2e(self, size: int, precision: str, staged: dict) -> None:
        import dinofeat

        cfg = self.cfg
        ex = self.extractor("torch", precision)

        def fn():
            return dinofeat.find_correspondences(cfg.image1, cfg.image2, num_pairs=cfg.num_pairs, load_size=size,
                                                 layer=cfg.layer, facet=cfg.facet, bin=True, thresh=cfg.thresh,
                                                 extractor=ex)

        splits: list[dict] = []
        instrument = self.device.type == "cpu"  # on GPU the wrappers would time kernel launches only

        def timed_fn():
            acc: dict[str, float] = {}
            splits.append(acc)
            if not instrument:
                return fn()
            with _instrumented(ex, acc):
                return fn()

        self.log(f"[{size}] torch {precision}: public find_correspondences end to end")
        timing, mem, corr = measure(timed_fn, **self.protocol(warmup=0))
        T1, T2 = staged["T"]
        case = {"kind": "e2e_public", "stage": "end_to_end", "size": size, "image": "pair", "batch": 1,
                "backend": "torch", "precision": precision, "device": str(self.device), "T": [T1, T2],
                "T_pair": math.sqrt(T1 * T2), "time": timing.summary(), "memory": mem,
                "pairs_per_s": 1.0 / timing.median, "source": "dinofeat.find_correspondences",
                "warm": "warm-up 0: the staged pipeline ran on this extractor at this size just before",
                "best_buddies_precision": "fp32 (find_correspondences always matches in fp32)",
                "points_equal_staged": corr.points1 == staged["points1"] and corr.points2 == staged["points2"]}
        if instrument and splits:
            inside = {k: summarize([sp.get(k, 0.0) for sp in splits]) for k in
                      ("preprocess", "extract", "best_buddies", "select_pairs")}
            rest = [t - sum(sp.values()) for t, sp in zip(timing.times, splits, strict=False)]
            inside["rest"] = summarize(rest)
            case["inside"] = inside
            case["inside_note"] = ("wall time inside find_correspondences per call (perf_counter wrappers): "
                                   "preprocess x2, extract x2 (forward + log-bin), best_buddies, select_pairs "
                                   "(k-means + ranking), rest (foreground filter, indexing, coordinates)")
        self.with_floor(case, staged["case"].get("flops"))
        self.add(case)
        self.log(f"[{size}] torch {precision}: find_correspondences {timing.median:.2f} s median (n={len(timing.times)})")

    def batches(self, size: int, precision: str) -> None:
        from dinofeat import kernels

        cfg, dev = self.cfg, self.device
        if self.torch_reason(precision, dev):
            return
        ex = self.extractor("torch", precision)
        for b in cfg.batch_sizes:
            clock = Clock(dev)

            def fn(b=b, clock=clock):
                batch = torch.cat([ex.preprocess(cfg.image1, size)[0] for _ in range(b)])
                clock.mark("preprocess")
                f = ex.extract(batch, layer=cfg.layer, facet=cfg.facet, bin=False, saliency=True)
                clock.mark("forward")
                d = kernels.log_bin(f.descriptors, f.num_patches)
                clock.mark("log_bin")
                return f.num_patches, d.shape

            self.log(f"[{size}] torch {precision}: images/s at batch {b}")
            timing, mem, (grid, _) = measure(fn, clock=clock, **self.protocol())
            T = grid[0] * grid[1]
            s = timing.summary()
            case = {"kind": "images", "stage": "image_end_to_end", "size": size, "image": "a", "grid": list(grid),
                    "T": T, "batch": b, "backend": "torch", "precision": precision, "device": str(dev),
                    "time": s, "memory": mem, "images_per_s": b / timing.median, "source": "batch pipeline"}
            spec = ex.spec
            self.add(self.with_floor(case, b * (FL.engine_forward_flops(spec, T, cfg.layer, True)
                                                + FL.log_bin_flops(T, spec.embed_dim))))

    # ---- matrix: backends, kernels, alternatives ---------------------------------------------------------
    def other_backends(self, size: int, ref: dict) -> None:
        from dinofeat import kernels

        cfg = self.cfg
        for backend in cfg.backends:
            precisions = ["fp32"] if backend == "onnxruntime" or self.device.type == "cpu" else ["fp32", "fp16"]
            for precision in precisions:
                what = f"{backend} {precision}"
                reason = self.backend_reason(backend, precision)
                if reason:
                    self.skip(what, reason, backend=backend, precision=precision)
                    continue
                device = "cpu" if backend == "onnxruntime" else self.device
                kw = {}
                if backend == "onnxruntime-cuda":
                    kw = {"use_tensorrt": False}
                elif backend == "onnxruntime-trt":
                    kw = {"use_tensorrt": True}
                try:
                    ex = self.extractor(backend, precision, device, **kw)
                except Exception as e:  # noqa: BLE001 - record, do not abort the run
                    self.skip(what, f"could not be created: {type(e).__name__}: {e}", size=size)
                    continue
                clock = Clock(torch.device(device))

                def fn(ex=ex, clock=clock):
                    batch, _ = ex.preprocess(cfg.image1, size)
                    clock.mark("preprocess")
                    f = ex.extract(batch, layer=cfg.layer, facet=cfg.facet, bin=False, saliency=True)
                    clock.mark("forward")
                    d = kernels.log_bin(f.descriptors, f.num_patches)
                    clock.mark("log_bin")
                    return f, d

                self.log(f"[{size}] {what} on {device}: image pipeline (first call exports/builds: warm-up)")
                try:
                    timing, mem, (f, d) = measure(fn, clock=clock, **self.protocol(device=torch.device(device)))
                except Exception as e:  # noqa: BLE001
                    self.skip(what, f"failed: {type(e).__name__}: {e}", size=size)
                    continue
                s = timing.summary()
                parts = s.pop("parts")
                T = f.num_patches[0] * f.num_patches[1]
                acc = {"keys_rel_vs_torch_fp32": _rel(f.descriptors, ref["f1"].descriptors),
                       "saliency_abs_vs_torch_fp32": float((f.saliency.cpu() - ref["f1"].saliency.cpu()).abs().max())}
                used = ""
                with contextlib.suppress(Exception):
                    sess = list(ex.backend._sessions.values())
                    used = sess[-1].session.get_providers()[0] if sess else ""
                base = {"size": size, "image": "a", "grid": list(f.num_patches), "T": T, "batch": 1,
                        "backend": backend, "precision": precision, "device": str(device), "provider": used,
                        "accuracy": acc, "source": "image pipeline"}
                self.add(self.with_floor({"kind": "backend", "stage": "forward", **base, "time": parts["forward"],
                                          "memory": mem["parts"].get("forward", {})},
                                         FL.engine_forward_flops(ex.spec, T, cfg.layer, True)))
                self.add({"kind": "backend", "stage": "image_end_to_end", **base, "time": s, "memory": mem,
                          "images_per_s": 1.0 / timing.median})
                self.log(f"[{size}] {what}: forward {parts['forward']['median_s']:.2f} s, keys rel "
                         f"{acc['keys_rel_vs_torch_fp32']:.1e} vs torch fp32")
            self.drop_extractors()

    def impl_reason(self, impl: str) -> str:
        from dinofeat import kernels

        if impl == "cpu" and not kernels.native_available():
            from dinofeat.doctor import _native_reason

            return _native_reason() or "dinofeat._native not built"
        if impl == "cuda":
            r = _cuda_reason()
            if r:
                return r
            try:
                import cupy  # noqa: F401
            except Exception as e:  # noqa: BLE001
                return f"CuPy not installed ({e})"
        return ""

    def kernel_impls(self, size: int, ref: dict) -> None:
        from dinofeat import kernels

        cfg = self.cfg
        f1 = ref["f1"]
        desc = f1.descriptors
        d1, d2 = ref["d1"], ref["d2"]
        T1, T2 = ref["T"]
        gemm_precisions = ["fp32", "bf16"] + (["fp16"] if self.device.type == "cuda" else [])
        for impl in cfg.impls:
            reason = self.impl_reason(impl)
            if reason:
                self.skip(f"kernels impl={impl}", reason, impl=impl)
                continue
            dev = {"reference": self.device, "cpu": torch.device("cpu"), "cuda": torch.device("cuda")}[impl]
            x = desc.to(dev)
            self.log(f"[{size}] log_bin impl={impl}")
            timing, mem, out = measure(lambda x=x, impl=impl: kernels.log_bin(x, f1.num_patches, impl=impl),
                                       **self.protocol(device=dev))
            T = f1.num_patches[0] * f1.num_patches[1]
            self.add(self.with_floor({"kind": "kernel", "stage": "log_bin", "impl": impl, "size": size, "image": "a",
                                      "T": T, "device": str(dev), "time": timing.summary(), "memory": mem,
                                      "rel_vs_pipeline": _rel(out[0], d1)},
                                     FL.log_bin_flops(T, desc.shape[-1]), FL.log_bin_bytes(T, desc.shape[-1])))
            del out
            a, b = d1.to(dev), d2.to(dev)
            for p in gemm_precisions:
                self.log(f"[{size}] best_buddies impl={impl} precision={p}")
                timing, mem, bb = measure(lambda a=a, b=b, p=p, impl=impl: kernels.best_buddies(a, b, precision=p,
                                                                                               impl=impl),
                                          **self.protocol(device=dev))
                self.add(self.with_floor({"kind": "kernel", "stage": "best_buddies", "impl": impl, "precision": p,
                                          "size": size, "image": "pair", "T": [T1, T2],
                                          "T_pair": math.sqrt(T1 * T2), "device": str(dev),
                                          "time": timing.summary(), "memory": mem,
                                          "agreement_vs_fp32_pipeline": _bb_agreement(bb, ref["bb"])},
                                         FL.best_buddies_flops(T1, T2, d1.shape[-1])))

    def alternatives(self, size: int, ref: dict) -> None:
        from . import alternatives as ALT

        T1, T2 = ref["T"]
        reference = _pairs(ref["bb"].nn_1, ref["bb"].mask)
        for name in self.cfg.alternatives:
            dev = torch.device("cpu") if name == "faiss_flat_ip" else self.device  # faiss-cpu: host only
            d1, d2 = ref["d1"].to(dev), ref["d2"].to(dev)
            if name not in ALT.RUNNERS:
                self.skip(f"alternative {name}", f"unknown; choose from {', '.join(ALT.ALTERNATIVES)}")
                continue
            reason = ALT.unavailable(name)
            if reason:
                self.skip(f"alternative {name}", reason)
                continue
            self.log(f"[{size}] alternative {name}")
            try:
                timing, mem, pairs = measure(lambda name=name, d1=d1, d2=d2: ALT.RUNNERS[name](d1, d2),
                                             **self.protocol(device=dev))
            except Exception as e:  # noqa: BLE001
                self.skip(f"alternative {name}", f"failed at {size}: {type(e).__name__}: {e}")
                continue
            self.add(self.with_floor({"kind": "alternative", "stage": "best_buddies", "impl": name, "size": size,
                                      "image": "pair", "T": [T1, T2], "T_pair": math.sqrt(T1 * T2), "device": str(dev),
                                      "time": timing.summary(), "memory": mem,
                                      "agreement_vs_dinofeat": ALT.agreement(pairs, reference)},
                                     FL.best_buddies_flops(T1, T2, d1.shape[-1])))

    # ---- baseline ----------------------------------------------------------------------------------------
    def baseline(self, size: int, ref: dict | None) -> dict:
        from . import baseline as BL

        cfg = self.cfg
        if cfg.model != "dino_vits8":
            self.skip("baseline", "the original code's saliency supports dino_vits8 only")
            return {}
        state = self.weights if isinstance(self.weights, dict) else self._load_state()
        ob = BL.OriginalExtractor(state, cfg.stride)
        self.log("baseline: warm-up at load size 40 (imports, first kernel calls)")
        t0 = time.perf_counter()
        BL.find_correspondences(ob, cfg.image1, cfg.image2, num_pairs=cfg.num_pairs, load_size=40, layer=cfg.layer,
                                facet=cfg.facet, bin=True, thresh=cfg.thresh, sim_rows=None)
        warm_s = time.perf_counter() - t0
        rows = cfg.baseline_rows
        self.log(f"baseline: load {size}, similarity loop on "
                 f"{'all rows' if rows is None else f'{rows} rows (scaled to all rows)'}")
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            res = BL.find_correspondences(ob, cfg.image1, cfg.image2, num_pairs=cfg.num_pairs, load_size=size,
                                          layer=cfg.layer, facet=cfg.facet, bin=True, thresh=cfg.thresh,
                                          sim_rows=rows)
            wall = time.perf_counter() - t0
        stages = BL.stage_times(res)
        sim = res["similarity"]
        T1 = res["num_patches1"][0] * res["num_patches1"][1]
        T2 = res["num_patches2"][0] * res["num_patches2"][1]
        c = res["descriptors1"].shape[-1]
        spec_flops = {"preprocess": None,
                      "forward": (FL.engine_forward_flops(self._spec(), T1, cfg.layer, True)
                                  + FL.engine_forward_flops(self._spec(), T2, cfg.layer, True)),
                      "log_bin": FL.log_bin_flops(T1, 384) + FL.log_bin_flops(T2, 384),
                      "best_buddies": FL.best_buddies_flops(T1, T2, c), "fg_filter_selection": None}
        spec_flops["end_to_end"] = spec_flops["forward"] + spec_flops["best_buddies"] + spec_flops["log_bin"]
        out = {"size": size, "T": [T1, T2], "stages_s": stages, "steps_s": res["steps"], "similarity": sim,
               "warmup_s": warm_s, "wall_s": wall, "peak_rss_bytes": rss.peak, "rss_before_bytes": rss.before,
               "peak_delta_bytes": max(rss.peak - rss.before, 0), "stage_peak_delta_bytes": res["peak_delta"],
               "original_forward_flops": FL.original_forward_flops(self._spec(), T1)
               + FL.original_forward_flops(self._spec(), T2),
               "n": 1, "note": ("one timed run after a warm-up at load 40; the similarity loop's time is "
                                + ("measured over all rows" if sim["full"] else
                                   f"extrapolated from {sim['rows_measured']} measured rows (x{sim['scale']:.2f})"))}
        out["floors"] = {k: FL.floors(v, self.rates) for k, v in spec_flops.items()}
        out["points1"], out["points2"] = res["points1"], res["points2"]
        # agreement with dinofeat fp32 on the same inputs
        if ref is not None:
            agree = {
                "descriptors1_rel": _rel(res["descriptors1"][0, 0], ref["d1"]),
                "descriptors2_rel": _rel(res["descriptors2"][0, 0], ref["d2"]),
                "saliency1_abs": float((res["saliency_map1"] - ref["f1"].saliency[0].cpu()).abs().max()),
                "saliency2_abs": float((res["saliency_map2"] - ref["f2"].saliency[0].cpu()).abs().max()),
                "sampled_rows_argmax_equal_dinofeat_nn_1": bool(torch.equal(
                    res["sampled_similarity"][0, 0].argmax(dim=1), ref["bb"].nn_1.cpu()[res["sampled_rows"]])),
                "nn_1_equal": bool(torch.equal(res["nn_1"], ref["bb"].nn_1.cpu())),
                "nn_2_equal": bool(torch.equal(res["nn_2"], ref["bb"].nn_2.cpu())),
                "bbs_mask_equal": bool(torch.equal(res["bbs_mask"], ref["bbs"].cpu())),
                "points_equal": res["points1"] == ref["points1"] and res["points2"] == ref["points2"],
            }
            if not sim["full"]:
                agree["note"] = ("nn_1 / nn_2 / bbs / points come from the stand-in similarity (the loop ran on the "
                                 "sampled rows only); the sampled rows' argmax is the loop's own")
            out["agreement_vs_dinofeat_fp32"] = agree
        golden = self._golden_check(res, size)
        if golden:
            out["golden_check"] = golden
        self.log(f"baseline: end to end {stages['end_to_end']:.1f} s "
                 f"({'measured' if sim['full'] else 'extrapolated'}), similarity loop "
                 f"{sim['measured_s']:.1f} s measured on {sim['rows_measured']} rows")
        return out

    def _spec(self):
        from dinofeat.model.zoo import get_model_spec

        return get_model_spec(self.cfg.model)

    def _load_state(self) -> dict:
        from dinofeat.model.weights import load_weights

        return load_weights(self._spec(), self.weights, progress=False).state_dict

    def _golden_check(self, res: dict, size: int) -> dict | None:
        """Baseline descriptors vs the original's golden outputs (same deterministic weights, images, load 224)."""
        golden = Path(os.environ.get("DINOFEAT_GOLDEN", ROOT.parent / "shared" / "golden"))
        path = golden / "golden_pair_ab_224_t0.05.npz"
        if size != 224 or self.cfg.weights or self.cfg.stride != 4 or not path.is_file():
            return None
        for key, name in (("a", "img_a.png"), ("b", "img_b.png")):
            if not (golden / name).is_file() or _sha256_file(golden / name) != self.images[key]["sha256"]:
                return None
        with np.load(path, allow_pickle=False) as g:
            rows1, samp1 = g["descriptors1_rows"], g["descriptors1_sampled"]
            rows2, samp2 = g["descriptors2_rows"], g["descriptors2_sampled"]
            sal1 = g["saliency_map1"]
        d1 = res["descriptors1"][0, 0][torch.as_tensor(rows1)].numpy()
        d2 = res["descriptors2"][0, 0][torch.as_tensor(rows2)].numpy()
        return {"file": str(path), "descriptors1_rel": float(np.abs(d1 - samp1).max() / np.abs(samp1).max()),
                "descriptors2_rel": float(np.abs(d2 - samp2).max() / np.abs(samp2).max()),
                "saliency1_abs": float(np.abs(res["saliency_map1"].numpy() - sal1.reshape(-1)).max())}

    # ---- kernel micro-benchmarks -------------------------------------------------------------------------
    def kernel_bench(self) -> dict:
        try:
            from . import bench_kernels
        except Exception as e:  # noqa: BLE001
            return {"skipped": f"benchmarks/bench_kernels.py does not import ({type(e).__name__}: {e})"}
        from dinofeat import kernels

        if not kernels.native_available():
            return {"skipped": "benchmarks/bench_kernels.py needs dinofeat._native, which is not built"}
        self.log("benchmarks/bench_kernels.py run()")
        t0 = time.perf_counter()
        try:
            res = bench_kernels.run(quick=self.cfg.quick, large=not self.cfg.quick, side_by_side=True)
        except Exception as e:  # noqa: BLE001
            return {"skipped": f"bench_kernels.run() failed: {type(e).__name__}: {e}"}
        res["wall_s"] = time.perf_counter() - t0
        return res


# ------------------------------------------------------------------------------------------------ run


def run(cfg: Config) -> dict:
    from dinofeat.doctor import environment

    r = Runner(cfg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    images = r.setup()
    env = environment()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    result: dict = {"schema": "dinofeat-bench/1", "command": cfg.command, "started_utc": started,
                    "config": asdict(cfg), "environment": env, "images": images}
    cache_ctx = tempfile.TemporaryDirectory(prefix="dinofeat-bench-cache-")
    old_cache = os.environ.get("DINOFEAT_CACHE")
    os.environ["DINOFEAT_CACHE"] = cache_ctx.name  # exported graphs / engines of this run only
    full_gc, T.FULL_GC = T.FULL_GC, cfg.full_gc
    try:
        result["floor"] = r.floor()
        ex = r.extractor("torch", "fp32")
        result["model"] = {"name": cfg.model, "stride": cfg.stride, "weights": r.weights_note,
                           "weights_sha256": ex.weights_sha256, "layer": cfg.layer, "facet": cfg.facet}
        if r.device.type == "cpu":
            r.skip("torch on cuda (fp32 / bf16 / fp16)", _cuda_reason() or "--device cpu")
        bf16_agreement = {}
        baseline = {}
        for size in cfg.sizes:
            ref = None
            for precision in cfg.precisions:
                out = r.pair_pipeline(size, precision)
                if out is None:
                    continue
                if precision == "fp32":
                    ref = out
                elif ref is not None:
                    agree = _bb_agreement(out["bb"], ref["bb"])
                    agree["points_equal"] = out["points1"] == ref["points1"] and out["points2"] == ref["points2"]
                    agree["points_common"] = len(set(zip(out["points1"], out["points2"], strict=False))
                                                 & set(zip(ref["points1"], ref["points2"], strict=False)))
                    agree["keys_rel_a"] = _rel(out["f1"].descriptors, ref["f1"].descriptors)
                    agree["saliency_abs_a"] = float((out["f1"].saliency - ref["f1"].saliency).abs().max())
                    out["case"]["agreement_vs_fp32"] = agree
                    bf16_agreement.setdefault(size, {})[precision] = agree
                    r.log(f"[{size}] {precision} vs fp32: best-buddy pairs Jaccard {agree['jaccard']:.3f}, "
                          f"nn_1 equal {agree['nn_1_equal']:.3f}")
                if size in cfg.e2e_sizes:
                    r.public_e2e(size, precision, out)
                if size in cfg.batch_at:
                    r.batches(size, precision)
                if precision != "fp32":
                    del out
            if ref is not None and size in cfg.matrix_sizes:
                r.kernel_impls(size, ref)
                if cfg.alternatives:
                    r.alternatives(size, ref)
                r.other_backends(size, ref)
            if cfg.baseline and size == cfg.baseline_size:
                baseline = r.baseline(size, ref)
            ref = None
            gc.collect()
        if cfg.baseline and cfg.baseline_size not in cfg.sizes:
            r.skip("baseline", f"--baseline-size {cfg.baseline_size} is not in --sizes {cfg.sizes}")
        result["baseline"] = baseline
        result["kernels_microbench"] = r.kernel_bench() if cfg.kernel_bench else {"skipped": "--no-kernel-bench"}
    finally:
        T.FULL_GC = full_gc
        if old_cache is None:
            os.environ.pop("DINOFEAT_CACHE", None)
        else:
            os.environ["DINOFEAT_CACHE"] = old_cache
        cache_ctx.cleanup()
    result["cases"] = r.cases
    result["skipped"] = r.skipped
    result["precision_agreement"] = bf16_agreement
    result["paper_setting"] = paper_summary(cfg, r.cases, baseline, bf16_agreement, r.rates)
    result["scaling"] = scaling(r.cases)
    result["wall_s"] = time.perf_counter() - r.t0
    result["machine"] = {"cpu": env["cpu"], "gpus": env["gpus"], "torch_threads": torch.get_num_threads(),
                         "platform": platform.platform(), "loadavg_start": load_start,
                         "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return result


# ------------------------------------------------------------------------------------------------ summaries

STAGES = ("preprocess", "forward", "log_bin", "best_buddies", "fg_filter_selection", "end_to_end")


def find(cases, **keys) -> list[dict]:
    return [c for c in cases if all(c.get(k) == v for k, v in keys.items())]


def engine_stage_times(cases, size: int, precision: str) -> dict[str, dict]:
    """Per-stage median (and p90) for the pair at `size`: image stages summed over both images."""
    out = {}
    for stage in STAGES:
        sel = find(cases, kind="stage", stage=stage, size=size, precision=precision, batch=1)
        if not sel:
            continue
        out[stage] = {"median_s": sum(c["time"]["median_s"] for c in sel),
                      "p90_s": sum(c["time"]["p90_s"] for c in sel), "n": min(c["time"]["n"] for c in sel),
                      "flops": sum(c.get("flops", 0) or 0 for c in sel) or None,
                      "peak_delta_bytes": max((c.get("memory", {}).get("peak_delta_bytes") or 0) for c in sel)}
    return out


def paper_summary(cfg: Config, cases, baseline: dict, agreement: dict, rates: dict) -> dict:
    size = cfg.baseline_size if cfg.baseline_size in cfg.sizes else (cfg.sizes[0] if cfg.sizes else None)
    if size is None:
        return {}
    is_paper = (cfg.model, cfg.stride, size, cfg.layer, cfg.facet, cfg.num_pairs, cfg.thresh) == (
        PAPER["model"], PAPER["stride"], PAPER["load_size"], PAPER["layer"], PAPER["facet"], PAPER["num_pairs"],
        PAPER["thresh"])
    out: dict = {"size": size, "is_paper_setting": is_paper, "setting": {**PAPER, "load_size": size}}
    per = {p: engine_stage_times(cases, size, p) for p in cfg.precisions}
    pub = {p: find(cases, kind="e2e_public", size=size, precision=p) for p in cfg.precisions}
    stages = {}
    for stage in STAGES:
        row = {}
        if baseline:
            row["baseline_s"] = baseline["stages_s"].get(stage)
        for p, st in per.items():
            if stage in st:
                row[f"{p}_s"] = st[stage]["median_s"]
                row[f"{p}_p90_s"] = st[stage]["p90_s"]
                row[f"{p}_n"] = st[stage]["n"]
                row[f"{p}_peak_delta_bytes"] = st[stage]["peak_delta_bytes"]
                if row.get("baseline_s"):
                    row[f"ratio_baseline_over_{p}"] = row["baseline_s"] / st[stage]["median_s"]
        flops = next((st[stage]["flops"] for st in per.values() if stage in st and st[stage]["flops"]), None)
        if flops:
            row.update(FL.floors(flops, rates))
            for p in cfg.precisions:
                for fk in ("floor_fp32_s", "floor_bf16_s"):
                    if row.get(f"{p}_s") and row.get(fk):
                        row[f"{p}_fraction_of_{fk[:-2]}"] = row[fk] / row[f"{p}_s"]
                if row.get("baseline_s") and row.get("floor_fp32_s"):
                    row["baseline_fraction_of_floor_fp32"] = row["floor_fp32_s"] / row["baseline_s"]
        stages[stage] = row
    row = {}
    for p, cs in pub.items():
        if cs:
            c = cs[0]
            row[f"{p}_s"], row[f"{p}_p90_s"], row[f"{p}_n"] = c["time"]["median_s"], c["time"]["p90_s"], c["time"]["n"]
            row[f"{p}_peak_delta_bytes"] = c["memory"].get("peak_delta_bytes")
            if baseline:
                row["baseline_s"] = baseline["stages_s"]["end_to_end"]
                row[f"ratio_baseline_over_{p}"] = row["baseline_s"] / row[f"{p}_s"]
            if c.get("inside"):
                row[f"{p}_inside"] = c["inside"]
    if row and stages.get("end_to_end", {}).get("flops"):
        row.update(FL.floors(stages["end_to_end"]["flops"], rates))
        for p in cfg.precisions:
            for fk in ("floor_fp32_s", "floor_bf16_s"):
                if row.get(f"{p}_s") and row.get(fk):
                    row[f"{p}_fraction_of_{fk[:-2]}"] = row[fk] / row[f"{p}_s"]
    if row:
        stages["end_to_end_public"] = row
    out["stages"] = stages
    fp32_pub = pub.get("fp32") or []
    e2e_fp32 = fp32_pub[0]["time"]["median_s"] if fp32_pub else stages.get("end_to_end", {}).get("fp32_s")
    out["engine_fp32_end_to_end_s"] = e2e_fp32
    out["engine_fp32_end_to_end_source"] = "find_correspondences" if fp32_pub else "staged pipeline"
    if baseline:
        b = baseline["stages_s"]["end_to_end"]
        out["baseline_end_to_end_s"] = b
        out["baseline_similarity"] = baseline["similarity"]
        if e2e_fp32:
            out["speedup_fp32"] = b / e2e_fp32
            out["speedup_target"] = SPEEDUP_TARGET
            out["meets_target"] = out["speedup_fp32"] >= SPEEDUP_TARGET
    for p in cfg.precisions:
        if p == "fp32" or "end_to_end" not in per.get(p, {}):
            continue
        e = per[p]["end_to_end"]["median_s"]
        out[f"engine_{p}_end_to_end_s"] = e
        if baseline:
            out[f"speedup_{p}"] = baseline["stages_s"]["end_to_end"] / e
        out[f"{p}_agreement_vs_fp32"] = agreement.get(size, {}).get(p)
    return out


def scaling(cases) -> dict:
    """Exponent k of time ~ T^k and memory ~ T^k per stage and precision, from the main pipeline (batch 1)."""
    out: dict = {}
    precisions = sorted({c.get("precision") for c in cases if c.get("kind") == "stage"} - {None})
    for p in precisions:
        for stage in STAGES:
            image = "a" if stage in ("preprocess", "forward", "log_bin") else "pair"
            sel = sorted(find(cases, kind="stage", stage=stage, precision=p, image=image, batch=1),
                         key=lambda c: c["size"])
            if len(sel) < 2:
                continue
            xs = [c["T"] if image == "a" else c["T_pair"] for c in sel]
            ts = [c["time"]["median_s"] for c in sel]
            ms = [(c.get("memory") or {}).get("peak_delta_bytes") for c in sel]
            out.setdefault(p, {})[stage] = {
                "x": "T of image A" if image == "a" else "sqrt(T1 * T2) of the pair",
                "sizes": [c["size"] for c in sel], "T": xs, "time_s": ts, "peak_delta_bytes": ms,
                "time_exponent": _fit_exponent(xs, ts), "memory_exponent": _fit_exponent(xs, ms)}
    return out


# ------------------------------------------------------------------------------------------------ entry


def write_outputs(result: dict, cfg: Config) -> dict[str, str]:
    from . import report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    json_path = out / f"{cfg.tag}.json"
    atomic_write_text(json_path, json.dumps(result, indent=1, default=_json_default, allow_nan=True))
    paths["json"] = str(json_path)
    if cfg.plots:
        paths.update(report.plots(result, out, cfg.tag))
    md = report.markdown(result, {k: Path(v).name for k, v in paths.items() if k != "json"})
    md_path = out / f"{cfg.tag}.md"
    md_path.write_text(md)
    paths["markdown"] = str(md_path)
    return paths


def main_from_args(args, argv: list[str] | None = None, prog: str = "dinofeat") -> int:
    """Run with parsed arguments; `argv` / `prog` only label the command recorded in the outputs."""
    import signal

    def _term(signum, frame):  # SIGTERM: unwind like Ctrl-C so temporary caches are removed
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, _term)
    cfg = config_from_args(args)
    argv = sys.argv[1:] if argv is None else argv
    cfg.command = " ".join([prog, *map(shlex.quote, argv)])
    t0 = time.perf_counter()
    result = run(cfg)
    paths = write_outputs(result, cfg)
    ps = result.get("paper_setting", {})
    if not cfg.quiet:
        print(f"wall time {time.perf_counter() - t0:.1f} s; wrote:")
        for k, v in paths.items():
            print(f"  {k}: {v}")
        if ps.get("speedup_fp32"):
            print(f"end to end at load {ps['size']}: dinofeat fp32 {ps['engine_fp32_end_to_end_s']:.2f} s vs baseline "
                  f"{ps['baseline_end_to_end_s']:.1f} s = {ps['speedup_fp32']:.0f}x")
    return 0
