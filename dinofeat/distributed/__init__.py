"""Distributed layer: batch matching on a Ray cluster (Ray Data): `match_pairs(pairs, out, ...)`; see `ray_job.py`.

Owns: the Ray job (ray_job.py: `match_pairs`, `iter_rows`, `RayJobOptions`) the front-end of `dinofeat match --ray` is `dinofeat.cli.distributed`.
May import: every layer below it (stream, apps, pipeline, correspondences, engine, export, model, kernels, base);
today pipeline, correspondences, engine, model and errors. Not serve or robotics (siblings), nor the command line.
Ray is an optional extra (`pip install 'dinofeat[ray]'`), imported only when a job runs.
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("match_pairs", "iter_rows", "RayJobOptions"):
        from . import ray_job

        return getattr(ray_job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RayJobOptions", "iter_rows", "match_pairs"]
