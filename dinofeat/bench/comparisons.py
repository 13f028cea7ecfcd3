"""The runner's comparisons at ``--matrix-sizes``: other backends, kernel implementations, the Best-Buddies
alternatives (torch dense, kornia, faiss), the baseline (the original code's structure) and the kernel
micro-benchmarks. The last three are development benchmarks of a source checkout (:mod:`.checkout`); where the
package is installed without them their rows are skipped with the reason."""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..io import file_sha256
from . import flops as FL
from .checkout import ROOT, DevBenchmarksUnavailable, dev_module
from .measures import agreement, bb_agreement, cuda_reason, pairs, rel
from .timing import Clock, PeakRSS, measure


class Comparisons:
    """Mixed into :class:`.pipeline.Runner` (uses its cfg, device, rates, weights, images, log / skip / add)."""

    # ---- matrix: backends, kernels, alternatives ---------------------------------------------------------
    def other_backends(self, size: int, ref: dict) -> None:
        from .. import kernels

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
                acc = {"keys_rel_vs_torch_fp32": rel(f.descriptors, ref["f1"].descriptors),
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
        from .. import kernels

        if impl == "cpu" and not kernels.native_available():
            from .environment import native_reason

            return native_reason() or "dinofeat._native not built"
        if impl == "cuda":
            r = cuda_reason()
            if r:
                return r
            try:
                import cupy  # noqa: F401
            except Exception as e:  # noqa: BLE001
                return f"CuPy not installed ({e})"
        return ""

    def kernel_impls(self, size: int, ref: dict) -> None:
        from .. import kernels

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
                                      "rel_vs_pipeline": rel(out[0], d1)},
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
                                          "agreement_vs_fp32_pipeline": bb_agreement(bb, ref["bb"])},
                                         FL.best_buddies_flops(T1, T2, d1.shape[-1])))

    def alternatives(self, size: int, ref: dict) -> None:
        try:
            ALT = dev_module("alternatives")
        except DevBenchmarksUnavailable as e:
            for name in self.cfg.alternatives:
                self.skip(f"alternative {name}", str(e))
            return
        T1, T2 = ref["T"]
        reference = pairs(ref["bb"].nn_1, ref["bb"].mask)
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
                timing, mem, found = measure(lambda name=name, d1=d1, d2=d2: ALT.RUNNERS[name](d1, d2),
                                             **self.protocol(device=dev))
            except Exception as e:  # noqa: BLE001
                self.skip(f"alternative {name}", f"failed at {size}: {type(e).__name__}: {e}")
                continue
            self.add(self.with_floor({"kind": "alternative", "stage": "best_buddies", "impl": name, "size": size,
                                      "image": "pair", "T": [T1, T2], "T_pair": math.sqrt(T1 * T2), "device": str(dev),
                                      "time": timing.summary(), "memory": mem,
                                      "agreement_vs_dinofeat": agreement(found, reference)},
                                     FL.best_buddies_flops(T1, T2, d1.shape[-1])))

    # ---- baseline ----------------------------------------------------------------------------------------
    def baseline(self, size: int, ref: dict | None) -> dict:
        try:
            BL = dev_module("baseline")
        except DevBenchmarksUnavailable as e:
            self.skip("baseline", str(e))
            return {}
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
                "descriptors1_rel": rel(res["descriptors1"][0, 0], ref["d1"]),
                "descriptors2_rel": rel(res["descriptors2"][0, 0], ref["d2"]),
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
        from ..model.zoo import get_model_spec

        return get_model_spec(self.cfg.model)

    def _load_state(self) -> dict:
        from ..model.weights import load_weights

        return load_weights(self._spec(), self.weights, progress=False).state_dict

    def _golden_check(self, res: dict, size: int) -> dict | None:
        """Baseline descriptors vs the original's golden outputs (same deterministic weights, images, load 224)."""
        golden = Path(os.environ.get("DINOFEAT_GOLDEN", ROOT.parent / "shared" / "golden"))
        path = golden / "golden_pair_ab_224_t0.05.npz"
        if size != 224 or self.cfg.weights or self.cfg.stride != 4 or not path.is_file():
            return None
        for key, name in (("a", "img_a.png"), ("b", "img_b.png")):
            if not (golden / name).is_file() or file_sha256(golden / name) != self.images[key]["sha256"]:
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
            bench_kernels = dev_module("bench_kernels")
        except DevBenchmarksUnavailable as e:
            return {"skipped": f"benchmarks/bench_kernels.py: {e}"}
        from .. import kernels

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
