"""CPU execution of the CUDA kernels themselves, through tests/kernels/cuda_shim (one host thread per CUDA thread).

The harness launches the kernels in the order and with the arguments of dinofeat/kernels/cuda.py; the GEMM between
bb_normalize and bb_epilogue is a numpy matmul here (cuBLAS on a GPU).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from kernels_helpers import KERNEL_DIR, check_bb_against, rel_err

from dinofeat.kernels import reference as R

SHIM_DIR = Path(__file__).resolve().parent / "cuda_shim"
CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
P = ctypes.c_void_p
I32, I64, U32 = ctypes.c_int, ctypes.c_int64, ctypes.c_uint


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) for the CUDA shim")
    out = tmp_path_factory.mktemp("shim") / "libdfshim.so"
    cmd = [
        cxx,
        "-std=c++20",
        "-pthread",
        "-O1",
        "-shared",
        "-fPIC",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-I",
        str(SHIM_DIR),
        "-I",
        str(KERNEL_DIR),
        str(SHIM_DIR / "shim_harness.cpp"),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"shim build failed:\n{' '.join(cmd)}\n{proc.stderr}"
    lib = ctypes.CDLL(str(out))
    lib.df_log_bin.argtypes = [P, I32, P, I32, P, I32, I32, I32, I32, I32, I32, U32, U32]
    lib.df_bb_row_norm.argtypes = [P, I32, P, I64, I32, U32, U32]
    lib.df_bb_normalize.argtypes = [P, I32, P, P, I32, I64, I32, U32, U32]
    lib.df_bb_epilogue.argtypes = [P, I64, I32, I32, I64, P, P, I32, P, P, U32]
    lib.df_bb_unpack.argtypes = [P, I64, P, P, U32, U32]
    lib.df_bb_mutual.argtypes = [P, P, I64, P, U32, U32]
    lib.df_pack_key.argtypes = [ctypes.c_float, U32]
    lib.df_pack_key.restype = ctypes.c_uint64
    lib.df_float_to_half.argtypes = [ctypes.c_float]
    lib.df_float_to_half.restype = ctypes.c_uint16
    lib.df_float_to_bf16.argtypes = [ctypes.c_float]
    lib.df_float_to_bf16.restype = ctypes.c_uint16
    lib.df_half_to_float.argtypes = [ctypes.c_uint16]
    lib.df_half_to_float.restype = ctypes.c_float
    lib.df_bin_offset.argtypes = [I32, P, P, P]
    return lib


def _ptr(a: np.ndarray):
    return a.ctypes.data


def _storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Host bytes of x in dtype (bfloat16 as uint16 bits)."""
    t = x.to(getattr(torch, dtype)).contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()


def _from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(a.astype(np.float32))


# ---------------------------------------------------------------------------- shared header checks


