"""``dinofeat match --pairs PAIRS.csv --out RESULTS.parquet --ray [--ray-address ADDR]``: the batch forms of
`dinofeat match` (pairs CSV, DIR --all-pairs, QUERY DIR) run as a Ray Data job (`ray_job.match_pairs`).

Same pairs, columns and exit codes as the single-process batch CLI (0 all succeeded, 1 some failed, 2 bad
arguments); `--resume` and `--draw` are single-process options.
"""

from __future__ import annotations

import argparse

from ..config import MatchConfig
from ..errors import InputError
from .common import extractor_config


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many pairs on a Ray cluster")
    g.add_argument("--ray", action="store_true", help="run the batch form as a Ray Data job (needs dinofeat[ray])")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="actors per stage (default: the cluster's CPUs, or GPUs with --gpus-per-worker 1)")
    g.add_argument("--gpus-per-worker", type=int, default=0, choices=[0, 1], help="1: one GPU per actor")


def ray_main(args) -> int:
    from ..distributed.ray_job import match_pairs
    from .batch import collect_pairs

    if not args.out or not str(args.out).lower().endswith(".parquet"):
        raise InputError(f"--out {args.out!r}: expected a file ending in .parquet")
    if args.resume or args.draw:
        raise InputError("--resume/--draw: not with --ray (use the single-process batch form for those)")
    pairs = collect_pairs(args)
    summary = match_pairs([(str(p[2]), str(p[3])) for p in pairs], args.out, num_workers=args.ray_workers,
                          gpus_per_worker=args.gpus_per_worker, address=args.ray_address,
                          labels=[(p[0], p[1]) for p in pairs], progress=not args.quiet,
                          extractor_config=extractor_config(args), match_config=MatchConfig.from_args(args),
                          batch_size=args.batch_size)
    ok = summary["pairs"] - summary["failed"]
    print(f"{summary['pairs']} pairs: {ok} succeeded, {summary['failed']} failed; written to {args.out}; "
          f"{summary['images']} images extracted once each on Ray ({summary['seconds']:.1f} s)")
    return 1 if summary["failed"] else 0


__all__ = ["add_ray_arguments", "ray_main"]
