"""Paths and comparisons the tests share (imported as `from testutil import ...`; conftest names are ambiguous)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("DINOFEAT_GOLDEN", ROOT.parent / "shared" / "golden"))
EXAMPLES = ROOT / "examples"


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the issues' relative tolerance)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.abs(a - e).max() / np.abs(e).max())


def gpu_skip_failure(nodeid: str, reason: str, gpu_present: bool, allow: str | None) -> str | None:
    """The honesty rule for `gpu`-marked tests: on a machine WITH a GPU such a test may not skip (a missing
    tensorrt, cupy, onnxruntime-gpu... would otherwise hide an untested GPU path) unless ``allow`` (the value of
    ``DINOFEAT_ALLOW_GPU_SKIPS``: comma/space separated node-id globs or substrings) names it.

    Returns the failure message, or None when the skip stands (no GPU here, or the test is allowed to skip)."""
    import fnmatch

    if not gpu_present:
        return None
    for pattern in (allow or "").replace(",", " ").split():
        if pattern in nodeid or fnmatch.fnmatch(nodeid, pattern):
            return None
    return (f"gpu test skipped on a machine with a GPU: {reason}. Install what it needs, or name it in "
            f"DINOFEAT_ALLOW_GPU_SKIPS (e.g. DINOFEAT_ALLOW_GPU_SKIPS='{nodeid.split('::')[-1].split('[')[0]}')")