def test_header_conversions_match_torch(shim):
    vals = np.concatenate(
        [
            np.random.default_rng(0).standard_normal(2000).astype(np.float32) * 100,
            np.array([0.0, -0.0, 1e-8, -3e-6, 6.1e-5, 65504, 65519, 65520, 1e6, np.inf, -np.inf], np.float32),
        ]
    )
    want_h = torch.from_numpy(vals).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    want_b = torch.from_numpy(vals).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got_h = np.array([shim.df_float_to_half(float(v)) for v in vals], np.uint16)
    got_b = np.array([shim.df_float_to_bf16(float(v)) for v in vals], np.uint16)
    np.testing.assert_array_equal(got_h, want_h)
    np.testing.assert_array_equal(got_b, want_b)
    back = np.array([shim.df_half_to_float(int(h)) for h in range(0, 65536, 7)], np.float32)
    want = np.arange(0, 65536, 7).astype(np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(back[~np.isnan(want)], want[~np.isnan(want)])


def test_header_bin_offsets_and_keys(shim):
    lv, dy, dx = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    got = []
    for b in range(25):
        shim.df_bin_offset(b, ctypes.byref(lv), ctypes.byref(dy), ctypes.byref(dx))
        got.append((lv.value, dy.value, dx.value))
    assert got == R.bin_offsets(3)
    key = shim.df_pack_key
    assert key(0.5, 3) > key(0.5, 4) > key(0.25, 0) > key(-1.0, 0) > key(float("-inf"), 0) > 0
    assert key(0.0, 1) == key(-0.0, 1)
    assert key(float("inf"), 9) > key(3.4e38, 0)


# ------------------------------------------------------------------------------------------- log_bin


def _shim_log_bin(shim, x: torch.Tensor, grid, hierarchy, in_dt, out_dt, block, grid_cap):
    b, t, c = x.shape
    nb = 1 + 8 * hierarchy
    xin = _storage(x, in_dt)
    out = np.empty((b, t, nb * c), np.uint16 if out_dt == "bfloat16" else np.dtype(out_dt))
    norm = np.empty((b, t), np.float32)
    shim.df_log_bin(
        _ptr(xin),
        CODES[in_dt],
        _ptr(out),
        CODES[out_dt],
        _ptr(norm),
        1,
        b,
        grid[0],
        grid[1],
        c,
        hierarchy,
        block,
        grid_cap,
    )
    return _from_storage(out, out_dt), torch.from_numpy(norm)


@pytest.mark.parametrize(
    "grid,c,hierarchy,block,grid_cap",
    [
        ((1, 1), 5, 2, 4, 1),
        ((1, 6), 7, 2, 8, 3),
        ((5, 1), 3, 1, 2, 64),
        ((4, 7), 10, 2, 4, 5),
        ((3, 5), 6, 3, 16, 7),
        ((7, 9), 33, 2, 32, 1000),
    ],
)
def test_log_bin_kernel_vs_reference(shim, grid, c, hierarchy, block, grid_cap):
    x = torch.randn(2, grid[0] * grid[1], c, generator=torch.Generator().manual_seed(c))
    got, norm = _shim_log_bin(shim, x, grid, hierarchy, "float32", "float32", block, grid_cap)
    want, wnorm = R.log_bin(x, grid, hierarchy, return_norm=True)
    assert rel_err(got.numpy(), want.numpy()) <= 1e-6
    assert rel_err(norm.numpy(), wnorm.numpy()) <= 1e-6


@pytest.mark.parametrize(
    "in_dt,out_dt",
    [("float16", "float32"), ("bfloat16", "bfloat16"), ("float32", "float16"), ("float16", "float16")],
)
def test_log_bin_kernel_dtypes(shim, in_dt, out_dt):
    x = torch.randn(1, 4 * 5, 9, generator=torch.Generator().manual_seed(1))
    xr = x.to(getattr(torch, in_dt))
    got, _ = _shim_log_bin(shim, x, (4, 5), 2, in_dt, out_dt, 8, 6)
    want = R.log_bin(xr, (4, 5), out_dtype=getattr(torch, out_dt)).float()
    ulp = {"float16": 2**-10, "bfloat16": 2**-7}.get(out_dt, 2**-22)
    torch.testing.assert_close(got, want, rtol=ulp, atol=1e-6)


def _unpack_keys(shim, row_keys: np.ndarray, col_keys: np.ndarray):
    """bb_unpack_keys on both key arrays + bb_mutual, as cuda.py ends both Best-Buddies paths."""
    t1, t2 = len(row_keys), len(col_keys)
    nn_1, sim_1 = np.empty(t1, np.int64), np.empty(t1, np.float32)
    nn_2, sim_2 = np.empty(t2, np.int64), np.empty(t2, np.float32)
    shim.df_bb_unpack(_ptr(row_keys), t1, _ptr(nn_1), _ptr(sim_1), 16, 2)
    shim.df_bb_unpack(_ptr(col_keys), t2, _ptr(nn_2), _ptr(sim_2), 16, 2)
    mask = np.empty(t1, np.bool_)
    shim.df_bb_mutual(_ptr(nn_1), _ptr(nn_2), t1, _ptr(mask), 8, 3)
    return nn_1, sim_1, nn_2, sim_2, mask


# -------------------------------------------------------------------------------------- best buddies


def _shim_best_buddies(
    shim,
    d1: torch.Tensor,
    d2: torch.Tensor,
    in_dt="float32",
    gemm_dt="float32",
    chunk=7,
    block=32,
    use_scale=False,
):
    t1, c = d1.shape
    t2 = d2.shape[0]

    def normalized(x):
        xin = _storage(x, in_dt)
        norms = np.empty(x.shape[0], np.float32)
        shim.df_bb_row_norm(_ptr(xin), CODES[in_dt], _ptr(norms), x.shape[0], c, 16, 3)
        out = np.empty(x.shape, np.uint16 if gemm_dt == "bfloat16" else np.dtype(gemm_dt))
        shim.df_bb_normalize(
            _ptr(xin), CODES[in_dt], _ptr(norms), _ptr(out), CODES[gemm_dt], x.shape[0], c, 8, 5
        )
        return _from_storage(out, gemm_dt).numpy(), norms, xin

    a, n1, x1 = normalized(d1)
    b, n2, x2 = normalized(d2)
    if use_scale:  # the raw-GEMM variant: S = x1 x2^T scaled by 1/norms in the epilogue
        a, b = _from_storage(x1, in_dt).numpy(), _from_storage(x2, in_dt).numpy()
        rs, cs = (1.0 / n1).astype(np.float32), (1.0 / n2).astype(np.float32)
    else:
        rs = cs = np.zeros(1, np.float32)
    row_keys = np.zeros(t1, np.uint64)
    col_keys = np.zeros(t2, np.uint64)
    for i0 in range(0, t1, chunk):
        s = np.ascontiguousarray(a[i0 : i0 + chunk] @ b.T, dtype=np.float32)
        rsc = np.ascontiguousarray(rs[i0 : i0 + chunk]) if use_scale else rs
        shim.df_bb_epilogue(
            _ptr(s),
            t2,
            s.shape[0],
            t2,
            i0,
            _ptr(rsc),
            _ptr(cs),
            int(use_scale),
            _ptr(row_keys),
            _ptr(col_keys),
            block,
        )
    return _unpack_keys(shim, row_keys, col_keys)


@pytest.mark.parametrize(
    "t1,t2,chunk,block", [(1, 1, 7, 32), (5, 3, 2, 32), (33, 70, 40, 32), (70, 33, 9, 64), (100, 45, 100, 32)]
)
@pytest.mark.parametrize("use_scale", [False, True])
def test_best_buddies_kernels_vs_reference(shim, t1, t2, chunk, block, use_scale):
    g = torch.Generator().manual_seed(t1 * 7 + t2)
    d1, d2 = torch.randn(t1, 12, generator=g), torch.randn(t2, 12, generator=g)
    got = _shim_best_buddies(shim, d1, d2, chunk=chunk, block=block, use_scale=use_scale)
    ref = [v.numpy() for v in R.best_buddies(d1, d2)]
    s = (R.normalize_rows(d1) @ R.normalize_rows(d2).T).numpy()
    check_bb_against(got, ref, s, tie_tol=1e-6)


def test_best_buddies_kernels_ties_and_zero_rows(shim):
    base = torch.sign(torch.randn(4, 16, generator=torch.Generator().manual_seed(3)))
    d2 = torch.cat([base, base, torch.zeros(2, 16)])
    d1 = torch.cat([torch.zeros(1, 16), base.flip(0), base])
    got = _shim_best_buddies(shim, d1, d2, chunk=3, block=32)
    ref = [v.numpy() for v in R.best_buddies(d1, d2, chunk=3)]
    for g_, r_ in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g_, r_)


