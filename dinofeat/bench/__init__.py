"""The bench layer: what users run to measure their own set-up (`dinofeat bench`, `bench latency`,
`bench precision`).

Owns the throughput runner (:mod:`.runner`: the staged pair pipeline per load size and precision, the public
`find_correspondences` end to end, batches, other backends and kernel implementations, the machine's floor), its
timing and memory protocol (:mod:`.timing`), FLOP counts and floors (:mod:`.flops`), the Markdown tables and PNG
plots (:mod:`.report`, :mod:`.plots`), the streaming latency benchmark (:mod:`.latency`) and the precision
benchmark (:mod:`.precision`).

May import every layer below it (apps, stream, robotics, pipeline, engine, kernels, ...) and its sibling
`dinofeat.doctor` (the environment and CUDA probes); never `dinofeat.cli` above it (TEMPORARY: `bench latency`
still borrows the match / model flags of the CLI) and never the repository's development `benchmarks/` package
statically: its baseline, alternatives and kernel micro-benchmarks are found at run time in a source checkout
(:mod:`.checkout`) and skipped with the reason elsewhere.
"""

from .command import (
    DEFAULT_SIZES,
    add_bench_arguments,
    add_bench_command,
    add_latency_arguments,
    add_precision_arguments,
    bench_main,
    latency_main,
    precision_main,
)

__all__ = ["DEFAULT_SIZES", "add_bench_arguments", "add_bench_command", "add_latency_arguments",
           "add_precision_arguments", "bench_main", "latency_main", "precision_main"]
