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
  setting, and ``benchmarks/bench_kernels.py``'s ``run()`` (both from a source checkout, :mod:`.checkout`);
* the machine's floor (GEMM rates fp32 / bf16 / fp16 and copy bandwidth), so every figure gets its FLOPs, its floor
  and the fraction of the floor it reaches.

Anything that cannot run here is recorded as skipped with the reason. Results: ``TAG.json`` (everything),
``TAG.md`` (the tables) and ``TAG_*.png``; see :mod:`.report` and :mod:`.plots`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..io import atomic_write_text
from . import timing as T
from .measures import bb_agreement, cuda_reason, fit_exponent, json_default, rel
from .pipeline import Runner
from .settings import Config, config_from_args
from .summary import paper_summary, scaling

__all__ = ["Config", "Runner", "config_from_args", "fit_exponent", "main_from_args", "run", "write_outputs"]


# ------------------------------------------------------------------------------------------------ run


def run(cfg: Config) -> dict:
    from .environment import environment

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
            r.skip("torch on cuda (fp32 / bf16 / fp16)", cuda_reason() or "--device cpu")
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
                    agree = bb_agreement(out["bb"], ref["bb"])
                    agree["points_equal"] = out["points1"] == ref["points1"] and out["points2"] == ref["points2"]
                    agree["points_common"] = len(set(zip(out["points1"], out["points2"], strict=False))
                                                 & set(zip(ref["points1"], ref["points2"], strict=False)))
                    agree["keys_rel_a"] = rel(out["f1"].descriptors, ref["f1"].descriptors)
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


# ------------------------------------------------------------------------------------------------ entry


def write_outputs(result: dict, cfg: Config) -> dict[str, str]:
    from . import plots, report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    json_path = out / f"{cfg.tag}.json"
    atomic_write_text(json_path, json.dumps(result, indent=1, default=json_default, allow_nan=True))
    paths["json"] = str(json_path)
    if cfg.plots:
        paths.update(plots.plots(result, out, cfg.tag))
    md = report.markdown(result, {k: Path(v).name for k, v in paths.items() if k != "json"})
    md_path = out / f"{cfg.tag}.md"
    atomic_write_text(md_path, md)
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
