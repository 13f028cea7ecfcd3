"""The settings of one `dinofeat bench` run (:class:`Config`, built from the command's arguments) and the paper's
setting the summary compares with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkout import ROOT

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