@pytest.mark.parametrize(
    "in_dt,gemm_dt,precision",
    [
        ("float16", "float32", "fp32"),
        ("bfloat16", "float32", "fp32"),
        ("float32", "float16", "fp16"),
        ("float32", "bfloat16", "bf16"),
    ],
)
def test_best_buddies_kernels_dtypes(shim, in_dt, gemm_dt, precision):
    g = torch.Generator().manual_seed(11)
    d1, d2 = torch.randn(40, 24, generator=g), torch.randn(29, 24, generator=g)
    d1, d2 = d1.to(getattr(torch, in_dt)), d2.to(getattr(torch, in_dt))
    got = _shim_best_buddies(shim, d1, d2, in_dt=in_dt, gemm_dt=gemm_dt, chunk=16)
    ref = [v.numpy() for v in R.best_buddies(d1, d2, precision=precision)]
    # a 1-ulp fp32 difference in a row norm can flip one fp16/bf16 rounding of a normalised value
    tol = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}[precision]
    check_bb_against(got, ref, tie_tol=tol, min_agree=0.95)


# ------------------------------------------------------------------------- binned Best Buddies (bb_binned.cu)


def _shim_binned(shim, k1: torch.Tensor, g1, k2: torch.Tensor, g2, hierarchy=2, budget=None, block=32, steps=None):
    """best_buddies_binned_cupy's launch sequence through the shim (the Gram tiles are numpy matmuls here).

    steps: only these image-1 steps (indices); then only the rows of those steps have complete results."""
    from dinofeat.kernels import cuda

    bbb = [P, I32, P, I32, I32, I32, I32, U32, U32]
    shim.df_bbb_box_average.argtypes = bbb
    shim.df_bbb_inv_norm.argtypes = [P, I32, I32, I32, I32, P, U32, U32]
    shim.df_bbb_fused.argtypes = [P, P, P, P, P, I32, I32, I32, I32, P, P, P, P, U32]

    def levels(x, g):
        xin = _storage(x, "float32")
        out = np.empty((hierarchy, *x.shape), np.float32)
        for k in range(hierarchy):
            shim.df_bbb_box_average(_ptr(xin), 0, _ptr(out[k]), g[0], g[1], x.shape[1], k, 16, 7)
        inv = np.empty(g[0] * g[1], np.float32)
        shim.df_bbb_inv_norm(_ptr(out), hierarchy, g[0], g[1], x.shape[1], _ptr(inv), 8, 5)
        return out, inv

    (l1, inv1), (l2, inv2) = levels(k1, g1), levels(k2, g2)
    (h1, w1), (h2, w2) = g1, g2
    t1, t2 = h1 * w1, h2 * w2
    step = cuda.binned_step_rows(g1, t2, hierarchy, budget or cuda.BBB_TILE_BYTES)
    row_keys, col_keys = np.zeros(t1, np.uint64), np.zeros(t2, np.uint64)
    starts = list(range(0, h1, step))
    geoms = cuda.binned_step_geoms(g1, g2, hierarchy, step)  # the words cuda.py uploads once per shape
    for n in [range(len(starts))[i] for i in steps] if steps else range(len(starts)):
        a0 = starts[n]
        a1 = min(a0 + step, h1)
        los = [max(a0 - 3**k, 0) for k in range(hierarchy)]
        tiles = [np.ascontiguousarray(l1[k][lo * w1 : min(a1 + 3**k, h1) * w1] @ l2[k].T) for k, lo in enumerate(los)]
        geom = np.ascontiguousarray(geoms[n])
        ptrs = [_ptr(t) for t in tiles] + [_ptr(tiles[0])] * (cuda.BBB_MAX_LEVELS - hierarchy)
        shim.df_bbb_fused(_ptr(geom), *ptrs, a0, a1, 0, h2, _ptr(inv1), _ptr(inv2), _ptr(row_keys), _ptr(col_keys),
                          block)
    return _unpack_keys(shim, row_keys, col_keys)


