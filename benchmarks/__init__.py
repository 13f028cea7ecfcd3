"""dinofeat's development benchmarks (a source checkout only; not in the wheel).

The throughput runner users run is in the package, :mod:`dinofeat.bench` (``dinofeat bench``); ``python -m
benchmarks`` takes the same arguments. When dinofeat runs from this checkout the runner finds, at run time
(:mod:`dinofeat.bench.checkout`), what only the checkout has:

* :mod:`benchmarks.baseline` — a faithful re-implementation of the original code's structure;
* :mod:`benchmarks.alternatives` — torch dense, kornia ``match_mnn``, faiss exact kNN;
* :mod:`benchmarks.bench_kernels` — micro-benchmarks of the CPU kernels.

Also here: :mod:`benchmarks.report` (regenerates the README's benchmark section), ``python -m
benchmarks.gpu_check`` (the GPU check of :mod:`dinofeat.doctor.gpu_check`), and the stand-alone benchmarks
(accuracy, apps, bench_binned, many_pairs, serve, soak, fuzz, rope_periods, extras_size).

This package imports dinofeat; dinofeat never imports it (import-linter's ``no-benchmarks`` contract).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks [args]``: the same arguments as ``dinofeat bench``."""
    import argparse
    import sys

    from dinofeat.bench.runner import main_from_args
    from dinofeat.cli.bench import add_bench_arguments
    from dinofeat.errors import DinofeatError

    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    add_bench_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        return main_from_args(args, argv, prog="python -m benchmarks")
    except DinofeatError as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
