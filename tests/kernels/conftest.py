"""Fixtures of the kernel tests (CPU only unless marked gpu)."""

from __future__ import annotations

import os

import pytest

from dinofeat.kernels.dispatch import native_available


@pytest.fixture(scope="session")
def needs_native():
    """The C++ extension must be built; set DINOFEAT_SKIP_NATIVE=1 to skip its tests instead of failing."""
    if not native_available():
        msg = "dinofeat._native is not built: run `pip install -e . --no-build-isolation`"
        if os.environ.get("DINOFEAT_SKIP_NATIVE") == "1":
            pytest.skip(msg)
        pytest.fail(msg)


@pytest.fixture(autouse=True)
def _seed():
    """Every kernel test draws from fixed seeds (no flaky near-ties between runs)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - legacy global seed, for any helper that uses it
