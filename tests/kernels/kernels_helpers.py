"""Shared helpers of the kernel tests: golden paths, loop transcriptions of the original code, tolerances."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO / "dinofeat" / "kernels"
GOLDEN = Path(os.environ.get("DINOFEAT_GOLDEN", REPO.parent / "shared" / "golden"))


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (0 when both are empty or b is all zero and a == b)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.size == 0:
        return 0.0
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    return float(diff / scale) if scale > 0 else float(diff)


def original_log_bin(x: torch.Tensor, num_patches, hierarchy: int = 2) -> torch.Tensor:
    """Direct loop transcription of the original ``_log_bin`` (SEMANTICS.md §4), for small grids.

    x: (B, T, C) float32 -> (B, T, C * (1 + 8 h)).
    """
    b, t, c = x.shape
    hp, wp = num_patches
    maps = x.permute(0, 2, 1).reshape(b, c, hp, wp)
    pools = []
    for k in range(hierarchy):
        win = 3**k
        pools.append(torch.nn.AvgPool2d(win, stride=1, padding=win // 2, count_include_pad=False)(maps))
    nb = 1 + 8 * hierarchy
    out = torch.zeros((b, c * nb, hp, wp))
    for y in range(hp):
        for xx in range(wp):
            part = 0
            for k in range(hierarchy):
                ks = 3**k
                for i in range(y - ks, y + ks + 1, ks):
                    for j in range(xx - ks, xx + ks + 1, ks):
                        if i == y and j == xx and k != 0:
                            continue
                        ii = max(0, min(i, hp - 1))
                        jj = max(0, min(j, wp - 1))
                        out[:, part * c : (part + 1) * c, y, xx] = pools[k][:, :, ii, jj]
                        part += 1
    return out.flatten(-2).permute(0, 2, 1)


def original_best_buddies(d1: torch.Tensor, d2: torch.Tensor):
    """The original per-row ``chunk_cosine_sim`` + torch.max + mutual test, for small inputs."""
    cos = torch.nn.CosineSimilarity(dim=1)
    s = torch.stack([cos(d1[i : i + 1].float(), d2.float()) for i in range(d1.shape[0])])
    sim_1, nn_1 = s.max(dim=1)
    sim_2, nn_2 = s.max(dim=0)
    mask = nn_2[nn_1] == torch.arange(d1.shape[0])
    return nn_1, sim_1, nn_2, sim_2, mask, s


def load_golden_unbinned(name: str):
    z = np.load(GOLDEN / name)
    hp, wp = (int(v) for v in z["num_patches"])
    return np.ascontiguousarray(z["desc_unbinned"][0, 0]), (hp, wp)


def check_bb_against(res, ref, s: np.ndarray | None = None, min_agree: float = 1.0, tie_tol: float = 1e-5):
    """Compare BestBuddies ``res`` with ``ref`` (both tuples of numpy): sims close, argmax equal up to near-ties."""
    nn_1, sim_1, nn_2, sim_2, mask = (np.asarray(v) for v in res)
    r_nn_1, r_sim_1, r_nn_2, r_sim_2, r_mask = (np.asarray(v) for v in ref)
    np.testing.assert_allclose(sim_1, r_sim_1, rtol=0, atol=tie_tol)
    np.testing.assert_allclose(sim_2, r_sim_2, rtol=0, atol=tie_tol)
    for got, want, name in ((nn_1, r_nn_1, "nn_1"), (nn_2, r_nn_2, "nn_2")):
        agree = float((got == want).mean()) if got.size else 1.0
        assert agree >= min_agree, f"{name} agrees on only {agree:.4%}"
        bad = np.nonzero(got != want)[0]
        if s is not None and bad.size:
            mat = s if name == "nn_1" else s.T
            gap = np.abs(mat[bad, got[bad]] - mat[bad, want[bad]])
            assert gap.max() <= tie_tol, (
                f"{name} differs beyond a near-tie at {bad[:5]} (gap {gap.max():.3g})"
            )
    if min_agree == 1.0:
        np.testing.assert_array_equal(mask, r_mask)
