"""Plain-torch reference implementations of the kernels (the oracle the fast paths are tested against).

Both functions take already-validated torch tensors (see :mod:`dinofeat.kernels.dispatch` for the public,
checking entry points) and run on whatever device the tensors live on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COS_EPS = 1e-8  # torch.nn.CosineSimilarity's default eps: rows are divided by max(||x||_2, eps)

_GEMM_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def num_bins(hierarchy: int) -> int:
    """Number of spatial bins of a log-bin descriptor: ``1 + 8 * hierarchy`` (17 for the default 2)."""
    return 1 + 8 * hierarchy


def bin_offsets(hierarchy: int) -> list[tuple[int, int, int]]:
    """The ``(level, dy, dx)`` of every bin, in output order.

    For level ``k`` the offsets are ``(-3**k, 0, 3**k)`` for ``dy`` (outer) and ``dx`` (inner); the centre is
    kept only at level 0 (bin 4 is the cell itself).
    """
    out = []
    for k in range(hierarchy):
        s = 3**k
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                if k > 0 and dy == 0 and dx == 0:
                    continue
                out.append((k, dy, dx))
    return out


def box_average(maps: torch.Tensor, level: int) -> torch.Tensor:
    """Average pool of a channels-last map with a ``3**level`` box, stride 1, valid-count normalised.

    Args:
        maps: (B, Hp, Wp, C) float tensor.
        level: 0 returns ``maps`` itself.

    Returns:
        (B, Hp, Wp, C): ``AvgPool2d(3**level, 1, 3**level // 2, count_include_pad=False)`` of ``maps``.
    """
    if level == 0:
        return maps
    k = 3**level
    pooled = F.avg_pool2d(maps.permute(0, 3, 1, 2), k, stride=1, padding=k // 2, count_include_pad=False)
    return pooled.permute(0, 2, 3, 1)


def log_bin(
    desc: torch.Tensor,
    num_patches: tuple[int, int],
    hierarchy: int = 2,
    *,
    out_dtype: torch.dtype | None = None,
    return_norm: bool = False,
):
    """Log-binned descriptors, exactly as the original ``ViTExtractor._log_bin`` (vectorised).

    Args:
        desc: (B, T, C) float tensor, tokens row-major over the (Hp, Wp) grid.
        num_patches: (Hp, Wp) with ``Hp * Wp == T``.
        hierarchy: number of levels h; the output has ``1 + 8 h`` bins.
        out_dtype: dtype of the result (default: ``desc.dtype``). Computation is in float32.
        return_norm: also return the L2 norm of every output row (float32, computed before the output cast).

    Returns:
        (B, T, C * (1 + 8 h)) with index ``bin * C + c``; with ``return_norm`` a tuple ``(binned, norm (B, T))``.
    """
    b, t, c = desc.shape
    hp, wp = int(num_patches[0]), int(num_patches[1])
    out_dtype = desc.dtype if out_dtype is None else out_dtype
    offsets = bin_offsets(hierarchy)
    nb = len(offsets)
    maps = desc.to(torch.float32).reshape(b, hp, wp, c)
    levels = [box_average(maps, k) for k in range(hierarchy)] if b * t * c else [maps] * hierarchy
    out = torch.empty((b, hp, wp, nb, c), dtype=torch.float32, device=desc.device)
    ys = torch.arange(hp, device=desc.device)
    xs = torch.arange(wp, device=desc.device)
    for i, (k, dy, dx) in enumerate(offsets):  # loop over bins, never over cells
        yi = (ys + dy).clamp(0, max(hp - 1, 0))
        xi = (xs + dx).clamp(0, max(wp - 1, 0))
        out[:, :, :, i, :] = levels[k].index_select(1, yi).index_select(2, xi)
    out = out.reshape(b, t, nb * c)
    norm = torch.linalg.vector_norm(out, dim=-1) if return_norm else None
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return (out, norm) if return_norm else out


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||_2, 1e-8)`` per row, in float32 (torch 2.x ``CosineSimilarity`` semantics)."""
    x = x.to(torch.float32)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COS_EPS)
    return x / norm


