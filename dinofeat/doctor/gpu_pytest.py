"""The GPU check's ``pytest`` row: ``pytest -m gpu`` in a subprocess (JUnit XML parsed), bounded by what is left of
the check's budget; tests of packages not installed here are named in DINOFEAT_ALLOW_GPU_SKIPS; a missing pytest is
a failure; installed without the test suite (no source checkout) the row is skipped with that reason. Used by
:mod:`dinofeat.doctor.gpu_check` (its section ``pytest``)."""

from __future__ import annotations

import os
import subprocess
import sys

from ..bench.checkout import ROOT

PYTEST_MARGIN_S = 10.0  # left for writing the report after pytest
PYTEST_MIN_S = 30.0  # with less than this left of the budget the pytest row fails without starting
NO_TESTS = "needs a source checkout (tests/ is not installed)"


def _not_installed_tests() -> list[str]:
    """GPU tests whose package is not installed here (their skips are allowed, and named)."""
    allow = []
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        allow.append("tests/engine/test_tensorrt_backend.py")
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            allow.append("test_cuda_iobinding_keeps_outputs_on_the_device")
    except ImportError:
        allow.append("tests/engine/test_onnxruntime_backend.py")
    return allow


def _gpu_test_files() -> list[str]:
    """The test files that hold gpu tests (collecting only them: the rest may need packages a GPU box lacks)."""
    return sorted(str(p) for p in (ROOT / "tests").rglob("test_*.py") if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


PYTEST_MISSING = "pytest cannot be imported: the GPU tests cannot run (pip install pytest)"


def pytest_importable() -> bool:
    """True when this interpreter (the one that runs ``pytest -m gpu``) can import pytest."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_row(check) -> None:
    """The row, added to `check` (a :class:`dinofeat.doctor.gpu_check.Check`)."""
    import xml.etree.ElementTree as ET

    if not pytest_importable():
        check.add("pytest", "pytest -m gpu", "fail", PYTEST_MISSING)
        return
    if not (ROOT / "tests").is_dir():
        check.add("pytest", "pytest -m gpu", "skipped", NO_TESTS)
        return
    left = check.budget_s - check.elapsed() - PYTEST_MARGIN_S
    if left < PYTEST_MIN_S:
        check.add("pytest", "pytest -m gpu", "fail", f"no time left in the budget ({check.elapsed():.0f} s of "
                  f"{check.budget_s:.0f} s used); rerun with --sections pytest or a larger --budget-s")
        return
    import torch

    torch.cuda.empty_cache()  # the test process needs the memory this one cached
    xml = check.out / "pytest_gpu.xml"
    allow = _not_installed_tests()
    env = dict(os.environ, DINOFEAT_ALLOW_GPU_SKIPS=",".join(allow))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           f"--rootdir={ROOT}", *_gpu_test_files()]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else [proc.stderr.strip()[-200:]]
    except subprocess.TimeoutExpired:
        check.add("pytest", "pytest -m gpu", "fail", f"timed out after {left:.0f} s (budget)")
        return
    if not xml.is_file():
        check.add("pytest", "pytest -m gpu", "fail", f"no JUnit XML; exit {proc.returncode}: {tail}")
        return
    counts, failed, skipped = {"passed": 0, "failed": 0, "skipped": 0}, [], []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            skipped.append(f"{name} ({case.find('skipped').get('message', '')[:80]})")
        else:
            counts["passed"] += 1
    detail = (f"allowed skips (not installed): {allow}; " if allow else "") + \
        (f"failed: {failed}" if failed else "") + (f" skipped: {skipped}" if skipped else "")
    check.add("pytest", "pytest -m gpu", "ok" if not failed and proc.returncode == 0 else "fail", detail, **counts)
