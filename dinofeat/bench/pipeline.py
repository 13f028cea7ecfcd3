"""The runner's main pipeline: set-up, the machine floor, and per load size and torch precision the staged pair
pipeline (a clock mark after each stage), the public `find_correspondences` end to end and images/s in batches.
The comparisons (other backends, kernel implementations, alternatives, baseline) are :mod:`.comparisons`."""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import flops as FL
from .comparisons import Comparisons
from .measures import cuda_reason, instrumented
from .settings import Config
from .timing import Clock, measure, summarize


class Runner(Comparisons):
    """One run: collects the measured cases and the skipped rows (with the reason)."""

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
        from ..testing import deterministic_weights

        if cfg.weights:
            self.weights, self.weights_note = cfg.weights, f"file {cfg.weights}"
        else:
            self.weights = deterministic_weights(cfg.model)
            self.weights_note = ("deterministic weights (dinofeat.testing.deterministic_weights, the goldens' rule, "
                                 "seed 0): no download; timings do not depend on weight values")
        for p in (cfg.image1, cfg.image2):
            if not Path(p).is_file():
                from ..errors import InputError

                raise InputError(f"image {p!r} not found; pass --image1/--image2")
        from PIL import Image

        from ..io import file_sha256

        images = {}
        for key, p in (("a", cfg.image1), ("b", cfg.image2)):
            with Image.open(p) as im:
                images[key] = {"path": str(p), "sha256": file_sha256(p), "size_wh": list(im.size)}
        self.images = images
        return images

    def extractor(self, backend: str, precision: str, device=None, **backend_kw):
        from ..engine.extractor import Extractor

        device = torch.device(device or self.device)
        key = (backend, precision, str(device), tuple(sorted(backend_kw.items())))
        if key not in self._extractors:
            ex = Extractor(model=self.cfg.model, stride=self.cfg.stride, weights=self.weights,
                           backend="onnxruntime" if backend.startswith("onnxruntime") else backend,
                           device=device, precision=precision, progress=False)
            if backend_kw:  # pin ORT provider choice (use_tensorrt) on an otherwise identical backend
                from ..engine.backends.onnxruntime import OnnxRuntimeBackend

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
            return cuda_reason()
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
            cuda = cuda_reason()
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
            cuda = cuda_reason()
            if cuda:
                return cuda
            return "" if precision in ("fp32", "fp16") else "native TensorRT runs fp32/fp16"
        return f"unknown backend {backend!r}"

    # ---- the staged pipeline -----------------------------------------------------------------------------
    def _select(self, ex, f1, f2, d1, d2, bb) -> dict:
        """Foreground filter + k-means selection + coordinates, exactly as find_correspondences does them."""
        from ..correspondences import foreground_filter, select_pairs, token_to_pixel

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
        from .. import kernels

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
        from ..correspondences import find_correspondences

        cfg = self.cfg
        ex = self.extractor("torch", precision)

        def fn():
            return find_correspondences(cfg.image1, cfg.image2, num_pairs=cfg.num_pairs, load_size=size,
                                        layer=cfg.layer, facet=cfg.facet, bin=True, thresh=cfg.thresh, extractor=ex)

        splits: list[dict] = []
        instrument = self.device.type == "cpu"  # on GPU the wrappers would time kernel launches only

        def timed_fn():
            acc: dict[str, float] = {}
            splits.append(acc)
            if not instrument:
                return fn()
            with instrumented(ex, acc):
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
        from .. import kernels

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
