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
