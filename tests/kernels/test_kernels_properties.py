"""Property tests (hypothesis) of the kernels: log_bin against the original's loop on random grids and channel
counts; Best Buddies invariants (mask <=> mutual argmax, swapping the inputs, ties -> lowest index).

Bounded in time: few examples each, no deadline, derandomised (the same examples every run, so CI cannot flake);
`benchmarks/fuzz.py` is where open-ended exploration runs.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_helpers import original_log_bin

from dinofeat.kernels import best_buddies, log_bin

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
IMPLS = ("reference", "cpu")


@FAST
@given(b=st.integers(1, 2), hp=st.integers(1, 11), wp=st.integers(1, 11), c=st.integers(1, 12),
       hierarchy=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_log_bin_matches_the_original_loop(needs_native, b, hp, wp, c, hierarchy, seed):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((b, hp * wp, c)).astype(np.float32))
    want = original_log_bin(x, (hp, wp), hierarchy).numpy()
    scale = max(float(np.abs(want).max()), 1e-30)
    for impl in IMPLS:
        got, norm = log_bin(x.numpy(), (hp, wp), hierarchy=hierarchy, impl=impl, return_norm=True)
        assert got.shape == (b, hp * wp, c * (1 + 8 * hierarchy)) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-6 * scale, impl
        np.testing.assert_allclose(norm, np.linalg.norm(want, axis=-1), rtol=1e-5, atol=1e-6 * scale)


def _descriptors(seed: int, t: int, c: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal((t, c)).astype(np.float32)
    # +-1 entries in C = 4 / 16 / 64 channels: norms 2 / 4 / 8, every similarity an exact multiple of 1/C whatever
    # the summation order, and few distinct rows, so exact ties (duplicates) are common.
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=(t, c))


def _exact_s(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    n1 = d1.astype(np.float64) / np.maximum(np.linalg.norm(d1.astype(np.float64), axis=1, keepdims=True), 1e-8)
    n2 = d2.astype(np.float64) / np.maximum(np.linalg.norm(d2.astype(np.float64), axis=1, keepdims=True), 1e-8)
    return n1 @ n2.T


def _unambiguous(s: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Rows of s whose best value beats the second best by more than tol (no near-tie for fp32 to flip)."""
    if s.shape[1] < 2:
        return np.ones(s.shape[0], bool)
    top2 = np.sort(s, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > tol


@FAST
@given(t1=st.integers(1, 40), t2=st.integers(1, 40), kind=st.sampled_from(["gauss", "signs"]),
       c_gauss=st.integers(1, 24), c_signs=st.sampled_from([4, 16, 64]), seed=st.integers(0, 2**32 - 1),
       chunk=st.sampled_from([None, 1, 7]))
def test_best_buddies_invariants(needs_native, t1, t2, kind, c_gauss, c_signs, seed, chunk):
    c = c_gauss if kind == "gauss" else c_signs
    d1, d2 = _descriptors(seed, t1, c, kind), _descriptors(seed + 1, t2, c, kind)
    s = _exact_s(d1, d2)
    for impl in IMPLS:
        nn_1, sim_1, nn_2, sim_2, mask = (np.asarray(v) for v in best_buddies(d1, d2, impl=impl, chunk=chunk))
        # mask <=> mutual argmax
        np.testing.assert_array_equal(mask, nn_2[nn_1] == np.arange(t1))
        # nn are argmaxes of S (up to fp32 rounding), and sim the matching values
        np.testing.assert_allclose(sim_1, s.max(axis=1), atol=1e-5)
        np.testing.assert_allclose(sim_2, s.max(axis=0), atol=1e-5)
        np.testing.assert_allclose(s[np.arange(t1), nn_1], s.max(axis=1), atol=1e-5)
        np.testing.assert_allclose(s[nn_2, np.arange(t2)], s.max(axis=0), atol=1e-5)
        if kind == "signs":  # S is exact: ties go to the lowest index, exactly as numpy's first-occurrence argmax
            np.testing.assert_array_equal(nn_1, s.argmax(axis=1))
            np.testing.assert_array_equal(nn_2, s.argmax(axis=0))
        else:
            rows, cols = _unambiguous(s), _unambiguous(s.T)
            np.testing.assert_array_equal(nn_1[rows], s.argmax(axis=1)[rows])
            np.testing.assert_array_equal(nn_2[cols], s.argmax(axis=0)[cols])
        # swapping the inputs swaps the roles (exact where S is exact or unambiguous)
        r_nn_1, r_sim_1, r_nn_2, r_sim_2, r_mask = (np.asarray(v) for v in best_buddies(d2, d1, impl=impl,
                                                                                         chunk=chunk))
        keep2 = np.ones(t2, bool) if kind == "signs" else _unambiguous(s.T)
        keep1 = np.ones(t1, bool) if kind == "signs" else _unambiguous(s)
        np.testing.assert_array_equal(r_nn_1[keep2], nn_2[keep2])
        np.testing.assert_array_equal(r_nn_2[keep1], nn_1[keep1])
        np.testing.assert_allclose(r_sim_1, sim_2, atol=1e-6)
        np.testing.assert_allclose(r_sim_2, sim_1, atol=1e-6)
        pairs = {(i, int(nn_1[i])) for i in np.nonzero(mask)[0]}
        swapped = {(int(r_nn_1[j]), j) for j in np.nonzero(r_mask)[0]}
        if kind == "signs" or (keep1.all() and keep2.all()):
            assert pairs == swapped
