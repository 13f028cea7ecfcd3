"""`dinofeat doctor`: runs here, passes, says what it skipped and why; exit code follows the self-tests."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from dinofeat import doctor
from dinofeat.doctor import selftests


def test_doctor_runs_and_passes_here(tmp_path):
    report = tmp_path / "doctor.json"
    proc = subprocess.run([sys.executable, "-m", "dinofeat", "doctor", "--json", str(report)], capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    for section in ("Versions", "Devices", "Caches", "Self-tests", "Summary: OK"):
        assert section in out
    for key in ("torch", "cuDNN", "onnxruntime providers", "tensorrt", "cupy", "NVRTC", "CUDA driver"):
        assert f"  {key} " in out
    assert "PASS  backend torch fp32 cpu" in out
    assert "PASS  kernel CUDA source compiles with NVRTC" in out or "SKIP  kernel CUDA source" in out
    data = json.loads(report.read_text())
    checks = data["checks"]
    assert checks and not [c for c in checks if c["status"] == "fail"]
    torch_fp32 = next(c for c in checks if c["name"] == "backend torch fp32 cpu")
    assert torch_fp32["deviation"] <= 1e-4 and torch_fp32["tolerance"] == 1e-4
    for c in checks:
        if c["status"] == "skip":
            assert c["detail"], f"{c['name']} skipped without a reason"
            assert c["detail"] in out
        if c["status"] == "pass":
            assert c["deviation"] is not None and c["deviation"] <= c["tolerance"]
    if not data["environment"]["gpus"]:  # this machine: every CUDA path is skipped with the reason
        gpu_checks = [c for c in checks if c["name"].endswith(" cuda") or "cuda " in c["name"]
                      or "CUDA EP" in c["name"] or "Tensorrt EP" in c["name"]]
        assert gpu_checks and all(c["status"] == "skip" for c in gpu_checks)
        assert any("no CUDA GPU" in c["detail"] for c in gpu_checks)


def _args(**kw):
    p = argparse.ArgumentParser()
    doctor.add_doctor_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize(("statuses", "code"), [(("pass", "skip"), 0), (("pass", "fail", "skip"), 1),
                                                (("skip",), 0)])
def test_exit_code_is_nonzero_only_on_failure(monkeypatch, capsys, statuses, code):
    checks = [doctor.Check(f"check {i}", s, f"detail {s}", deviation=0.0 if s == "pass" else None, tolerance=1.0)
              for i, s in enumerate(statuses)]
    def fake_self_tests(progress=None, **kw):
        for c in checks:
            progress(c)
        return checks, "fake input"

    monkeypatch.setattr(selftests, "self_tests", fake_self_tests)
    assert doctor.doctor_main(_args()) == code
    out = capsys.readouterr().out
    assert ("FAILED" in out) == bool(code)
    for c in checks:
        assert f"{c.status.upper()}  {c.name}" in out and c.detail in out


def test_a_deviation_over_tolerance_fails():
    """The real torch-backend check fails when the tolerance is impossible to meet."""
    fx = selftests._Fixture("dino_vits8", 4, 24, 9)
    c = selftests._run("backend torch fp32 cpu", lambda: fx.compare(fx.cpu_fp32, 0.0), 0.0)
    assert c.status == "fail" and c.deviation > 0


def test_eager_reference_matches_backend_closely():
    fx = selftests._Fixture("dino_vits8", 4, 24, 9)
    detail, dev, metrics = fx.compare(fx.cpu_fp32, 1e-4)
    assert dev < 1e-5 and metrics["keys_rel"] < 1e-5 and "keys rel" in detail


def test_no_selftest_prints_environment_only(capsys):
    assert doctor.doctor_main(_args(no_selftest=True)) == 0
    out = capsys.readouterr().out
    assert "Versions" in out and "Self-tests" not in out and "0 failed" in out
