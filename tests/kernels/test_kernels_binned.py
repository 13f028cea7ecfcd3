"""best_buddies_binned (shifted Gram matrices) against best_buddies(log_bin(...)): reference and C++ paths.

The CUDA kernel itself runs on the CPU in test_kernels_shim.py (and on a device in test_kernels_gpu.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from kernels_helpers import check_bb_against

from dinofeat import InputError, kernels
from dinofeat.kernels import cpu, cpu_binned
from dinofeat.kernels import reference as R

# (grid1, grid2, channels): 1x1, 1xN against Nx1, 3x3, mismatched sizes, and the paper pair's 55x83 vs 55x55
GRIDS = [
    ((1, 1), (1, 1), 5),
    ((1, 7), (7, 1), 4),
    ((6, 1), (1, 5), 3),
    ((3, 3), (3, 3), 8),
    ((3, 3), (4, 2), 6),
    ((7, 9), (6, 5), 12),
    ((55, 83), (55, 55), 4),
]


@functools.lru_cache(maxsize=4)
def paper_grid_case(c: int = 4):
    """Keys on the paper pair's grids (55x83 vs 55x55) and their dense oracle, computed once."""
    g1, g2 = (55, 83), (55, 55)
    k1, k2 = _keys(g1, c, 1), _keys(g2, c, 2)
    return k1, k2, dense_oracle(k1, g1, k2, g2)


def dense_oracle(k1, g1, k2, g2, hierarchy=2):
    """best_buddies on materialised binned rows (reference) and the float64 similarity matrix."""
    b1 = R.log_bin(k1[None], g1, hierarchy)[0]
    b2 = R.log_bin(k2[None], g2, hierarchy)[0]
    ref = [v.numpy() for v in R.best_buddies(b1, b2)]
    n1 = b1.double() / b1.double().norm(dim=1, keepdim=True).clamp_min(1e-8)
    n2 = b2.double() / b2.double().norm(dim=1, keepdim=True).clamp_min(1e-8)
    return ref, (n1 @ n2.T).numpy()


def _keys(grid, c, seed):
    return torch.randn(grid[0] * grid[1], c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("g1,g2,c", GRIDS, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b, _ in GRIDS])
def test_binned_matches_dense(impl, g1, g2, c, needs_native):
    if g1 == (55, 83):
        k1, k2, (ref, s) = paper_grid_case(c)
    else:
        k1, k2 = _keys(g1, c, 1), _keys(g2, c, 2)
        ref, s = dense_oracle(k1, g1, k2, g2)
    got = kernels.best_buddies_binned(k1, g1, k2, g2, impl=impl)
    assert [v.dtype for v in got] == [torch.int64, torch.float32, torch.int64, torch.float32, torch.bool]
    check_bb_against([v.numpy() for v in got], ref, s, tie_tol=1e-6)


@pytest.mark.parametrize("hierarchy", [1, 3])
def test_binned_other_hierarchies(hierarchy, needs_native):
    g1, g2 = (11, 10), (9, 13)
    k1, k2 = _keys(g1, 6, 3), _keys(g2, 6, 4)
    ref, s = dense_oracle(k1, g1, k2, g2, hierarchy)
    for impl in ("reference", "cpu"):
        got = kernels.best_buddies_binned(k1, g1, k2, g2, hierarchy=hierarchy, impl=impl)
        check_bb_against([v.numpy() for v in got], ref, s, tie_tol=1e-6)


def test_cpu_tiling_bands_and_steps(needs_native):
    """Tiny tiles: many image-2 bands and image-1 steps, halo rows carried over (and overlapping at the start)."""
    g1, g2 = (23, 7), (19, 6)
    k1, k2 = _keys(g1, 5, 5).numpy(), _keys(g2, 5, 6).numpy()
    ref, s = dense_oracle(torch.from_numpy(k1), g1, torch.from_numpy(k2), g2)
    for budget, rows in ((1, 1), (20_000, 8), (30_000, 3)):
        tiling = cpu_binned.BinnedTiling(budget_bytes=budget, min_gemm_rows=rows)
        step, band = cpu_binned.binned_plan(g1, g2, 2, tiling, channels=5)
        assert band < g2[0] and step < g1[0]
        check_bb_against(cpu_binned.best_buddies_binned(k1, g1, k2, g2, tiling=tiling), ref, s, tie_tol=1e-6)
        low = cpu_binned.best_buddies_binned(k1, g1, k2, g2, tiling=tiling, precision="bf16")  # one GEMM per level
        full = cpu_binned.best_buddies_binned(k1, g1, k2, g2, precision="bf16")
        assert all(np.array_equal(a, b) for a, b in zip(low, full, strict=True))


