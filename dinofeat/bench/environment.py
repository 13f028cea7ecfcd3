"""Versions, devices and caches of this machine: what `dinofeat doctor` prints and every benchmark records in its
JSON (:func:`environment`), and the probes the skip reasons quote (:func:`cuda_status`, :func:`native_reason`).

It lives in the bench layer because both the benchmarks and `dinofeat.doctor` (which may import bench, never the
other way) use it; `dinofeat.doctor` re-exports it.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def _try(fn, default=None):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a probe must never crash the doctor
        return default if default is not None else f"unavailable ({type(e).__name__}: {first_line(e)})"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _module_version(name: str) -> tuple[str | None, str]:
    """(version or None, note) of an importable module; note says why it is missing."""
    try:
        mod = __import__(name)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return None, f"not installed ({type(e).__name__}: {first_line(e)})"
    return str(getattr(mod, "__version__", "?")), ""


def cuda_status() -> tuple[bool, str]:
    """(is a CUDA GPU usable by torch, reason if not)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True, ""
        n = torch.cuda.device_count()
        why = "torch.cuda.is_available() is False"
        if torch.version.cuda is None:
            why += " (torch is a CPU-only build)"
        elif n == 0:
            why += f" (CUDA {torch.version.cuda} build, but no NVIDIA driver / GPU is visible)"
        return False, why
    except Exception as e:  # noqa: BLE001
        return False, f"torch.cuda probe failed ({first_line(e)})"


def _driver_version() -> str:
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        first = proc.read_text().splitlines()[0]
        return first.strip()
    try:
        import cupy

        v = cupy.cuda.runtime.driverGetVersion()
        if v:
            return f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
        return "none (cudaDriverGetVersion = 0: no NVIDIA driver loaded)"
    except Exception as e:  # noqa: BLE001
        return f"none ({first_line(e)})"


def _nvcc_version() -> str:
    path = shutil.which("nvcc")
    if not path:
        return "not found on PATH"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        rel = [ln for ln in out.splitlines() if "release" in ln]
        return f"{path} ({rel[-1].strip() if rel else out.strip().splitlines()[-1] if out.strip() else '?'})"
    except Exception as e:  # noqa: BLE001
        return f"{path} (version query failed: {first_line(e)})"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dir_summary(path) -> dict:
    p = Path(path).expanduser()
    out = {"path": str(p), "exists": p.is_dir()}
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        out["files"] = len(files)
        out["bytes"] = sum(f.stat().st_size for f in files)
    return out


def cache_dirs() -> dict[str, dict]:
    """Every on-disk cache dinofeat reads or writes, with its size."""
    dirs: dict[str, dict] = {}
    try:
        from ..model import weights

        dirs["weights"] = _dir_summary(weights.cache_dir())
    except Exception as e:  # noqa: BLE001 - weights module missing or broken
        dirs["weights"] = {"path": None, "note": f"dinofeat.model.weights unavailable ({first_line(e)})"}
    try:
        from ..export import cache

        root = Path(cache.cache_root())
        dirs["onnx graphs"] = _dir_summary(root / "onnx")
        dirs["tensorrt engines"] = _dir_summary(root / "trt")
    except Exception as e:  # noqa: BLE001
        dirs["onnx / tensorrt"] = {"path": None, "note": f"dinofeat.export.cache unavailable ({first_line(e)})"}
    cupy_cache = os.environ.get("CUPY_CACHE_DIR", str(Path("~/.cupy/kernel_cache").expanduser()))
    dirs["cupy kernels"] = _dir_summary(cupy_cache)
    return dirs


def environment() -> dict:
    """Versions, devices and caches as a JSON-serialisable dict (also recorded by the benchmarks)."""
    import numpy as np
    import torch

    from ..version import __version__

    env: dict = {"python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
                 "platform": platform.platform(), "dinofeat": __version__}
    try:
        _native = importlib.import_module("dinofeat._native")  # the compiled module, not the package root
        env["dinofeat._native"] = f"built ({Path(_native.__file__).name})"
    except Exception as e:  # noqa: BLE001
        env["dinofeat._native"] = f"not built ({type(e).__name__}: {first_line(e)})"
    cudnn = _try(lambda: torch.backends.cudnn.version())
    env["torch"] = torch.__version__
    env["torch CUDA build"] = torch.version.cuda or "none (CPU-only build)"
    env["cuDNN"] = (f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if isinstance(cudnn, int) else str(cudnn))
    env["torch threads"] = torch.get_num_threads()
    env["torch CPU capability"] = _try(lambda: torch.backends.cpu.get_cpu_capability())
    env["numpy"] = np.__version__
    for name, mod in (("pillow", "PIL"), ("scikit-learn", "sklearn")):
        v, note = _module_version(mod)
        env[name] = v or note
    v, note = _module_version("onnxruntime")
    if v:
        import onnxruntime as ort

        env["onnxruntime"] = v
        env["onnxruntime providers"] = list(ort.get_available_providers())
    else:
        env["onnxruntime"] = note
        env["onnxruntime providers"] = []
    v, note = _module_version("tensorrt")
    env["tensorrt"] = v or note
    v, note = _module_version("cupy")
    env["cupy"] = v or note
    if v:
        env["CUDA runtime (cupy)"] = _try(lambda: _fmt_cuda(__import__("cupy").cuda.runtime.runtimeGetVersion()))
    env["NVRTC"] = _try(nvrtc_version)
    env["CUDA driver"] = _driver_version()
    env["nvcc"] = _nvcc_version()
    env["cpu"] = {"name": cpu_name(), "logical cores": os.cpu_count(),
                  "memory GB": _try(lambda: round(__import__("psutil").virtual_memory().total / 2**30, 1))}
    ok, why = cuda_status()
    gpus = []
    if ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "compute capability": f"{p.major}.{p.minor}",
                         "memory GB": round(p.total_memory / 2**30, 1)})
    env["gpus"] = gpus
    env["gpu note"] = why if not ok else ""
    env["caches"] = cache_dirs()
    return env


def _fmt_cuda(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def nvrtc_version() -> str:
    from cupy_backends.cuda.libs import nvrtc

    major, minor = nvrtc.getVersion()
    return f"{major}.{minor}"


def native_reason() -> str:
    """'' when the C++ kernels (dinofeat._native) import, else why not and how to build them."""
    try:
        importlib.import_module("dinofeat._native")
    except Exception as e:  # noqa: BLE001
        return (f"dinofeat._native not built ({type(e).__name__}: {first_line(e)}); "
                "pip install -e . builds it")
    return ""
