"""What the wheel ships: `dinofeat` only (with `dinofeat.bench` and `dinofeat.doctor`), never the development
`benchmarks/`; and `dinofeat bench` / `dinofeat doctor --gpu` work from the wheel's packages alone, recording the
checkout-only rows (baseline, alternatives, kernel micro-benchmarks) as skipped with the reason."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys

import tomllib
from testutil import EXAMPLES, ROOT

from dinofeat.bench.checkout import NOT_INSTALLED


def _wheel_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]
    return config["wheel"]["packages"]


def test_the_wheel_ships_the_package_only():
    packages = _wheel_packages()
    assert packages == ["dinofeat"]
    for module in ("bench/__init__.py", "bench/runner.py", "doctor/__init__.py", "doctor/gpu_check.py"):
        assert (ROOT / "dinofeat" / module).is_file(), module
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "benchmarks" not in cmake  # nothing installs it into the wheel by another route


# Runs in a Python that sees the wheel's packages (copied from the checkout) and the installed libraries, not the
# checkout: `-S` skips the .pth files (an editable install's finder would redirect `dinofeat` to the checkout).
_SCRIPT = r"""
import argparse, contextlib, importlib.util, io, json, sys
assert importlib.util.find_spec("benchmarks") is None, "benchmarks is importable"
import dinofeat
from dinofeat.bench import runner
from dinofeat.cli.bench import add_bench_arguments
from dinofeat.cli import main as cli

out = {"dinofeat": dinofeat.__file__}
for argv in (["bench", "--help"], ["doctor", "--gpu", "--dry-run"]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            code = cli(argv)
        except SystemExit as e:
            code = e.code
    out[" ".join(argv)] = [code, text.getvalue()]
p = argparse.ArgumentParser()
add_bench_arguments(p)
args = p.parse_args(["--quick", "--out", sys.argv[1], "--tag", "t", "-q", "--threads", "1", "--no-plots",
                     "--image1", sys.argv[2], "--image2", sys.argv[3]])
cfg = runner.config_from_args(args)
cfg.sizes, cfg.precisions, cfg.batch_at, cfg.e2e_sizes = [24], ["fp32"], [], []
cfg.matrix_sizes, cfg.baseline_size, cfg.backends, cfg.impls = [24], 24, [], ["reference"]
cfg.repeat, cfg.min_repeat, cfg.warmup, cfg.full_gc = 1, 1, 0, False
cfg.floor_shapes, cfg.floor_copy_bytes = [(64, 64, 64)], 1 << 20
result = runner.run(cfg)
paths = runner.write_outputs(result, cfg)
out.update(skipped=result["skipped"], baseline=result["baseline"], kernels=result["kernels_microbench"],
           alternatives=cfg.alternatives, cases=len(result["cases"]), paths=paths)
print("RESULT " + json.dumps(out))
"""


def test_bench_and_gpu_check_run_from_the_wheel_packages_alone(tmp_path):
    site_dir = tmp_path / "site"
    for package in _wheel_packages():
        shutil.copytree(ROOT / package, site_dir / package, ignore=shutil.ignore_patterns("__pycache__"))
    libs = [*site.getsitepackages(), site.getusersitepackages()]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([str(site_dir), *libs])
    proc = subprocess.run([sys.executable, "-S", "-c", _SCRIPT, str(tmp_path / "out"), str(EXAMPLES / "img_a.png"),
                           str(EXAMPLES / "img_b.png")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["dinofeat"].startswith(str(site_dir))  # the copy, not the checkout
    code, text = out["bench --help"]
    assert code == 0 and "--baseline-rows" in text and "latency" in text and "precision" in text
    code, text = out["doctor --gpu --dry-run"]
    assert code == 0 and "pytest -m gpu" in text and "dinofeat bench precision on cuda" in text
    # the checkout-only rows: skipped, with the reason; the rest measured
    skipped = {s["what"]: s["reason"] for s in out["skipped"]}
    assert skipped["baseline"] == NOT_INSTALLED and out["baseline"] == {}
    for name in out["alternatives"]:
        assert skipped[f"alternative {name}"] == NOT_INSTALLED
    assert out["kernels"] == {"skipped": f"benchmarks/bench_kernels.py: {NOT_INSTALLED}"}
    assert out["cases"] > 0
    md = open(out["paths"]["markdown"]).read()
    assert NOT_INSTALLED in md
    assert json.loads(open(out["paths"]["json"]).read())["skipped"] == out["skipped"]


_EDITABLE = r"""
import sys
from dinofeat.bench.checkout import dev_module
alt = dev_module("alternatives")
print("RESULT", alt.__file__, sys.modules["benchmarks"].__path__[0], sorted(alt.RUNNERS))
"""


def test_a_checkout_outside_sys_path_is_found_beside_the_package(tmp_path):
    """As an editable install: `dinofeat` imported through a link, the checkout's `benchmarks/` not on sys.path."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "dinofeat").symlink_to(ROOT / "dinofeat", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([str(site_dir), *site.getsitepackages(), site.getusersitepackages()])
    proc = subprocess.run([sys.executable, "-S", "-c", _EDITABLE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, path, package_dir, names = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")).split(" ", 3)
    assert path == str(ROOT / "benchmarks" / "alternatives.py") and package_dir == str(ROOT / "benchmarks")
    assert "faiss_flat_ip" in names
