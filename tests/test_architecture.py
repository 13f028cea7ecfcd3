"""The code's shape holds (docs/ARCHITECTURE.md): the import-linter contracts of pyproject.toml (layers, the package
never imports `benchmarks`, no import cycle) and no module of the package over 600 lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
from testutil import ROOT

MAX_LINES = 600


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
                                                   " sys.exit(lint_imports_command())"]
    proc = subprocess.run([*cmd, "--no-cache"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-3000:]


def test_no_import_is_exempted_from_the_contracts():
    """The issue allows up to 6 upward imports; none is needed, so no contract has `ignore_imports`."""
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]
    assert {c["id"] for c in contracts} == {"layers", "no-benchmarks", "no-cycles"}
    assert all(not c.get("ignore_imports") for c in contracts), contracts


def test_no_module_of_the_package_exceeds_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "dinofeat").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


# Modules moved by issue 20: the old path stays one release, warns, and is the very same module object (so
# monkeypatching either name patches both).
MOVED = {
    "dinofeat.zoo": "dinofeat.model.zoo",
    "dinofeat.weights": "dinofeat.model.weights",
    "dinofeat.weight_sources": "dinofeat.model.weight_sources",
    "dinofeat.export.model": "dinofeat.model.vit",
    "dinofeat.export.posembed": "dinofeat.model.posembed",
    "dinofeat.export.layouts": "dinofeat.model.layouts",
    "dinofeat.export.layout_names": "dinofeat.model.layout_names",
    "dinofeat.export.dinov3": "dinofeat.model.dinov3",
    "dinofeat.export.hf_config": "dinofeat.model.hf_config",
    "dinofeat.viz_apps": "dinofeat.viz.apps",
    "dinofeat.viz_eval": "dinofeat.viz.evaluation",
}


def test_old_import_paths_warn_and_alias_the_moved_modules():
    code = (
        "import importlib, json, warnings\n"
        f"moved = {MOVED!r}\n"
        "out = {}\n"
        "for old, new in moved.items():\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        m = importlib.import_module(old)\n"
        "    out[old] = [m is importlib.import_module(new),\n"
        "                any(issubclass(x.category, DeprecationWarning) and new in str(x.message) for x in w)]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {old: [True, True] for old in MOVED}, result


def test_every_package_says_what_its_layer_owns_and_may_import():
    import ast

    missing = []
    for init in sorted((ROOT / "dinofeat").rglob("__init__.py")):
        doc = (ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or "").lower()
        if init.parent != ROOT / "dinofeat" and not ("owns" in doc and "may import" in doc):
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, missing
