"""dinofeat's benchmarks: one runner for every stage, backend, kernel implementation and alternative.

Run ``dinofeat bench`` or ``python -m benchmarks`` (same arguments; ``--help`` lists them). Modules:

* :mod:`benchmarks.runner` — the measurement plan, JSON output, summaries (paper setting, scaling);
* :mod:`benchmarks.baseline` — a faithful re-implementation of the original code's structure;
* :mod:`benchmarks.alternatives` — torch dense, kornia ``match_mnn``, faiss exact kNN;
* :mod:`benchmarks.timing` — warm-up / repetitions / median / p90, CUDA events, peak RSS and GPU memory;
* :mod:`benchmarks.flops` — FLOPs per stage and the machine's floor (GEMM rate, copy bandwidth);
* :mod:`benchmarks.report` — the Markdown tables and PNG plots;
* :mod:`benchmarks.bench_kernels` — micro-benchmarks of the CPU kernels (run from the runner too).

This package imports dinofeat; dinofeat never imports it at module level.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks [args]``: the same arguments as ``dinofeat bench``."""
    import argparse
    import sys

    from dinofeat.bench import add_bench_arguments
    from dinofeat.errors import DinofeatError

    from .runner import main_from_args

    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    add_bench_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        return main_from_args(args, argv, prog="python -m benchmarks")
    except DinofeatError as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