@pytest.mark.parametrize(
    "g1,g2,c,hierarchy,budget",
    [
        ((1, 1), (1, 1), 5, 2, None),
        ((1, 7), (7, 1), 4, 2, None),
        ((3, 3), (3, 3), 8, 2, None),
        ((7, 9), (6, 5), 6, 2, 1),  # one image-1 row per step: halo rows recomputed every step
        ((9, 4), (5, 6), 3, 3, 4000),
    ],
)
def test_binned_kernels_vs_dense(shim, g1, g2, c, hierarchy, budget):
    from test_kernels_binned import dense_oracle

    gen = torch.Generator().manual_seed(c)
    k1, k2 = torch.randn(g1[0] * g1[1], c, generator=gen), torch.randn(g2[0] * g2[1], c, generator=gen)
    ref, s = dense_oracle(k1, g1, k2, g2, hierarchy)
    got = _shim_binned(shim, k1, g1, k2, g2, hierarchy, budget)
    check_bb_against(got, ref, s, tie_tol=1e-6)


def test_binned_kernels_paper_grids(shim):
    """55x83 against 55x55: the first and last image-1 steps (both clamped borders, 10 of 55 grid rows; the shim
    runs one host thread per CUDA thread, so the whole pair would take minutes): their rows' maxima are complete."""
    from test_kernels_binned import paper_grid_case

    from dinofeat.kernels import cuda

    k1, k2, (ref, s) = paper_grid_case(4)
    budget = 4 * (5 + 6) * 83 * 3025 + 4 * (5 + 2) * 83 * 3025  # 5 grid rows per step
    assert cuda.binned_step_rows((55, 83), 3025, 2, budget) == 5
    nn_1, sim_1, *_ = _shim_binned(shim, k1, (55, 83), k2, (55, 55), 2, budget, block=64, steps=[0, -1])
    rows = np.r_[0 : 5 * 83, 50 * 83 : 55 * 83]
    np.testing.assert_allclose(sim_1[rows], ref[1][rows], rtol=0, atol=1e-6)
    bad = rows[nn_1[rows] != ref[0][rows]]
    assert np.all(np.abs(s[bad, nn_1[bad]] - s[bad, ref[0][bad]]) <= 1e-6)  # only near-ties may differ


