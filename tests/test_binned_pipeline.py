"""Binned Best Buddies in the pipeline: find_correspondences' shifted-Gram path against the dense path
(exact_gemm=True), the pair helper, log_bin(out=) and the extractor's reused log-bin buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testutil import EXAMPLES

import dinofeat
from dinofeat import kernels
from dinofeat.correspondences import _best_buddies_for_pair
from dinofeat.errors import InputError


def test_find_correspondences_binned_equals_dense(extractor):
    """Two layers (the per-layer binned rows concatenated); one layer at 224 is tests/test_golden_parity.py."""
    kw = dict(num_pairs=5, load_size=48, layer=[8, 9], extractor=extractor)
    new = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", **kw)
    old = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", exact_gemm=True, **kw)
    for name in ("nn_1", "nn_2", "bbs_mask", "mutual_mask"):
        np.testing.assert_array_equal(getattr(new, name).numpy(), getattr(old, name).numpy(), err_msg=name)
    np.testing.assert_allclose(new.sim_1.numpy(), old.sim_1.numpy(), rtol=0, atol=1e-6)
    assert new.points1 == old.points1 and new.points2 == old.points2
    np.testing.assert_array_equal(new.kmeans_labels, old.kmeans_labels)


def test_pair_helper_rows_are_the_binned_rows():
    g1, g2 = (6, 5), (4, 7)
    gen = torch.Generator().manual_seed(0)
    k1, k2 = torch.randn(30, 8, generator=gen), torch.randn(28, 8, generator=gen)
    bb, rows = _best_buddies_for_pair(k1, g1, k2, g2, bin=True, exact_gemm=False, precision="fp32")
    dense, dense_rows = _best_buddies_for_pair(k1, g1, k2, g2, bin=True, exact_gemm=True, precision="fp32")
    np.testing.assert_array_equal(bb.nn_1.numpy(), dense.nn_1.numpy())
    idx1, idx2 = torch.tensor([0, 29, 7]), torch.tensor([3, 27, 0])
    for a, b in zip(rows(idx1, idx2), dense_rows(idx1, idx2), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    unbinned, plain = _best_buddies_for_pair(k1, g1, k2, g2, bin=False, exact_gemm=False, precision="fp32")
    np.testing.assert_array_equal(unbinned.nn_1.numpy(), kernels.best_buddies(k1, k2).nn_1.numpy())
    assert plain(idx1, idx2)[0].shape == (3, 8)


def test_log_bin_out_buffer():
    x = torch.randn(2, 12, 5)
    for impl in ("cpu", "reference"):
        want = kernels.log_bin(x, (3, 4), impl=impl)
        buf = torch.full((2, 12, 85), float("nan"))
        got = kernels.log_bin(x, (3, 4), impl=impl, out=buf)
        assert got is buf
        torch.testing.assert_close(buf, want, rtol=0, atol=0)
    arr = np.empty((12, 85), np.float32)
    assert kernels.log_bin(x[0].numpy(), (3, 4), out=arr) is arr
    np.testing.assert_array_equal(arr, kernels.log_bin(x[0].numpy(), (3, 4)))
    with pytest.raises(InputError, match="out must have shape"):
        kernels.log_bin(x, (3, 4), out=torch.empty(2, 12, 84))
    with pytest.raises(InputError, match="out must be a torch"):
        kernels.log_bin(x, (3, 4), out=np.empty((2, 12, 85), np.float32))
    with pytest.raises(InputError, match="C-contiguous"):
        kernels.log_bin(x, (3, 4), out=torch.empty(2, 85, 12).transpose(1, 2))


def test_extractor_reuses_its_log_bin_buffer_only_when_released(extractor):
    batch, _ = extractor.preprocess(EXAMPLES / "img_b.png", 32)
    f1 = extractor.extract(batch, bin=True)
    first = f1.descriptors.clone()
    ptr = f1.descriptors.data_ptr()
    f2 = extractor.extract(batch * 0.5, bin=True)  # f1 still held: a new buffer, f1 untouched
    assert f2.descriptors.data_ptr() != ptr
    torch.testing.assert_close(f1.descriptors, first, rtol=0, atol=0)
    ptr2 = f2.descriptors.data_ptr()
    view = f2.descriptors[0]
    del f2
    f3 = extractor.extract(batch, bin=True)  # a view of f2's buffer is alive: still not reused
    assert f3.descriptors.data_ptr() != ptr2 and view.data_ptr() == ptr2
    torch.testing.assert_close(f3.descriptors, first, rtol=0, atol=0)
    ptr3 = f3.descriptors.data_ptr()
    del f3
    f4 = extractor.extract(batch, bin=True)  # released: reused
    assert f4.descriptors.data_ptr() == ptr3
    torch.testing.assert_close(f4.descriptors, first, rtol=0, atol=0)
