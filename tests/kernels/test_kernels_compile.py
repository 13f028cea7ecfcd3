"""The CUDA sources compile: nvcc for every target architecture (warnings as errors) and NVRTC exactly as the
CuPy RawModule path does (same source, options and name expressions), both without a GPU."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kernels_helpers import KERNEL_DIR

from dinofeat.kernels import cuda

ARCHS = (75, 80, 86, 87, 89, 90, 100, 120)
SOURCES = {"log_bin.cu": "dinofeat::log_bin_", "best_buddies.cu": "dinofeat::bb_", "bb_binned.cu": "dinofeat::bbb_"}


def _wrapper(source: str, prefix: str) -> str:
    """#include the kernel file and take the address of every name expression (explicit instantiation)."""
    names = [n for n in cuda.name_expressions() if n.startswith(prefix)]
    assert names, f"no name expression for {source}"
    table = ",\n".join(f"    reinterpret_cast<void*>(&{n})" for n in names)
    return f'#include "{source}"\nvoid* df_kernel_table[] = {{\n{table}\n}};\n'


def test_name_expressions_cover_sources():
    covered = {s for s, p in SOURCES.items() for n in cuda.name_expressions() if n.startswith(p)}
    assert covered == set(cuda.SOURCES) == set(SOURCES)


@pytest.mark.integration  # ~35 s of nvcc on 2 cores: `pytest -m integration`
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_nvcc_compiles_all_archs(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found on PATH")
    src = tmp_path / f"w_{source}"
    src.write_text(_wrapper(source, SOURCES[source]))
    gencode = [a for arch in ARCHS for a in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    cmd = [
        nvcc,
        "-std=c++17",
        "-Werror",
        "all-warnings",
        "-Xcompiler",
        "-Wall,-Wextra,-Werror",
        "-I",
        str(KERNEL_DIR),
        *gencode,
        "--threads",
        "2",
        "-c",
        str(src),
        "-o",
        str(tmp_path / "out.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "out.o").stat().st_size > 0


def _nvrtc():
    try:
        from cupy.cuda import compiler
        from cupy_backends.cuda.libs import nvrtc

        version = nvrtc.getVersion()
    except Exception as e:  # CuPy or libnvrtc missing
        pytest.skip(f"NVRTC not usable through CuPy: {e}")
    return compiler, nvrtc, version


def test_assembled_source_is_self_contained():
    code, options, names = cuda.module_spec()
    assert '#include "' not in code  # headers inlined: the CuPy cache key sees them
    assert code.count("struct BinOffset {") == 1  # each header once
    assert options == cuda.OPTIONS and len(names) == len(set(names))


@pytest.mark.integration  # CuPy + NVRTC come with the [integration] extra (or [gpu])
@pytest.mark.parametrize("arch", [75, 90, 120])
def test_nvrtc_compiles_like_rawmodule(arch):
    compiler, nvrtc, version = _nvrtc()
    supported = set(nvrtc.getSupportedArchs()) if hasattr(nvrtc, "getSupportedArchs") else set(ARCHS)
    if arch not in supported:
        pytest.skip(f"NVRTC {version} does not target sm_{arch}")
    code, options, names = cuda.module_spec()
    # what cupy.RawModule adds itself (cupy/cuda/compiler.py: compile_with_cache + compile_using_nvrtc)
    full = (*options, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    prog = compiler._NVRTCProgram(code, "dinofeat_kernels.cu", name_expressions=names, method="cubin")
    cubin, mapping = prog.compile(full)
    log = nvrtc.getProgramLog(prog.ptr)
    assert "warning" not in log.lower(), log
    assert len(cubin) > 0
    assert set(mapping) == set(names)
    for name, lowered in mapping.items():
        assert lowered.startswith("_Z"), (name, lowered)
        assert lowered.encode() in cubin, f"{name} ({lowered}) missing from the cubin"