def test_binned_kernels_ties_and_constant_maps(shim):
    from test_kernels_binned import _row_constant

    g1, g2 = (5, 4), (6, 3)
    k1, k2 = _row_constant(g1, 7, 1), _row_constant(g2, 7, 2)
    got = _shim_binned(shim, k1, g1, k2, g2)
    want = [v.numpy() for v in R.best_buddies_binned(k1, g1, k2, g2)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    nn_1, _, nn_2, _, mask = _shim_binned(shim, torch.ones(24, 4), (4, 6), torch.full((9, 4), 2.0), (3, 3))
    np.testing.assert_array_equal(nn_1, 0)
    np.testing.assert_array_equal(nn_2, 0)
    np.testing.assert_array_equal(mask, np.arange(24) == 0)


@pytest.mark.parametrize("block", [32, 64])
def test_binned_fused_reduces_rows_within_the_warp(shim, block):
    """bbb_fused issues one shared atomicMax per warp and row (after warp_max_u64), not one per element: per block
    rn * active warps (shared) + active threads (column keys) + rn (row keys), exactly; and still the dense result."""
    from test_kernels_binned import dense_oracle

    shim.df_atomic_max_calls.restype = ctypes.c_uint64
    g1, g2, c = (3, 25), (7, 7), 6  # 75 rows (3 row tiles), 49 columns (a partial warp, a partial block)
    gen = torch.Generator().manual_seed(3)
    k1, k2 = torch.randn(75, c, generator=gen), torch.randn(49, c, generator=gen)
    shim.df_atomic_max_calls()  # reset
    got = _shim_binned(shim, k1, g1, k2, g2, block=block)
    calls = shim.df_atomic_max_calls()
    t2, nrows = 49, 75  # one image-1 step: the default budget holds all rows
    expected = 0
    for by in range(-(-nrows // 32)):
        rn = min(32, nrows - 32 * by)
        for bx in range(-(-t2 // block)):
            active = min(block, t2 - bx * block)
            expected += rn * -(-active // 32) + active + rn
    assert calls == expected, (calls, expected)
    ref, s = dense_oracle(k1, g1, k2, g2, 2)
    check_bb_against(got, ref, s, tie_tol=1e-6)