def default_chunk(t1: int, t2: int, budget_bytes: int = 4 << 20, min_rows: int = 256) -> int:
    """Rows of desc1 per similarity chunk: about ``budget_bytes`` of fp32 S, but at least ``min_rows``.

    The floor keeps the GEMM efficient when T2 is large and C small (each chunk re-reads all of desc2): at
    18921 x 18921 x 384, 55-row chunks took about twice as long as 256-row ones on the 2-core machine.
    """
    rows = max(min_rows, budget_bytes // max(4 * t2, 1))
    return int(max(1, min(max(t1, 1), rows)))


def best_buddies(
    desc1: torch.Tensor,
    desc2: torch.Tensor,
    *,
    precision: str = "fp32",
    chunk: int | None = None,
):
    """Mutual nearest neighbours under cosine similarity, one chunk of the similarity matrix at a time.

    Args:
        desc1: (T1, C) float tensor.
        desc2: (T2, C) float tensor on the same device.
        precision: "fp32" (default), or "fp16"/"bf16": normalised rows are rounded to that type and the
            products accumulated in float32.
        chunk: rows of desc1 per chunk of S (default: about 4 MB of S).

    Returns:
        ``(nn_1 (T1,) int64, sim_1 (T1,) float32, nn_2 (T2,) int64, sim_2 (T2,) float32, mask (T1,) bool)``.
        Ties go to the lowest index. With T2 == 0 every ``nn_1`` is -1 and ``sim_1`` is -inf (and the
        symmetric rule holds for T1 == 0).
    """
    dev = desc1.device
    t1, t2 = desc1.shape[0], desc2.shape[0]
    nn_1 = torch.full((t1,), -1, dtype=torch.int64, device=dev)
    sim_1 = torch.full((t1,), float("-inf"), dtype=torch.float32, device=dev)
    nn_2 = torch.full((t2,), -1, dtype=torch.int64, device=dev)
    sim_2 = torch.full((t2,), float("-inf"), dtype=torch.float32, device=dev)
    if t1 == 0 or t2 == 0:
        return nn_1, sim_1, nn_2, sim_2, torch.zeros((t1,), dtype=torch.bool, device=dev)
    n1 = normalize_rows(desc1)
    n2 = normalize_rows(desc2)
    gemm = _GEMM_DTYPES[precision]
    if gemm != torch.float32:  # round to the GEMM input type, accumulate in float32
        n1 = n1.to(gemm).to(torch.float32)
        n2 = n2.to(gemm).to(torch.float32)
    n2t = n2.t()
    step = int(chunk) if chunk else default_chunk(t1, t2)
    for i0 in range(0, t1, step):
        s = n1[i0 : i0 + step] @ n2t  # (rows, T2): the only piece of S alive
        rmax, rarg = s.max(dim=1)  # first index on ties
        nn_1[i0 : i0 + step] = rarg
        sim_1[i0 : i0 + step] = rmax
        cmax, carg = s.max(dim=0)
        upd = cmax > sim_2  # strict: earlier chunks (lower rows) win ties
        sim_2 = torch.where(upd, cmax, sim_2)
        nn_2 = torch.where(upd, carg + i0, nn_2)
    mask = nn_2[nn_1] == torch.arange(t1, device=dev)
    return nn_1, sim_1, nn_2, sim_2, mask


# ------------------------------------------------------------------ binned Best Buddies (shifted Gram matrices)


def shifted_cells(num_patches: tuple[int, int], hierarchy: int, device=None) -> list[tuple[int, torch.Tensor]]:
    """For every bin in output order, ``(level, cells)``: cells (T,) int64 is the clamped cell ``t + o_b`` that
    bin b of token t reads (SEMANTICS.md §4)."""
    hp, wp = int(num_patches[0]), int(num_patches[1])
    ys = torch.arange(hp, device=device)
    xs = torch.arange(wp, device=device)
    out = []
    for k, dy, dx in bin_offsets(hierarchy):
        yi = (ys + dy).clamp(0, max(hp - 1, 0))
        xi = (xs + dx).clamp(0, max(wp - 1, 0))
        out.append((k, (yi[:, None] * wp + xi[None, :]).reshape(-1)))
    return out


def level_maps(desc: torch.Tensor, num_patches: tuple[int, int], hierarchy: int) -> list[torch.Tensor]:
    """The level maps of a log-bin descriptor: ``[L_0, ..., L_{h-1}]``, each (T, C) float32 (L_0 = desc)."""
    hp, wp = int(num_patches[0]), int(num_patches[1])
    maps = desc.to(torch.float32).reshape(1, hp, wp, -1)
    return [box_average(maps, k).reshape(hp * wp, -1) for k in range(hierarchy)]


def gather_binned_rows(levels: list[torch.Tensor], num_patches, indices: torch.Tensor, hierarchy: int):
    """Binned rows of the tokens ``indices`` from the level maps: (N,) -> (N, C * (1 + 8 h)), as log_bin's rows."""
    parts = [levels[k][cells[indices]] for k, cells in shifted_cells(num_patches, hierarchy, indices.device)]
    return torch.cat(parts, dim=1) if parts else levels[0][:0]


def binned_inv_norms(levels: list[torch.Tensor], num_patches, hierarchy: int) -> torch.Tensor:
    """(T,) float32 ``1 / max(||binned row||, 1e-8)``, the squared norms of the level maps summed over the bins."""
    sq = [(lv.double() ** 2).sum(dim=1) for lv in levels]
    total = sum(sq[k][cells] for k, cells in shifted_cells(num_patches, hierarchy, levels[0].device))
    return 1.0 / total.sqrt().to(torch.float32).clamp_min(COS_EPS)


def best_buddies_binned(
    keys1: torch.Tensor,
    num_patches1: tuple[int, int],
    keys2: torch.Tensor,
    num_patches2: tuple[int, int],
    *,
    hierarchy: int = 2,
    precision: str = "fp32",
):
    """``best_buddies(log_bin(keys1), log_bin(keys2))`` from h dense Gram matrices of the level maps (plain torch).

    ``S[i, j] = sum_b G_l(b)[clamp1(i + o_b), clamp2(j + o_b)] / (|binned1[i]| |binned2[j]|)`` with
    ``G_l = L1_l @ L2_l.T``. Memory is O(h * T1 * T2): this is the oracle, not the fast path.

    Args:
        keys1: (T1, C) float tensor on the (Hp1, Wp1) grid ``num_patches1``; keys2: (T2, C) likewise.
        precision: "fp32"; "fp16"/"bf16" round the level maps to that type before the Grams (fp32 accumulation).

    Returns:
        ``(nn_1, sim_1, nn_2, sim_2, mask)`` as :func:`best_buddies`.
    """
    dev = keys1.device
    t1, t2 = keys1.shape[0], keys2.shape[0]
    l1 = level_maps(keys1, num_patches1, hierarchy)
    l2 = level_maps(keys2, num_patches2, hierarchy)
    rs = binned_inv_norms(l1, num_patches1, hierarchy)
    cs = binned_inv_norms(l2, num_patches2, hierarchy)
    gemm = _GEMM_DTYPES[precision]
    if gemm != torch.float32:
        l1 = [x.to(gemm).to(torch.float32) for x in l1]
        l2 = [x.to(gemm).to(torch.float32) for x in l2]
    grams = [a @ b.t() for a, b in zip(l1, l2, strict=True)]
    d = torch.zeros((t1, t2), dtype=torch.float32, device=dev)
    for (k, c1), (_, c2) in zip(
        shifted_cells(num_patches1, hierarchy, dev), shifted_cells(num_patches2, hierarchy, dev), strict=True
    ):
        d += grams[k][c1[:, None], c2[None, :]]  # one gather pass
    s = d * rs[:, None] * cs[None, :]
    sim_1, nn_1 = s.max(dim=1)
    sim_2, nn_2 = s.max(dim=0)
    mask = nn_2[nn_1] == torch.arange(t1, device=dev)
    return nn_1, sim_1, nn_2, sim_2, mask
