"""The C++ extension (impl="cpu") and the public boundary (checks, kinds, dtypes, empties) against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernels_helpers import check_bb_against, original_best_buddies, rel_err

from dinofeat.errors import InputError
from dinofeat.kernels import BestBuddies, best_buddies, log_bin
from dinofeat.kernels import reference as R

pytestmark = pytest.mark.usefixtures("needs_native")

GRIDS = [(1, 1), (1, 9), (8, 1), (3, 3), (4, 7), (13, 6)]


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("hierarchy", [1, 2, 3])
@pytest.mark.parametrize("grid", GRIDS)
def test_log_bin_cpu_vs_reference(grid, hierarchy):
    x = _rand((2, grid[0] * grid[1], 6), grid[0] * 7 + grid[1])
    got, norm = log_bin(x, grid, hierarchy, impl="cpu", return_norm=True)
    want, wnorm = R.log_bin(torch.from_numpy(x), grid, hierarchy, return_norm=True)
    assert got.dtype == np.float32 and got.shape == tuple(want.shape)
    assert rel_err(got, want.numpy()) <= 1e-6
    assert rel_err(norm, wnorm.numpy()) <= 1e-6
    np.testing.assert_array_equal(got[..., 4 * 6 : 5 * 6], x)  # bin 4 is the input, bit for bit


def test_log_bin_2d_input_and_kinds():
    x = _rand((12, 5), 1)
    out = log_bin(x, (3, 4), impl="cpu")
    assert isinstance(out, np.ndarray) and out.shape == (12, 85)
    t = log_bin(torch.from_numpy(x), (3, 4), impl="cpu")
    assert isinstance(t, torch.Tensor) and t.shape == (12, 85)
    np.testing.assert_array_equal(t.numpy(), out)
    auto = log_bin(x, (3, 4))
    np.testing.assert_array_equal(auto, out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_log_bin_dtypes(dtype):
    x = torch.randn(1, 20, 8).to(dtype)
    got = log_bin(x, (4, 5), impl="cpu")
    want = log_bin(x, (4, 5), impl="reference")
    expect = torch.float32 if dtype == torch.float64 else dtype
    assert got.dtype == want.dtype == expect
    # fp32 sums in another order, then the same rounding: at most one ulp of the output type apart
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}.get(dtype, 2**-22)
    torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=1e-6)


def test_log_bin_out_dtype_numpy_fp16():
    x = _rand((1, 6, 4), 2)
    out, norm = log_bin(x, (2, 3), out_dtype=np.float16, return_norm=True, impl="cpu")
    assert out.dtype == np.float16 and norm.dtype == np.float32
    with pytest.raises(InputError, match="bfloat16"):
        log_bin(x, (2, 3), out_dtype="bfloat16", impl="cpu")


def test_log_bin_non_contiguous():
    base = _rand((2, 10, 12), 3)
    x = base[:, :, ::2]  # strided channels
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(
        log_bin(x, (2, 5), impl="cpu"), log_bin(np.ascontiguousarray(x), (2, 5), impl="cpu")
    )
    xt = torch.from_numpy(base).transpose(0, 1).transpose(0, 1)[:, :, 1::2]
    assert not xt.is_contiguous()
    torch.testing.assert_close(
        log_bin(xt, (2, 5), impl="cpu"), log_bin(xt.contiguous(), (2, 5), impl="reference")
    )


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_log_bin_empty(impl):
    out, norm = log_bin(np.zeros((2, 0, 384), np.float32), (0, 7), impl=impl, return_norm=True)
    assert out.shape == (2, 0, 384 * 17) and out.dtype == np.float32 and norm.shape == (2, 0)
    t = log_bin(torch.zeros(0, 384, dtype=torch.float16), (5, 0), impl=impl)
    assert t.shape == (0, 384 * 17) and t.dtype == torch.float16


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((2, 3, 4, 5), np.float32), (3, 4)), r"desc must have shape \(B, T, C\) or \(T, C\).*4-D"),
        ((np.zeros((12, 5), np.int64), (3, 4)), "desc must be a floating array.*int64"),
        ((np.zeros((12, 5), np.float32), (3, 5)), r"Hp\*Wp = 15 cells, but desc has T = 12"),
        ((np.zeros((12, 5), np.float32), (12,)), "num_patches must be a pair"),
        (([[1.0, 2.0]], (1, 1)), "numpy array, a torch tensor or a CuPy array"),
    ],
)
def test_log_bin_errors(args, match):
    with pytest.raises(InputError, match=match):
        log_bin(*args, impl="cpu")


def test_log_bin_bad_options():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(InputError, match="hierarchy"):
        log_bin(x, (2, 2), 0)
    with pytest.raises(InputError, match="impl"):
        log_bin(x, (2, 2), impl="gpu")
    with pytest.raises(InputError, match="out_dtype"):
        log_bin(x, (2, 2), out_dtype=np.int32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_named_with_row(bad):
    x = np.zeros((2, 30, 4), np.float32)
    x[1, 17, 2] = bad
    word = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(InputError, match=f"desc contains {word} at batch 1, row 17; check the input"):
        log_bin(x, (5, 6), impl="cpu")
    d1 = np.ones((20, 4), np.float32)
    d1[17, 0] = bad
    with pytest.raises(InputError, match=f"desc1 contains {word} at row 17"):
        best_buddies(d1, np.ones((3, 4), np.float32), impl="cpu")
    with pytest.raises(InputError, match=f"desc2 contains {word} at row 17"):
        best_buddies(np.ones((3, 4), np.float32), d1, impl="cpu")


# ------------------------------------------------------------------------------------------ best buddies


@pytest.mark.parametrize(
    "t1,t2,chunk", [(1, 1, None), (1, 9, None), (9, 1, None), (37, 23, 5), (300, 700, 64), (257, 1025, None)]
)
def test_best_buddies_cpu_vs_original(t1, t2, chunk):
    d1 = torch.from_numpy(_rand((t1, 24), t1))
    d2 = torch.from_numpy(_rand((t2, 24), t2 + 1))
    *ref, s = original_best_buddies(d1, d2)
    res = best_buddies(d1.numpy(), d2.numpy(), impl="cpu", chunk=chunk)
    assert isinstance(res, BestBuddies)
    assert res.nn_1.dtype == np.int64 and res.sim_1.dtype == np.float32 and res.mask.dtype == np.bool_
    check_bb_against(res, [v.numpy() for v in ref], s.numpy(), tie_tol=1e-6)
    ref2 = best_buddies(d1, d2, impl="reference", chunk=chunk)
    check_bb_against([np.asarray(v) for v in res], [v.numpy() for v in ref2], s.numpy(), tie_tol=1e-6)


def test_best_buddies_duplicates_lowest_index():
    # +-1 entries in 16 channels: norm 4, every product and partial sum exact, so duplicates give exactly equal S
    # whatever order the GEMM sums in (with general floats a BLAS may round equal rows differently by an ulp).
    base = np.sign(_rand((5, 16), 9)).astype(np.float32)
    d2 = np.concatenate([base, base, base])  # every row three times
    d1 = np.concatenate([base[::-1], base])
    for impl in ("cpu", "reference"):
        for chunk in (None, 1, 4):
            nn_1, sim_1, nn_2, sim_2, mask = best_buddies(d1, d2, impl=impl, chunk=chunk)
            np.testing.assert_array_equal(nn_1, [4, 3, 2, 1, 0, 0, 1, 2, 3, 4])
            np.testing.assert_array_equal(nn_2, [4, 3, 2, 1, 0] * 3)  # first of the two equal rows of d1
            np.testing.assert_array_equal(mask, [True] * 5 + [False] * 5)


def test_best_buddies_zero_vectors():
    d1 = np.zeros((4, 6), np.float32)
    d1[2, 1] = 1.0
    d2 = np.zeros((3, 6), np.float32)
    d2[1, 1] = -2.0
    for impl in ("cpu", "reference"):
        nn_1, sim_1, nn_2, sim_2, mask = best_buddies(d1, d2, impl=impl)
        np.testing.assert_array_equal(nn_1, [0, 0, 0, 0])  # all-zero similarities: first index
        np.testing.assert_array_equal(sim_1, [0, 0, 0, 0])
        np.testing.assert_array_equal(nn_2, [0, 0, 0])
        np.testing.assert_array_equal(sim_2, [0, 0, 0])
        np.testing.assert_array_equal(mask, [True, False, False, False])


def test_best_buddies_single_descriptor_and_torch_kinds():
    d1 = torch.randn(1, 10)
    d2 = torch.randn(6, 10)
    res = best_buddies(d1, d2, impl="cpu")
    assert all(isinstance(v, torch.Tensor) for v in res)
    assert res.nn_1.shape == (1,) and res.nn_2.shape == (6,)
    ref = best_buddies(d1, d2, impl="reference")
    check_bb_against([v.numpy() for v in res], [v.numpy() for v in ref])
    nn_1, sim_1, nn_2, sim_2, mask = res  # unpacks
    assert bool(mask[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_best_buddies_dtypes(dtype):
    d1 = torch.randn(50, 32).to(dtype)
    d2 = torch.randn(40, 32).to(dtype)
    res = best_buddies(d1, d2, impl="cpu")
    ref = best_buddies(d1, d2, impl="reference")
    check_bb_against([v.numpy() for v in res], [v.numpy() for v in ref], tie_tol=1e-6)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_best_buddies_precision_modes(precision):
    g = torch.Generator().manual_seed(5)
    d1 = torch.randn(64, 48, generator=g)
    d2 = torch.randn(80, 48, generator=g)
    res = best_buddies(d1, d2, impl="cpu", precision=precision)
    ref = best_buddies(d1, d2, impl="reference", precision=precision)  # same-precision reference
    # a 1-ulp fp32 difference in a row norm can flip one fp16/bf16 rounding of a normalised value
    tol = {"fp16": 2e-3, "bf16": 1e-2}[precision]
    check_bb_against([v.numpy() for v in res], [v.numpy() for v in ref], tie_tol=tol, min_agree=0.95)
    full = best_buddies(d1, d2, impl="reference")
    assert np.abs(res.sim_1.numpy() - full.sim_1.numpy()).max() < (2e-2 if precision == "bf16" else 3e-3)


def test_best_buddies_non_contiguous():
    base = _rand((30, 40), 5)
    d1 = base[:, ::2]
    d2 = base[::-1, 1::2]
    res = best_buddies(d1, d2, impl="cpu")
    ref = best_buddies(np.ascontiguousarray(d1), np.ascontiguousarray(d2), impl="reference")
    check_bb_against(res, [v for v in ref], tie_tol=1e-6)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_best_buddies_empty(impl):
    d = _rand((5, 8), 1)
    e = np.zeros((0, 8), np.float32)
    nn_1, sim_1, nn_2, sim_2, mask = best_buddies(d, e, impl=impl)
    np.testing.assert_array_equal(nn_1, [-1] * 5)
    assert nn_1.dtype == np.int64 and sim_1.dtype == np.float32 and mask.dtype == np.bool_
    assert np.all(np.isneginf(sim_1)) and not mask.any() and nn_2.shape == (0,) and sim_2.shape == (0,)
    nn_1, sim_1, nn_2, sim_2, mask = best_buddies(e, d, impl=impl)
    assert nn_1.shape == sim_1.shape == mask.shape == (0,)
    np.testing.assert_array_equal(nn_2, [-1] * 5)
    res = best_buddies(torch.zeros(0, 3), torch.zeros(0, 3), impl=impl)
    assert [tuple(v.shape) for v in res] == [(0,)] * 5 and res.nn_1.dtype == torch.int64


@pytest.mark.parametrize(
    "d1,d2,kw,match",
    [
        (
            np.zeros((3, 4), np.float32),
            np.zeros((3, 5), np.float32),
            {},
            r"same channel count C.*\(3, 4\).*\(3, 5\)",
        ),
        (
            np.zeros((3, 4, 1), np.float32),
            np.zeros((3, 4), np.float32),
            {},
            r"desc1 must have shape \(T1, C\)",
        ),
        (
            np.zeros((3, 4), np.float32),
            np.zeros((3, 4), np.int32),
            {},
            "desc2 must be a floating array.*int32",
        ),
        (np.zeros((3, 4), np.float32), torch.zeros(3, 4), {}, "same array kind"),
        (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32), {"precision": "tf32"}, "precision"),
        (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32), {"chunk": 0}, "chunk"),
    ],
)
def test_best_buddies_errors(d1, d2, kw, match):
    with pytest.raises(InputError, match=match):
        best_buddies(d1, d2, impl="cpu", **kw)


def test_native_contract_checks():
    from dinofeat import _native

    with pytest.raises(ValueError, match="C-contiguous"):
        _native.log_bin(np.zeros((1, 4, 3), np.float64), 2, 2, 2, False)
    with pytest.raises(ValueError, match="hp \\* wp"):
        _native.log_bin(np.zeros((1, 4, 3), np.float32), 2, 3, 2, False)
    assert _native.max_threads() >= 1