def test_low_memory_tiles_fit_the_budget_of_the_dense_s():
    """The "low_memory" plan's tiles stay within max(4 MiB, 6% of the dense fp32 S); "fast" within max(32 MiB, 6% of
    S), at most 64 MiB."""
    low, fast = cpu_binned.TILINGS["low_memory"], cpu_binned.TILINGS["fast"]
    for g1, g2 in (((55, 83), (55, 55)), ((79, 119), (79, 79)), ((119, 179), (119, 119)), ((3, 9), (4, 4))):
        t1, t2 = g1[0] * g1[1], g2[0] * g2[1]
        step, band = cpu_binned.binned_plan(g1, g2, 2, low)
        _, nbytes = cpu_binned._plan_cost(g1, g2, 384, step, band, 2, True)
        assert nbytes <= max(0.06 * 4 * t1 * t2, 4 << 20), (g1, step, band, nbytes)
        _, nbytes = cpu_binned._plan_cost(g1, g2, 384, *cpu_binned.binned_plan(g1, g2, 2, fast), 2, True)
        assert nbytes <= min(max(32 << 20, 0.06 * 4 * t1 * t2), 64 << 20)


def test_tiling_presets_by_name_and_environment(monkeypatch, needs_native):
    g1, g2 = (13, 11), (12, 9)
    k1, k2 = _keys(g1, 6, 21), _keys(g2, 6, 22)
    runs = [kernels.best_buddies_binned(k1, g1, k2, g2, impl="cpu", tiling=t) for t in
            ("fast", "low_memory", cpu_binned.BinnedTiling(budget_bytes=1))]
    monkeypatch.setenv("DINOFEAT_BINNED_TILING", "low_memory")
    assert cpu_binned.resolve_tiling() is cpu_binned.TILINGS["low_memory"]
    runs.append(kernels.best_buddies_binned(k1, g1, k2, g2, impl="cpu"))
    for r in runs[1:]:  # the same sums whatever the tiles
        assert all(torch.equal(a, b) for a, b in zip(runs[0], r, strict=True))
    monkeypatch.setenv("DINOFEAT_BINNED_TILING", "tiny")
    with pytest.raises(InputError, match=r"DINOFEAT_BINNED_TILING='tiny': expected one of \['fast', 'low_memory'\]"):
        kernels.best_buddies_binned(k1, g1, k2, g2)
    with pytest.raises(InputError, match=r"tiling='big': expected one of"):
        kernels.best_buddies_binned(k1, g1, k2, g2, tiling="big")


