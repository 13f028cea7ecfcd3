"""The CI skip rule (`tests/strict_skips.py`), run on a throw-away test tree in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FILES = {
    "conftest.py": "from strict_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa\n",
    "pytest.ini": "[pytest]\nmarkers =\n    gpu: needs a GPU\n",
    "test_module_skip.py": "import pytest\npytest.importorskip('dinofeat_no_such_package')\n\n\ndef test_hidden():\n"
                           "    pass\n",
    "test_toolchain_skip.py": "import pytest\n\n\ndef test_needs_nvcc():\n    pytest.skip('nvcc not found on PATH')\n",
    "test_gpu_skips.py": "import pytest\n\n\n@pytest.mark.gpu\ndef test_marked():\n    pytest.skip('no device')\n\n\n"
                         "def test_reason():\n    pytest.skip('no CUDA GPU on this machine')\n\n\ndef test_ok():\n"
                         "    pass\n",
}


def _run(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "DINOFEAT_STRICT_SKIPS"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if strict:
        env["DINOFEAT_STRICT_SKIPS"] = "1"
    # --continue-on-collection-errors: report the other files too (a plain run stops at the failed collection).
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "--rootdir",
                           str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_strict_mode_fails_module_and_test_skips_but_not_gpu_skips(tmp_path):
    proc = _run(tmp_path, strict=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "test_module_skip.py skipped at collection in strict mode (DINOFEAT_STRICT_SKIPS=1)" in out, out
    assert "dinofeat_no_such_package" in out
    assert "FAILED test_toolchain_skip.py::test_needs_nvcc" in out and "nvcc not found on PATH" in out, out
    assert "SKIPPED" in out and "test_gpu_skips.py" in out
    assert "test_ok" in out and "FAILED test_gpu_skips" not in out, out
    assert "2 skipped" in out, out  # the two GPU skips stay skips


def test_without_strict_mode_skips_stay_skips(tmp_path):
    proc = _run(tmp_path, strict=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 4 skipped" in out, out
