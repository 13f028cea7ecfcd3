"""GPU readiness checked on the CPU: install extras, the honest-skip rule of gpu tests, fp32 pinning of TF32."""

from __future__ import annotations

import re

import tomllib
import torch
from testutil import ROOT, gpu_skip_failure


def _extras() -> dict[str, list[str]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return doc["project"]["optional-dependencies"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in reqs}


def test_install_extras_for_gpus_are_self_sufficient_and_conflict_free():
    # (one test for both extras: a parameter id "gpu" would make pytest treat it as a gpu-marked test)
    for extra in ("gpu", "gpu-cu12"):
        names = _names(_extras()[extra])
        # both GPU backends need the exporter (onnx + onnxscript) besides their runtimes
        assert {"onnx", "onnxscript", "onnxruntime-gpu", "tensorrt"} <= names, extra
        # the CPU onnxruntime installs the same module as onnxruntime-gpu and hides the CUDA / TensorRT providers
        assert "onnxruntime" not in names, extra
        assert any(n.startswith("cupy-cuda") for n in names), extra


def test_gpu_skip_rule():
    nid = "tests/engine/test_tensorrt_backend.py::test_engine_matches_torch[fp32-0.0001]"
    why = "tensorrt is not installed"
    assert gpu_skip_failure(nid, why, gpu_present=False, allow=None) is None  # no GPU: the skip stands
    msg = gpu_skip_failure(nid, why, gpu_present=True, allow=None)
    assert msg and "tensorrt is not installed" in msg and "DINOFEAT_ALLOW_GPU_SKIPS" in msg
    assert gpu_skip_failure(nid, why, True, allow="test_engine_matches_torch") is None  # substring
    assert gpu_skip_failure(nid, why, True, allow="foo, *tensorrt_backend.py::*") is None  # glob, comma list
    assert gpu_skip_failure(nid, why, True, allow="test_cuda_graph_replay") is not None  # names another test


def _tf32_state() -> list:
    from dinofeat.engine.backends.torch import tf32_switches

    return [getattr(owner, attr) for owner, attr, _, _ in tf32_switches()]


def _set_tf32(enabled: bool) -> None:
    from dinofeat.engine.backends.torch import tf32_switches

    for owner, attr, on, off in tf32_switches():
        setattr(owner, attr, on if enabled else off)


def _restore(values: list) -> None:
    from dinofeat.engine.backends.torch import restore_tf32_switches, tf32_switches

    restore_tf32_switches([(owner, attr, v) for (owner, attr, *_), v in zip(tf32_switches(), values, strict=True)])


def _on_off() -> tuple[list, list]:
    from dinofeat.engine.backends.torch import tf32_switches

    sw = tf32_switches()
    return [on for *_, on, _ in sw], [off for *_, off in sw]


def test_tf32_mode_pins_and_restores_torch_switches():
    from dinofeat.engine.backends.torch import tf32_mode

    on, off = _on_off()
    old = _tf32_state()
    try:
        _set_tf32(True)  # a user who switched TF32 on globally
        with tf32_mode(False):
            assert _tf32_state() == off
            with tf32_mode(False):  # nested, same mode: no wait
                assert _tf32_state() == off
            with tf32_mode(True):  # nested, other mode, this thread alone: switched for the inner block
                assert _tf32_state() == on
            assert _tf32_state() == off
        assert _tf32_state() == on
        _set_tf32(False)
        with tf32_mode(True):
            assert _tf32_state() == on
        assert _tf32_state() == off
    finally:
        _restore(old)


def test_tf32_mode_uses_the_new_api_and_never_reads_the_legacy_flag():
    """torch >= 2.9: once ``fp32_precision`` is set, reading ``allow_tf32`` raises; tf32_mode must not read it."""
    from dinofeat.engine.backends.torch import tf32_mode

    matmul = torch.backends.cuda.matmul
    if not hasattr(torch.backends.cudnn, "conv"):
        with tf32_mode(False):  # an older torch: the legacy flags
            assert matmul.allow_tf32 is False
        return
    old = (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    try:
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        with tf32_mode(False):
            assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
        with tf32_mode(True):
            assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        assert (matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "ieee")
    finally:
        matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = old


def test_tf32_mode_is_scoped_to_the_call_across_threads():
    """Two extractors of different precisions in two threads: each forward sees its own switches throughout."""
    import threading
    import time

    from dinofeat.engine.backends.torch import tf32_mode

    on, off = _on_off()
    seen: dict[bool, list] = {True: [], False: []}
    errors = []

    def run(enabled: bool) -> None:
        try:
            for _ in range(6):
                with tf32_mode(enabled):
                    first = _tf32_state()
                    time.sleep(0.005)  # the other thread runs meanwhile
                    seen[enabled].append((first, _tf32_state()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    old = _tf32_state()
    threads = [threading.Thread(target=run, args=(m,)) for m in (True, False, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(seen[True]) == len(seen[False]) == 12
    assert all(pair == (on, on) for pair in seen[True]) and all(pair == (off, off) for pair in seen[False])
    assert _tf32_state() == old  # the caller's switches are back


def test_torch_backend_runs_fp32_without_tf32(monkeypatch):
    """The backend's forward sees TF32 off for fp32 and on for tf32, whatever the global switches say."""
    from dinofeat.engine.backends.torch import TorchBackend
    from dinofeat.model.vit import Request

    seen = []

    class Probe(torch.nn.Module):
        spec = type("S", (), {"pos": "rope"})()

        def rope_embedding(self, h, w):
            return (torch.zeros(1), torch.zeros(1))

        def forward_features(self, x, request, **kw):
            seen.append(_tf32_state())
            return (x.sum(dim=(1, 2, 3))[:, None, None],)

    on, off = _on_off()
    old = _tf32_state()
    try:
        _set_tf32(True)
        req = Request(facets=((1, "key"),))
        for precision in ("fp32", "tf32"):
            TorchBackend(Probe(), torch.device("cpu"), precision).run(torch.ones(1, 3, 8, 8), req)
    finally:
        _restore(old)
    assert seen == [off, on]


def test_gpu_check_dry_run_prints_every_row(capsys):
    from dinofeat.doctor import gpu_check

    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        for mode in ("eager", "cuda_graph"):
            for batch in (1, 8, 32):
                assert f"torch {precision} {mode} batch {batch}:" in out
    for row in ("doctor self-tests", "onnxruntime CUDA EP", "tensorrt fp32 / fp16", "3025x3025x6528 fp32",
                "18921x18921x6528 bf16", "cuBLAS GEMM", "GB/s vs device copy GB/s", "latency p50/p99, pairs/s",
                "pytest -m gpu", "peak GPU memory", "FrameStream torch fp32 cuda 480x640 rgb8",
                "dynamic engine, profile up to 320x480", "dinofeat bench precision on cuda"):
        assert row in out, row
    assert len(out.strip().splitlines()) == 1 + len(gpu_check.plan())


def test_gpu_check_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    from dinofeat.cli import main as cli_main
    from dinofeat.doctor import gpu_check

    if torch.cuda.is_available():  # the real run is the check itself, not a unit test
        assert gpu_check.plan()
        return
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "--dry-run" in err[0]
    assert not any(tmp_path.iterdir())  # nothing half-written
    assert cli_main(["doctor", "--gpu", "--dry-run"]) == 0
    assert "torch tf32 cuda_graph batch 32" in capsys.readouterr().out


def test_gpu_check_report_files(tmp_path):
    """What a run writes after each section: JSON rows + a Markdown table per section (atomic writes)."""
    import json

    from dinofeat.doctor.gpu_check import Check

    c = Check(tmp_path / "out", budget_s=360)
    c.meta.update(gpu="NVIDIA Test GPU", versions={"torch": torch.__version__})
    c.add("vit", "torch fp32 eager batch 1", "ok", images_per_s=12.5, key9_dev=3e-7)
    c.add("vit", "tensorrt fp32 / fp16 batch 1", "skipped", "not installed (tensorrt)")
    c.add("pytest", "pytest -m gpu", "fail", "failed: [a|b]", passed=3, failed=1)
    c.write()
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [r["status"] for r in doc["rows"]] == ["ok", "skipped", "fail"] and doc["meta"]["gpu"] == "NVIDIA Test GPU"
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## vit" in md and "## pytest" in md and "images_per_s 12.5" in md and "not installed (tensorrt)" in md
    assert "failed: [a/b]" in md  # a '|' never breaks the table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_doctor_gpu_takes_every_flag_of_the_gpu_check():
    """`dinofeat doctor --gpu` and `python -m benchmarks.gpu_check` run one check with the same options."""
    import argparse

    from dinofeat.doctor import add_doctor_arguments, gpu_check

    def options(add):
        p = argparse.ArgumentParser()
        add(p)
        return {o: a for a in p._actions for o in a.option_strings if o not in ("-h", "--help")}  # noqa: SLF001

    check, doctor = options(gpu_check.add_arguments), options(add_doctor_arguments)
    assert set(check) <= set(doctor)
    for flag, action in check.items():
        assert (doctor[flag].default, doctor[flag].choices) == (action.default, action.choices), flag
