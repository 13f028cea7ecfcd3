"""Shared fixtures: golden files, deterministic checkpoints, one extractor per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from strict_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 - the skip rules
from testutil import GOLDEN


def pytest_configure(config):
    torch.set_num_threads(max(1, os.cpu_count() or 1))


def _cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver means no GPU here
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN} (set DINOFEAT_GOLDEN)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden(golden_dir):
    """Lazy loader: golden('golden_img_a_224') -> dict of arrays."""
    cache = {}

    def load(name: str) -> dict:
        if name not in cache:
            with np.load(golden_dir / f"{name}.npz", allow_pickle=False) as f:
                cache[name] = {k: f[k] for k in f.files}
        return cache[name]

    return load


@pytest.fixture(scope="session")
def vits8_weights_file(tmp_path_factory) -> Path:
    """The golden rule's dino_vits8 weights as an official-layout .pth file."""
    from dinofeat.testing import deterministic_weights

    path = tmp_path_factory.mktemp("weights") / "dino_vits8_golden_rule.pth"
    torch.save(deterministic_weights("dino_vits8"), path)
    return path


@pytest.fixture(scope="session")
def extractor(vits8_weights_file):
    """dino_vits8, stride 4, torch backend on CPU, fp32, golden-rule weights."""
    import dinofeat

    return dinofeat.Extractor(model="dino_vits8", stride=4, weights=str(vits8_weights_file), backend="torch",
                              device="cpu", progress=False)
