"""`dinofeat bench`: the arguments, and a lazy hand-over to the `benchmarks` package (shipped next to dinofeat).

dinofeat never imports `benchmarks` at module level; `python -m benchmarks ...` takes the same arguments.
"""

from __future__ import annotations

import argparse

from .errors import DinofeatError

DEFAULT_SIZES = (224, 320, 480)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure every stage (preprocess, ViT forward, log-bin, Best Buddies, foreground filter + selection) and "
        "end-to-end pairs/s and images/s over resolutions, batch sizes, backends/precisions and kernel "
        "implementations, next to a re-implementation of the original code and the alternatives (kornia, faiss, "
        "dense torch), in one run. Writes JSON, a Markdown table and PNG plots. Whatever cannot run here is "
        "skipped with the reason recorded.")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    g = parser.add_argument_group("what to measure")
    g.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="load sizes (shorter image side) of the main pipeline")
    g.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="torch-backend precisions of the main pipeline (default: all three; fp16 on a CPU without "
                        "fast fp16 GEMM is skipped with the measured reason unless --cpu-fp16)")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2],
                   help="batch sizes of the images/s measurement (at --batch-at sizes)")
    g.add_argument("--batch-at", type=int, nargs="+", default=[224], help="load sizes where batches are measured")
    g.add_argument("--backends", nargs="+", default=["onnxruntime", "onnxruntime-cuda", "onnxruntime-trt",
                                                     "tensorrt"],
                   help="other backends to measure at --matrix-sizes (torch is the main pipeline)")
    g.add_argument("--impls", nargs="+", default=["reference", "cpu", "cuda"], choices=["reference", "cpu", "cuda"],
                   help="kernel implementations to measure at --matrix-sizes")
    g.add_argument("--alternatives", nargs="*", default=["torch_dense", "kornia_match_mnn", "faiss_flat_ip"],
                   help="Best-Buddies alternatives to measure at --matrix-sizes (none: skip)")
    g.add_argument("--matrix-sizes", type=int, nargs="+", default=[224, 320],
                   help="load sizes of the backend / kernel / alternative comparisons")
    g.add_argument("--e2e-sizes", type=int, nargs="+", default=[224],
                   help="load sizes where the public find_correspondences() is also timed end to end")
    g.add_argument("--cpu-fp16", action="store_true",
                   help="run torch fp16 on the CPU too (skipped by default when this CPU's fp16 GEMM is slow)")
    g.add_argument("--no-kernel-bench", action="store_true", help="skip benchmarks/bench_kernels.py's run()")

    g = parser.add_argument_group("baseline (re-implementation of the original code)")
    g.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    g.add_argument("--baseline-size", type=int, default=224, help="load size of the baseline (the paper: 224)")
    g.add_argument("--baseline-rows", type=int, default=64,
                   help="rows of the per-row cosine loop to time; the loop's time is scaled to all rows")
    g.add_argument("--full-baseline", action="store_true",
                   help="run the whole per-row loop (about 28 minutes at 224 on 2 cores)")

    g = parser.add_argument_group("model and inputs")
    g.add_argument("--model", default="dino_vits8", help="zoo name")
    g.add_argument("--stride", type=int, default=4, help="patch-embedding stride")
    g.add_argument("--weights", default=None,
                   help="checkpoint file; default: deterministic weights (no download; timing does not depend on "
                        "the values)")
    g.add_argument("--image1", default=None, help="first image (default: examples/img_a.png)")
    g.add_argument("--image2", default=None, help="second image (default: examples/img_b.png)")
    g.add_argument("--layer", type=int, default=9, help="block of the descriptor facet")
    g.add_argument("--facet", default="key", choices=["key", "query", "value", "token"], help="descriptor facet")
    g.add_argument("--num-pairs", type=int, default=10, help="correspondences per pair")
    g.add_argument("--thresh", type=float, default=0.05, help="saliency threshold of the foreground")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")

    g = parser.add_argument_group("protocol")
    g.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    g.add_argument("--repeat", type=int, default=5, help="timed calls per measurement (at most)")
    g.add_argument("--min-repeat", type=int, default=2, help="timed calls per measurement (at least)")
    g.add_argument("--budget", type=float, default=45.0,
                   help="stop repeating once the timed calls of a measurement took this many seconds")
    g.add_argument("--quick", action="store_true",
                   help="tiny smoke configuration (load sizes 40 and 56, few repeats, whole baseline loop)")

    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, help="output directory (default: ./dinofeat-bench-results, under the current directory; the project's "
                        "committed figures: --out benchmarks/results)")
    g.add_argument("--tag", default="bench", help="file stem of the outputs: TAG.json, TAG.md, TAG_*.png")
    g.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def bench_main(args) -> int:
    try:
        from benchmarks.runner import main_from_args
    except ImportError as e:
        raise DinofeatError(
            f"the benchmarks package is not importable ({e}); run from a source checkout or install the wheel "
            "that ships `benchmarks` next to `dinofeat` (pip install 'dinofeat[bench]')") from None
    return main_from_args(args)