@pytest.mark.parametrize("level", [1, 2])
def test_box_gram_equals_the_gram_of_the_level_maps(level, needs_native):
    """A1 . A2^T (box-averaged keys) == box sums of K1 . K2^T over both boxes / the two counts, on a sub-tile."""
    g1, g2 = (9, 7), (8, 6)
    k1, k2 = _keys(g1, 6, 11), _keys(g2, 6, 12)
    a1 = R.box_average(k1.reshape(1, *g1, -1), level).reshape(-1, 6)
    a2 = R.box_average(k2.reshape(1, *g2, -1), level).reshape(-1, 6)
    want = (a1.double() @ a2.double().T).numpy()
    g0 = (k1 @ k2.T).numpy()
    r_lo, r_hi, c_lo, c_hi = 2, 7, 1, 5
    out = np.empty(((r_hi - r_lo) * g1[1], (c_hi - c_lo) * g2[1]), np.float32)
    cpu.native().bb_binned_box_gram(g0, 0, 0, *g1, *g2, level, r_lo, r_hi, c_lo, c_hi, out)
    np.testing.assert_allclose(out, want[r_lo * g1[1]:r_hi * g1[1], c_lo * g2[1]:c_hi * g2[1]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not hold the boxes"):
        cpu.native().bb_binned_box_gram(g0[g1[1]:], 1 + level, 0, *g1, *g2, level, r_lo, r_hi, c_lo, c_hi, out)


def _row_constant(grid, c, seed):
    """Integer maps constant along every grid row: the binned rows of one grid row are equal (exact ties)."""
    rows = torch.randint(-3, 4, (grid[0], 1, c), generator=torch.Generator().manual_seed(seed)).float()
    return rows.expand(grid[0], grid[1], c).reshape(-1, c).contiguous()


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_ties_go_to_the_lowest_index(impl, needs_native):
    g1, g2 = (5, 4), (6, 3)
    k1, k2 = _row_constant(g1, 7, 1), _row_constant(g2, 7, 2)
    nn_1, sim_1, nn_2, sim_2, mask = (v.numpy() for v in kernels.best_buddies_binned(k1, g1, k2, g2, impl=impl))
    _, s = dense_oracle(k1, g1, k2, g2)
    for nn, mat in ((nn_1, s), (nn_2, s.T)):
        tied_first = np.argmax(mat >= mat.max(axis=1, keepdims=True) - 1e-6, axis=1)
        np.testing.assert_array_equal(nn, tied_first)
    assert np.all(nn_1 % g2[1] == 0) and np.all(nn_2 % g1[1] == 0)  # first cell of the winning grid row
    np.testing.assert_array_equal(mask, nn_2[nn_1] == np.arange(len(nn_1)))


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_constant_maps(impl, needs_native):
    g1, g2 = (4, 6), (3, 3)
    got = kernels.best_buddies_binned(np.ones((24, 4), np.float32), g1, np.full((9, 4), 2.0, np.float32), g2, impl=impl)
    nn_1, sim_1, nn_2, sim_2, mask = got
    assert isinstance(nn_1, np.ndarray)
    np.testing.assert_array_equal(nn_1, 0)
    np.testing.assert_array_equal(nn_2, 0)
    np.testing.assert_allclose(sim_1, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(mask, np.arange(24) == 0)


def test_zero_maps_and_empty():
    z = kernels.best_buddies_binned(np.zeros((6, 3), np.float32), (2, 3), np.zeros((4, 3), np.float32), (2, 2))
    np.testing.assert_array_equal(z.nn_1, 0)
    np.testing.assert_array_equal(z.sim_1, 0.0)
    e = kernels.best_buddies_binned(torch.zeros(0, 3), (0, 5), torch.ones(4, 3), (2, 2))
    assert e.nn_1.shape == (0,) and e.nn_2.tolist() == [-1] * 4 and e.sim_2.dtype == torch.float32


def test_precisions_round_the_level_maps(needs_native):
    g1, g2 = (9, 8), (7, 7)
    k1, k2 = _keys(g1, 16, 7), _keys(g2, 16, 8)
    ref, s = dense_oracle(k1, g1, k2, g2)
    for precision in ("bf16", "fp16"):
        a = kernels.best_buddies_binned(k1, g1, k2, g2, precision=precision, impl="reference")
        b = kernels.best_buddies_binned(k1, g1, k2, g2, precision=precision, impl="cpu")
        check_bb_against([v.numpy() for v in b], [v.numpy() for v in a], tie_tol=1e-5, min_agree=0.97)
        check_bb_against([v.numpy() for v in b], ref, tie_tol=2e-2, min_agree=0.9)


def test_log_bin_rows_equal_log_bin(needs_native):
    g = (7, 9)
    x = _keys(g, 10, 9)
    idx = np.array([0, 8, 9, 62, 31, 31])
    for impl in ("reference", "cpu"):
        full = kernels.log_bin(x, g, impl=impl)
        rows = kernels.log_bin_rows(x, g, idx, impl=impl)
        torch.testing.assert_close(rows, full[idx], rtol=0, atol=0)
    assert kernels.log_bin_rows(x, g, np.zeros(0, np.int64)).shape == (0, 170)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((np.ones((6, 3)), (2, 3), np.ones((4, 2)), (2, 2)), {}, "same channel count"),
        ((np.ones((6, 3)), (3, 3), np.ones((4, 3)), (2, 2)), {}, "num_patches"),
        ((np.ones((6, 3)), (2, 3), np.ones((4, 3)), (2, 2)), {"hierarchy": 5}, "hierarchy"),
        ((np.ones((6, 3)), (2, 3), np.ones((4, 3)), (2, 2)), {"precision": "int8"}, "precision"),
        ((np.ones((6, 3)), (2, 3), torch.ones(4, 3), (2, 2)), {}, "same array kind"),
        ((np.ones((2, 6, 3)), (2, 3), np.ones((4, 3)), (2, 2)), {}, "keys1"),
        ((np.full((6, 3), np.nan), (2, 3), np.ones((4, 3)), (2, 2)), {}, "NaN"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        kernels.best_buddies_binned(*args, **kwargs)
    with pytest.raises(InputError, match="indices"):
        kernels.log_bin_rows(np.ones((6, 3)), (2, 3), [6])
