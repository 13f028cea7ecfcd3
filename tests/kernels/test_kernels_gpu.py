"""The CuPy/CUDA path against the CPU reference. Needs an NVIDIA GPU: skipped with the reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernels_helpers import check_bb_against, rel_err

from dinofeat.errors import BackendUnavailableError, InputError
from dinofeat.kernels import best_buddies, log_bin
from dinofeat.kernels import reference as R


def _gpu_reason() -> str | None:
    try:
        import cupy as cp

        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA GPU: {type(e).__name__}: {e}"
    return None if n > 0 else "no CUDA GPU: device count is 0"


@pytest.fixture(scope="module")
def cp():
    reason = _gpu_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    return cupy


def test_cuda_impl_without_gpu_is_a_clear_error():
    if _gpu_reason() is None:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="CuPy|no CUDA GPU"):
        log_bin(np.zeros((4, 3), np.float32), (2, 2), impl="cuda")
    with pytest.raises(BackendUnavailableError, match="CuPy|no CUDA GPU"):
        best_buddies(np.ones((4, 3), np.float32), np.ones((2, 3), np.float32), impl="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "grid,hierarchy", [((1, 1), 2), ((1, 9), 2), ((8, 1), 1), ((13, 6), 3), ((55, 83), 2)]
)
def test_log_bin_cupy(cp, grid, hierarchy):
    x = np.random.default_rng(0).standard_normal((2, grid[0] * grid[1], 40)).astype(np.float32)
    out, norm = log_bin(cp.asarray(x), grid, hierarchy, return_norm=True)
    assert isinstance(out, cp.ndarray)
    want, wnorm = R.log_bin(torch.from_numpy(x), grid, hierarchy, return_norm=True)
    assert rel_err(cp.asnumpy(out), want.numpy()) <= 1e-6
    assert rel_err(cp.asnumpy(norm), wnorm.numpy()) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,out_dtype",
    [
        (torch.float32, None),
        (torch.float16, None),
        (torch.bfloat16, None),
        (torch.float32, torch.float16),
        (torch.float64, None),
    ],
)
def test_log_bin_torch_cuda(cp, dtype, out_dtype):
    x = torch.randn(1, 7 * 9, 16, device="cuda").to(dtype)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # x was written on the default stream
    with torch.cuda.stream(stream):
        out = log_bin(x, (7, 9), out_dtype=out_dtype)
    stream.synchronize()
    assert out.device == x.device
    want = R.log_bin(x.cpu().float() if dtype == torch.float64 else x.cpu(), (7, 9), out_dtype=out_dtype)
    assert out.dtype == want.dtype
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}.get(want.dtype, 2**-22)
    torch.testing.assert_close(out.cpu().float(), want.float(), rtol=ulp, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "t1,t2,chunk", [(1, 1, None), (1, 300, None), (300, 1, 7), (513, 257, 100), (2000, 3000, None)]
)
def test_best_buddies_cupy(cp, t1, t2, chunk):
    rng = np.random.default_rng(t1 + t2)
    d1 = rng.standard_normal((t1, 96)).astype(np.float32)
    d2 = rng.standard_normal((t2, 96)).astype(np.float32)
    res = best_buddies(cp.asarray(d1), cp.asarray(d2), chunk=chunk)
    assert isinstance(res.nn_1, cp.ndarray)
    ref = [v.numpy() for v in R.best_buddies(torch.from_numpy(d1), torch.from_numpy(d2))]
    s = (R.normalize_rows(torch.from_numpy(d1)) @ R.normalize_rows(torch.from_numpy(d2)).T).numpy()
    check_bb_against([cp.asnumpy(v) for v in res], ref, s, tie_tol=1e-5)


@pytest.mark.gpu
def test_best_buddies_ties_on_gpu(cp):
    # Exact products (+-1 entries): equal values are bit-equal in every GEMM shape -> lowest index, always.
    base = np.sign(np.random.default_rng(3).standard_normal((5, 16))).astype(np.float32)
    d2 = np.concatenate([base, base, base])
    d1 = np.concatenate([base[::-1], base])
    nn_1, sim_1, nn_2, sim_2, mask = best_buddies(cp.asarray(d1), cp.asarray(d2), chunk=3)
    np.testing.assert_array_equal(cp.asnumpy(nn_1), [4, 3, 2, 1, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(cp.asnumpy(nn_2), [4, 3, 2, 1, 0] * 3)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [3, 7, None])
def test_best_buddies_inexact_duplicates_on_gpu(cp, chunk):
    # Inexact products: duplicated columns are mathematically tied, but cuBLAS need not give bit-equal floats across
    # GEMM shapes (chunks). What holds: the winner is one of the duplicates, its value is the max to fp32 accuracy,
    # and mask is exactly nn_2[nn_1[i]] == i.
    rng = np.random.default_rng(7)
    base = rng.standard_normal((5, 96)).astype(np.float32)
    d2 = np.concatenate([base, base, base])
    d1 = np.concatenate([base[::-1] + 1e-3 * rng.standard_normal((5, 96)).astype(np.float32), base])
    nn_1, sim_1, nn_2, sim_2, mask = (cp.asnumpy(v) for v in best_buddies(cp.asarray(d1), cp.asarray(d2),
                                                                           chunk=chunk))
    np.testing.assert_array_equal(nn_1 % 5, [4, 3, 2, 1, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(nn_2, [5, 6, 7, 8, 9] * 3)  # every copy in image 2 picks the exact row
    ref = R.best_buddies(torch.from_numpy(d1), torch.from_numpy(d2))
    np.testing.assert_allclose(sim_1, ref[1].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, nn_2[nn_1] == np.arange(10))


@pytest.mark.gpu
def test_torch_inputs_use_torch_stream_and_memory(cp):
    """Kernels on torch tensors run on torch's current stream and allocate from torch's pool (CuPy's stays empty)."""
    pool = cp.get_default_memory_pool()
    used_before = pool.used_bytes()
    d1 = torch.randn(1500, 384, device="cuda")
    d2 = torch.randn(1700, 384, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        res = best_buddies(d1, d2)
        binned = log_bin(d1[None], (30, 50))
    side.synchronize()
    assert pool.used_bytes() == used_before  # results and temporaries came from torch's caching allocator
    ref = R.best_buddies(d1.cpu(), d2.cpu())
    s = (R.normalize_rows(d1.cpu()) @ R.normalize_rows(d2.cpu()).T).numpy()
    check_bb_against([v.cpu().numpy() for v in res], [v.numpy() for v in ref], s, tie_tol=1e-5)
    assert rel_err(binned.cpu().numpy(), R.log_bin(d1[None].cpu(), (30, 50)).numpy()) <= 1e-6
    if torch.cuda.device_count() > 1:  # a tensor on a GPU that is not the current device
        e1, e2 = d1.to("cuda:1"), d2.to("cuda:1")
        got = best_buddies(e1, e2)
        assert got.nn_1.device == e1.device
        np.testing.assert_array_equal(got.nn_1.cpu().numpy(), res.nn_1.cpu().numpy())


@pytest.mark.gpu
def test_device_nan_is_reported_by_check_without_a_sync_in_the_call(cp):
    d1 = torch.randn(300, 64, device="cuda")
    d1[123, 5] = float("nan")
    res = best_buddies(d1, torch.randn(200, 64, device="cuda"))  # no InputError here: nothing read back
    with pytest.raises(InputError, match="desc1 contains NaN at row 123"):
        res.check()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_best_buddies_torch_cuda_precisions(cp, precision, dtype):
    d1 = torch.randn(700, 128, device="cuda").to(dtype)
    d2 = torch.randn(500, 128, device="cuda").to(dtype)
    res = best_buddies(d1, d2, precision=precision)
    assert all(v.device == d1.device for v in res)
    ref = [v.numpy() for v in R.best_buddies(d1.cpu(), d2.cpu(), precision=precision)]
    tol = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}[precision]
    check_bb_against([v.cpu().numpy() for v in res], ref, tie_tol=tol, min_agree=0.97)


@pytest.mark.gpu
def test_numpy_in_cuda_impl_out_numpy(cp):
    x = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    out = log_bin(x, (4, 5), impl="cuda")
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(
        out, R.log_bin(torch.from_numpy(x)[None], (4, 5))[0].numpy(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.gpu
@pytest.mark.parametrize("g1,g2,c", [((1, 1), (1, 1), 5), ((1, 7), (7, 1), 4), ((3, 3), (4, 2), 6),
                                     ((55, 83), (55, 55), 16)])
def test_best_buddies_binned_cuda(cp, g1, g2, c):
    from dinofeat.kernels import best_buddies_binned
    from dinofeat.kernels import cuda as K

    gen = torch.Generator().manual_seed(c)
    k1, k2 = torch.randn(g1[0] * g1[1], c, generator=gen), torch.randn(g2[0] * g2[1], c, generator=gen)
    b1, b2 = R.log_bin(k1[None], g1)[0], R.log_bin(k2[None], g2)[0]
    ref = [v.numpy() for v in R.best_buddies(b1, b2)]
    s = (R.normalize_rows(b1) @ R.normalize_rows(b2).T).numpy()
    got = best_buddies_binned(k1.cuda(), g1, k2.cuda(), g2, impl="cuda")
    check_bb_against([v.cpu().numpy() for v in got], ref, s, tie_tol=1e-5)
    # several image-1 steps (halo rows recomputed per step), CuPy arrays in and out
    x1, x2 = cp.asarray(k1.numpy()), cp.asarray(k2.numpy())
    small = K.best_buddies_binned_cupy(x1, "float32", g1, x2, "float32", g2, 2, "fp32", budget=1)
    check_bb_against([cp.asnumpy(v) for v in small], ref, s, tie_tol=1e-5)
    bf16 = best_buddies_binned(x1, g1, x2, g2, precision="bf16", impl="cuda")
    check_bb_against([cp.asnumpy(v) for v in bf16], ref, s, tie_tol=3e-2, min_agree=0.9)
