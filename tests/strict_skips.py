"""The CI rule "only GPU tests may skip" as pytest hooks (imported by `tests/conftest.py`; no torch import here).

With ``DINOFEAT_STRICT_SKIPS=1`` (set by `.ci/run`) every skip fails the run unless the test is marked ``gpu`` or
the skip's reason names the GPU: a test that skips (a missing toolchain: nvcc, NVRTC, g++, the C++ extension, the
goldens) and a whole module that skips at import (``pytest.importorskip`` of a package the ``[test]`` extra should
have installed) alike. Without the variable, skips stay skips.
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "DINOFEAT_STRICT_SKIPS"


def _strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _reason(report) -> str:
    return str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch or a broken driver means no GPU here
        return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Two skip rules.

    * On a machine with a GPU, a `gpu` test that skips (tensorrt / cupy / onnxruntime-gpu missing...) FAILS unless
      DINOFEAT_ALLOW_GPU_SKIPS names it (`testutil.gpu_skip_failure`): GPU paths never pass by being skipped.
    * With DINOFEAT_STRICT_SKIPS=1 (CI), only GPU tests may skip.
    """
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if "gpu" in item.keywords:
        from testutil import gpu_skip_failure

        failure = gpu_skip_failure(item.nodeid, reason, _cuda_available(), os.environ.get("DINOFEAT_ALLOW_GPU_SKIPS"))
        if failure:
            report.outcome = "failed"
            report.longrepr = failure
        return
    if not _strict() or "GPU" in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in strict mode ({STRICT_ENV}=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module (or class) that skips while being collected fails too: it would hide all of its tests."""
    outcome = yield
    report = outcome.get_result()
    if not _strict() or not report.skipped:
        return
    reason = _reason(report)
    if "GPU" in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"{collector.nodeid} skipped at collection in strict mode ({STRICT_ENV}=1): {reason}"
