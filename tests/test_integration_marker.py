"""The `integration` marker (`tests/integration_marker.py`), run on a throw-away test tree in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CONFTEST = """from integration_marker import deselect_integration, integration_summary
from strict_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa


def pytest_collection_modifyitems(config, items):
    deselect_integration(config, items)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    integration_summary(terminalreporter, config)
"""

FILES = {
    "conftest.py": CONFTEST,
    "pytest.ini": "[pytest]\nmarkers =\n    integration: heavy\n    gpu: needs a GPU\n",
    "test_mixed.py": "import pytest\n\n\ndef test_plain():\n    pass\n\n\n@pytest.mark.integration\ndef test_heavy():\n"
                     "    pass\n\n\n@pytest.mark.integration\ndef test_heavy_skips():\n"
                     "    pytest.skip('ray is not installed')\n",
    "test_module_marked.py": "import pytest\n\npytestmark = pytest.mark.integration\n\n\ndef test_in_module():\n"
                             "    pass\n",
}


def _run(tmp_path: Path, *args: str, strict: bool = False, env_extra: dict | None = None):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("DINOFEAT_STRICT_SKIPS", "DINOFEAT_INTEGRATION")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    if strict:
        env["DINOFEAT_STRICT_SKIPS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), "-c", str(tmp_path / "pytest.ini"), *args, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, proc.stdout + proc.stderr


def test_default_run_deselects_integration_tests_and_says_how_to_run_them(tmp_path):
    proc, out = _run(tmp_path, strict=True)
    assert proc.returncode == 0, out
    assert "1 passed, 3 deselected" in out, out
    assert "3 integration tests deselected" in out and "pytest -m integration" in out, out


def test_marker_expression_runs_only_integration_tests_with_strict_skips(tmp_path):
    proc, out = _run(tmp_path, "-m", "integration", strict=True)
    assert proc.returncode == 1, out  # the skip of an integration test fails in strict mode
    assert "2 passed" in out and "1 failed" in out and "1 deselected" in out, out
    assert "skipped in strict mode" in out and "ray is not installed" in out, out
    assert "integration tests deselected" not in out, out


def test_environment_variable_runs_everything(tmp_path):
    proc, out = _run(tmp_path, env_extra={"DINOFEAT_INTEGRATION": "1"})
    assert proc.returncode == 0 and "3 passed, 1 skipped" in out, out
