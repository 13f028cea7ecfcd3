"""The kernel constants are written once, in the headers: Python reads them (dinofeat.kernels.headers) or is checked
against them here, and the C++ build takes its limits from the same headers as the CUDA build."""

from __future__ import annotations

import re

import numpy as np
import pytest
from kernels_helpers import KERNEL_DIR, REPO

from dinofeat.errors import InputError
from dinofeat.kernels import cuda, dispatch, headers, log_bin, log_bin_rows, reference
from dinofeat.kernels.cpu import native

BINDINGS = REPO / "bindings"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def test_python_limits_are_the_headers():
    d = headers.defines()
    assert dispatch.MAX_HIERARCHY == d["DF_LOG_BIN_MAX_LEVELS"] == 12
    assert dispatch.BINNED_MAX_HIERARCHY == d["DF_BBB_MAX_LEVELS"] == cuda.BBB_MAX_LEVELS == 4
    assert cuda.BB_TILE_ROWS == d["DF_BB_TILE_ROWS"] and cuda.BBB_TILE_ROWS == d["DF_BBB_TILE_ROWS"]
    assert np.float32(reference.COS_EPS) == np.float32(d["DF_COS_EPS"])


@pytest.mark.parametrize(("block", "limit"), [("LOG_BIN_THREADS", "DF_LOG_BIN_MAX_THREADS"),
                                              ("BB_THREADS", "DF_BB_MAX_THREADS"),
                                              ("BBB_THREADS", "DF_BBB_MAX_THREADS")])
def test_launch_blocks_fit_the_kernels(block, limit):
    """Block sizes are cuda.py's choice within the kernel's contract: a power of two (the tree reductions), whole
    warps (the shuffles), at most the kernel's shared-memory array."""
    n = getattr(cuda, block)
    assert _is_pow2(n) and n % 32 == 0 and n <= headers.define(limit)


def test_binned_geometry_layout_matches_the_header():
    text = (KERNEL_DIR / "bb_binned_common.cuh").read_text()
    expr = re.search(r"#define DF_BBB_GEOM_WORDS (.+)", text).group(1)
    words = eval(expr.replace("DF_BBB_MAX_LEVELS", str(headers.define("DF_BBB_MAX_LEVELS"))))  # noqa: S307
    for h in range(1, dispatch.BINNED_MAX_HIERARCHY + 1):
        assert cuda.binned_geom_words((3, 4), (5, 6), h, [0] * h, [0] * h, [1] * h).shape == (words,)
    # one level-tile pointer per level in the kernel's signature (cuda.py pads the unused ones)
    sig = re.search(r"binned_geom_from_words\(([^)]*)\)", text).group(1)
    assert sig.count("const float*") == headers.define("DF_BBB_MAX_LEVELS")


def test_cpp_sources_define_no_constant_of_their_own():
    """bindings/ takes every DF_ constant from the shared headers (a limit typed twice drifts: box_average once
    accepted levels 1..8 while log_bin_rows asked for up to 11)."""
    for path in sorted(BINDINGS.glob("*.[ch]pp")):
        text = path.read_text()
        assert not re.search(r"#\s*define\s+DF_", text), path.name
        assert not re.search(r"\b(1 \+ 8 \* \d+|hierarchy > \d+|level > \d+)", text), path.name


def test_every_numeric_define_is_unique_and_read():
    d = headers.defines()
    assert {"DF_LOG_BIN_MAX_LEVELS", "DF_BBB_MAX_LEVELS", "DF_COS_EPS", "DF_BB_TILE_ROWS", "DF_BBB_TILE_ROWS",
            "DF_LOG_BIN_MAX_THREADS", "DF_BB_MAX_THREADS", "DF_BBB_MAX_THREADS"} <= set(d)
    with pytest.raises(KeyError, match="DF_NOT_THERE is not #defined"):
        headers.define("DF_NOT_THERE")


def test_a_constant_defined_twice_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.cuh").write_text("#pragma once\n#define DF_X 3  // three\n#define DF_Y (DF_X + 1)\n")
    (tmp_path / "b.cu").write_text('#include "a.cuh"\n#define DF_Z 1e-3f\n')
    monkeypatch.setattr(headers, "KERNEL_DIR", tmp_path)
    headers.defines.cache_clear()
    try:
        assert headers.defines() == {"DF_X": 3, "DF_Z": 1e-3}
        (tmp_path / "c.cuh").write_text("#define DF_X 4\n")
        headers.defines.cache_clear()
        with pytest.raises(RuntimeError, match="DF_X is defined in both a.cuh and c.cuh"):
            headers.defines()
    finally:
        headers.defines.cache_clear()


@pytest.mark.usefixtures("needs_native")
def test_cpu_log_bin_rows_at_the_highest_hierarchy():
    """Every level up to MAX_HIERARCHY runs in the C++ build (box levels up to MAX_HIERARCHY - 1)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20 * 21, 3)).astype(np.float32)
    h = dispatch.MAX_HIERARCHY
    idx = [0, 7, 20 * 21 - 1]
    ref = log_bin_rows(x, (20, 21), idx, h, impl="reference")
    np.testing.assert_allclose(log_bin_rows(x, (20, 21), idx, h, impl="cpu"), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_bin(x, (20, 21), h, impl="cpu")[idx], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=f"hierarchy must be an integer in 1..{h}, got {h + 1}"):
        log_bin_rows(x, (20, 21), idx, h + 1, impl="cpu")
    nat = native()
    with pytest.raises(ValueError, match="hierarchy must be in 1..DF_LOG_BIN_MAX_LEVELS"):
        nat.log_bin(x[None], 20, 21, h + 1, False)
    with pytest.raises(ValueError, match="level must be in"):
        nat.box_average(x[None], 20, 21, h)


def test_every_op_has_every_implementation():
    assert set(dispatch.KERNELS) == {"log_bin", "best_buddies", "best_buddies_binned", "log_bin_rows"}
    for impls in dispatch.KERNELS.values():
        assert tuple(impls) == dispatch.IMPLS[1:]


def test_the_package_imports_under_an_ascii_locale():
    """The headers hold UTF-8 (§, ×); they are read at import, also where the locale is C/ASCII (Triton's Python
    stub runs so: a locale-dependent read_text() broke every served model)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    code = ("import locale, dinofeat, dinofeat.kernels.headers as h; "
            "print(locale.getpreferredencoding(False), h.define('DF_BBB_MAX_LEVELS'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    encoding, levels = proc.stdout.split()
    assert encoding.upper() in ("ANSI_X3.4-1968", "ASCII", "US-ASCII") and levels == "4", proc.stdout
