"""CPU binned Best Buddies from shifted Gram tiles (issue 10): planning and the tile loop around the C++ kernels.

    binned1[i] . binned2[j] = sum_b G_l(b)[clamp1(i + o_b), clamp2(j + o_b)],   G_l = A1_l . A2_l^T

where A_l is the level-l box average of the keys (A_0 = the keys). In fp32 only ``G_0 = K1 . K2^T`` is a GEMM: every
higher level is the box sum of G_0 over both images' boxes divided by the two valid counts
(``_native.bb_binned_box_gram``), since ``A1 . A2^T = P1 (K1 . K2^T) P2^T`` for the box operators P. So the level
maps are never formed, there is one GEMM with K = C per tile instead of one per level, and the extra memory is the
tiles alone. With ``precision`` "fp16"/"bf16" the level maps are rounded (the GPU's behaviour), so each level keeps
its own GEMM of the rounded maps.

Image 2 is cut into bands of grid rows, image 1 streamed in steps of grid rows; the GEMM'd tiles keep the rows the
previous step already computed (its halo), so image 1 is never recomputed, image 2 only in its bands' halos.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BinnedTiling:
    """Tiling of :func:`best_buddies_binned` on the CPU (presets in :data:`TILINGS`)."""

    # Bytes of all tiles of one step together (the only buffers that grow with T1 * T2): this fraction of the dense
    # fp32 S (4 * T1 * T2 bytes) ...
    budget_fraction: float = 0.06
    # ... but at least this (tiny inputs: memory is no concern, fewer calls are faster) and at most this.
    min_budget_bytes: int = 1 << 20
    max_budget_bytes: int = 64 << 20
    # A fixed budget instead of the three fields above (None: derived from them).
    budget_bytes: int | None = None
    # Image-1 cells per step of new GEMM rows: at least this many (short GEMMs waste the BLAS's packing).
    min_gemm_rows: int = 128


# Presets by name (measured in benchmarks/results/bench_binned.json, README "Binned Best Buddies"):
TILINGS = {
    # Speed first (default): 6% of the dense S but at least 32 MiB of tiles (at most 64 MiB). The paper pair at 224
    # runs in one image-2 band: 4.6x the dense path, 34 MiB of peak extra memory (65% of the dense S it never makes;
    # 6% at 480).
    "fast": BinnedTiling(min_budget_bytes=32 << 20),
    # Memory first: tiles within 6% of the dense S, at least 4 MiB: peak extra memory <= 10% of the dense S from 320
    # up. At 224 the ~3 MiB the call needs besides its tiles (BLAS workspace, fold and box buffers) is already 6% of
    # S, and tiles small enough for 10% lose to the dense path, so it takes 4 MiB there (~13%).
    "low_memory": BinnedTiling(min_budget_bytes=4 << 20),
}
DEFAULT_TILING = "fast"
TILING_ENV = "DINOFEAT_BINNED_TILING"  # a preset name: the process-wide default (e.g. low_memory on a robot)
BINNED_TILING = TILINGS[DEFAULT_TILING]


def resolve_tiling(tiling=None) -> BinnedTiling:
    """A `BinnedTiling` from None (``$DINOFEAT_BINNED_TILING``, else "fast"), a preset name or an instance."""
    from ..errors import InputError

    if isinstance(tiling, BinnedTiling):
        return tiling
    name, where = tiling, "tiling"
    if tiling is None:
        name, where = os.environ.get(TILING_ENV, "").strip() or DEFAULT_TILING, TILING_ENV
    if not isinstance(name, str) or name not in TILINGS:
        raise InputError(f"{where}={name!r}: expected one of {sorted(TILINGS)} (or a BinnedTiling)")
    return TILINGS[name]


# Cost model of the planner, in GEMM float operations (calibrated on the 2-core AMD EPYC, GEMM ~100 GFLOP/s at
# these shapes): the box sums of a new higher-level tile element cost about as much as 260 of them (up to 9 summed
# rows + 6 adds + 1 division, memory-bound), a float of a kept halo row moved to the front of its buffer 40, and
# every step of every tile ~5e6 (a GEMM call, a box call, a fold call with its OpenMP fork/join, Python).
_BOX_FLOPS_PER_ELEMENT = 260.0
_COPY_FLOPS_PER_FLOAT = 40.0
_TILE_OVERHEAD_FLOPS = 5e6


def _levels_plan(hierarchy: int, box: bool) -> tuple[list[int], list[int]]:
    """(halo of each GEMM'd source tile, halo of each fold tile) in grid rows.

    box: one source (G_0) whose halo also covers the widest box; fold tiles: level k needs 3^k rows of halo.
    """
    fold = [3**k for k in range(hierarchy)]
    if box:
        return [max([1] + [3**k + 3**k // 2 for k in range(1, hierarchy)])], fold
    return fold, fold


def budget(t1: int, t2: int, tiling: BinnedTiling = BINNED_TILING) -> int:
    """Bytes of tiles allowed for a T1 x T2 problem."""
    if tiling.budget_bytes is not None:
        return int(tiling.budget_bytes)
    return int(min(max(tiling.budget_fraction * 4 * t1 * t2, tiling.min_budget_bytes), tiling.max_budget_bytes))


def _plan_cost(grid1, grid2, c: int, step: int, band: int, hierarchy: int, box: bool) -> tuple[float, int]:
    """(modelled float operations, bytes of tiles) of the plan (step, band)."""
    (h1, w1), (h2, w2) = grid1, grid2
    src, fold = _levels_plan(hierarchy, box)
    n_steps, n_bands = -(-h1 // step), -(-h2 // band)
    rows = lambda s: min(step + 2 * s, h1) * w1  # noqa: E731 - tile rows of a halo s
    cols = lambda s: min(band + 2 * s, h2) * w2  # noqa: E731
    halos = src + (fold[1:] if box else [])
    tile_bytes = 4 * sum(rows(s) * cols(s) for s in halos)
    gemm = sum(2.0 * c * h1 * w1 * cols(s) * n_bands for s in src)
    boxed = _BOX_FLOPS_PER_ELEMENT * h1 * w1 * n_bands * sum(cols(s) for s in fold[1:]) if box else 0.0
    kept = _COPY_FLOPS_PER_FLOAT * n_steps * n_bands * sum(min(2 * s, h1) * w1 * cols(s) for s in halos)
    return gemm + boxed + kept + _TILE_OVERHEAD_FLOPS * n_steps * n_bands * len(halos), tile_bytes


def binned_plan(grid1, grid2, hierarchy: int, tiling: BinnedTiling = BINNED_TILING, *, channels: int = 384,
                box: bool = True) -> tuple[int, int]:
    """``(step_rows, band_rows)``: image-1 grid rows per step and image-2 grid rows per band.

    The cheapest plan (cost model above) whose tiles fit :func:`budget`; the smallest tiles if none fits.
    """
    (h1, w1), (h2, w2) = (int(v) for v in grid1), (int(v) for v in grid2)
    limit = budget(h1 * w1, h2 * w2, tiling)
    min_step = min(h1, max(1, -(-tiling.min_gemm_rows // w1)))
    best, smallest = None, None
    for band in range(1, h2 + 1):
        if band < h2 and -(-h2 // band) == -(-h2 // (band + 1)):
            continue  # the same number of bands as band + 1: balanced bands make it band + 1's plan
        for step in range(min_step, h1 + 1):
            cost, nbytes = _plan_cost((h1, w1), (h2, w2), channels, step, band, hierarchy, box)
            if smallest is None or nbytes < smallest[0]:
                smallest = (nbytes, step, band)
            if nbytes <= limit and (best is None or cost < best[0]):
                best = (cost, step, band)
    _, step, band = best if best is not None else smallest
    n_bands = -(-h2 // band)
    return step, -(-h2 // n_bands)


class _StreamedTile:
    """A tile of G (image-1 grid rows with a halo of `halo` rows x a fixed set of image-2 columns), streamed over
    image-1 steps: the rows the previous step computed are moved to the front of the buffer (in chunks that never
    overlap their source), and only the new rows are computed, by ``compute(r0, r1, out)`` (grid rows r0..r1 into
    the ((r1 - r0) * w1, cols) view `out`): a GEMM for G_0, box sums of G_0 for the higher levels."""

    def __init__(self, compute, cols: int, w1: int, h1: int, halo: int, buf: torch.Tensor):
        self.compute, self.cols, self.w1, self.h1, self.halo, self.buf = compute, cols, w1, h1, halo, buf
        self.held = (0, 0)
        self.last: tuple[np.ndarray, int] | None = None  # this step's tile and its first grid row

    def step(self, a0: int, a1: int) -> tuple[np.ndarray, int]:
        w1, cols = self.w1, self.cols
        lo, hi = max(a0 - self.halo, 0), min(a1 + self.halo, self.h1)
        tile = self.buf[: (hi - lo) * w1 * cols].view((hi - lo) * w1, cols)
        keep = max(0, self.held[1] - lo) if self.held[1] > self.held[0] else 0
        shift = lo - self.held[0]
        if keep and shift:  # rows [lo, lo + keep) were computed by the previous step: move them to the front
            prev = self.buf[: (self.held[1] - self.held[0]) * w1 * cols].view(-1, cols)
            for r in range(0, keep, shift):  # chunks no longer than the shift: never overlapping their source
                n = min(shift, keep - r)
                tile[r * w1 : (r + n) * w1] = prev[(shift + r) * w1 : (shift + r + n) * w1]
        if lo + keep < hi:
            self.compute(lo + keep, hi, tile[keep * w1 :])
        self.held = (lo, hi)
        self.last = (tile.numpy(), lo)
        return self.last


def _gemm_rows(left: torch.Tensor, right_t: torch.Tensor, w1: int, r0: int, r1: int, out: torch.Tensor) -> None:
    torch.matmul(left[r0 * w1 : r1 * w1], right_t, out=out)


def _box_rows(nat, g0: _StreamedTile, c_lo0: int, grids: tuple, level: int, c_lo: int, c_hi: int, r0: int, r1: int,
              out: torch.Tensor) -> None:
    tile, r_lo0 = g0.last
    nat.bb_binned_box_gram(tile, r_lo0, c_lo0, *grids, level, r0, r1, c_lo, c_hi, out.numpy())


def best_buddies_binned(
    k1: np.ndarray, grid1, k2: np.ndarray, grid2, *, hierarchy: int = 2, precision: str = "fp32",
    tiling: BinnedTiling | str | None = None, level_gemms: bool = False,
):
    """Binned Best Buddies from shifted Gram tiles, never materialising the binned rows, the level maps nor S.

    For each image-2 band and image-1 step: the G_0 tile (or, below fp32, the G tile of every level from the
    rounded level maps), the higher levels' tiles by box sums of G_0 (fp32), then the C++ fold adds the
    ``1 + 8 h`` shifted terms, scales by the inverse binned norms and folds max/argmax (ties -> lowest index).

    Args:
        k1: (T1, C) float32 C-contiguous keys on grid1 = (Hp1, Wp1), T1 > 0; k2: (T2, C) on grid2, T2 > 0.
        precision: "fp32"; "fp16"/"bf16" round the level maps to that type before the Gram GEMMs.
        tiling: a preset name of :data:`TILINGS`, a `BinnedTiling`, or None (``$DINOFEAT_BINNED_TILING``, else
            "fast").
        level_gemms: in fp32 too, one GEMM per level of the level maps (made whole) instead of box sums of G_0
            (the previous method and the CUDA path's arithmetic; for comparison).

    Returns:
        ``(nn_1 int64 (T1,), sim_1 float32 (T1,), nn_2 int64 (T2,), sim_2 float32 (T2,), mask bool (T1,))``.
    """
    from .cpu import _rounded, binned_levels, native

    nat = native()
    (h1, w1), (h2, w2) = (int(v) for v in grid1), (int(v) for v in grid2)
    rs = nat.bb_binned_inv_norms(k1, h1, w1, hierarchy)
    cs = nat.bb_binned_inv_norms(k2, h2, w2, hierarchy)
    box = precision == "fp32" and not level_gemms
    if box:
        maps1, maps2 = [k1], [k2]
    else:
        rnd = (lambda x: x) if precision == "fp32" else (lambda x: _rounded(x, precision))  # noqa: E731
        maps1 = [rnd(x) for x in binned_levels(k1, grid1, hierarchy)]
        maps2 = [rnd(x) for x in binned_levels(k2, grid2, hierarchy)]
    t1, t2 = h1 * w1, h2 * w2
    nn_1 = np.full(t1, -1, dtype=np.int64)
    sim_1 = np.full(t1, -np.inf, dtype=np.float32)
    nn_2 = np.full(t2, -1, dtype=np.int64)
    sim_2 = np.full(t2, -np.inf, dtype=np.float32)
    step, band = binned_plan((h1, w1), (h2, w2), hierarchy, resolve_tiling(tiling), channels=k1.shape[1], box=box)
    src_halos, fold_halos = _levels_plan(hierarchy, box)
    rows = lambda s: min(step + 2 * s, h1) * w1  # noqa: E731 - most tile rows for a halo s
    cols = lambda s: min(band + 2 * s, h2) * w2  # noqa: E731
    left = [torch.from_numpy(np.ascontiguousarray(x)) for x in maps1]
    right_maps = [torch.from_numpy(np.ascontiguousarray(x)) for x in maps2]
    halos = src_halos + (fold_halos[1:] if box else [])
    bufs = [torch.empty(rows(s) * cols(s), dtype=torch.float32) for s in halos]  # reused by every band
    for b0 in range(0, h2, band):
        b1 = min(b0 + band, h2)
        c_lo = [max(b0 - s, 0) for s in halos]
        c_hi = [min(b1 + s, h2) for s in halos]
        tiles = [_StreamedTile(functools.partial(_gemm_rows, left[k], right_maps[k][c_lo[k] * w2 : c_hi[k] * w2].t(),
                                                 w1), (c_hi[k] - c_lo[k]) * w2, w1, h1, s, bufs[k])
                 for k, s in enumerate(src_halos)]
        for k in range(len(src_halos), len(halos)):  # box levels (fp32): from this step's G_0 tile
            level = k - len(src_halos) + 1
            box_fn = functools.partial(_box_rows, nat, tiles[0], c_lo[0], (h1, w1, h2, w2), level, c_lo[k], c_hi[k])
            tiles.append(_StreamedTile(box_fn, (c_hi[k] - c_lo[k]) * w2, w1, h1, halos[k], bufs[k]))
        for a0 in range(0, h1, step):
            a1 = min(a0 + step, h1)
            got = [t.step(a0, a1) for t in tiles]  # G_0 first: the box levels read its step tile
            nat.bb_binned_fold([g[0] for g in got], [g[1] for g in got], c_lo, h1, w1, h2, w2, a0, a1, b0, b1, rs,
                               cs, sim_1, nn_1, sim_2, nn_2)
    mask = nn_2[nn_1] == np.arange(t1)
    return nn_1, sim_1, nn_2, sim_2, mask
