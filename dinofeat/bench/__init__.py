"""The bench layer: what users run to measure their own set-up (`dinofeat bench`, `bench latency`,
`bench precision`).

Owns the throughput runner (:mod:`.runner`: the staged pair pipeline per load size and precision, the public
`find_correspondences` end to end, batches, other backends and kernel implementations, the machine's floor), its
timing and memory protocol (:mod:`.timing`), FLOP counts and floors (:mod:`.flops`), the Markdown tables and PNG
plots (:mod:`.report`, :mod:`.plots`), the streaming latency benchmark (:mod:`.latency`) and the precision
benchmark (:mod:`.precision`).

Its command-line front-end (the flags of `dinofeat bench`, `bench latency`, `bench precision`) is
`dinofeat.cli.bench`, generated from `dinofeat.config` like every command's.

May import every layer below it (serve, distributed, robotics, stream, apps, pipeline, engine, kernels, ...);
`dinofeat.doctor` (its sibling) imports this package, never the reverse. Never `dinofeat.cli` above it, and never
the repository's development `benchmarks/` package statically: its baseline, alternatives and kernel
micro-benchmarks are found at run time in a source checkout (:mod:`.checkout`) and skipped with the reason
elsewhere.
"""
