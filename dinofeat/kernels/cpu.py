"""CPU implementation of the kernels: the C++/OpenMP extension ``dinofeat._native`` plus torch's BLAS.

Functions here take host float32 arrays (the dispatcher validates and converts user input) and return numpy
arrays. Best Buddies runs the GEMM of each tile of ``S`` (rows of d1 x at most
:data:`TILE_COLS` rows of d2) with the BLAS numpy or torch ships (see :func:`gemm_backend`) into one reused buffer and
hands it to the C++ epilogue; rows are never copied or normalised: the epilogue scales ``S[i, j]`` by
``1 / max(|x1_i|, 1e-8)`` and ``1 / max(|x2_j|, 1e-8)``, so the extra memory is one tile (~1 MiB), the BLAS's
packing workspace for one tile-sized GEMM, and O(T1 + T2).
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import torch

from ..errors import BackendUnavailableError

_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def native():
    """The compiled module ``dinofeat._native`` (BackendUnavailableError if the package was built without it)."""
    try:
        # importlib: the compiled module belongs to this layer, while `from .. import` would name the package root.
        _native = importlib.import_module("dinofeat._native")
    except ImportError as e:
        raise BackendUnavailableError(
            "impl='cpu' needs the compiled extension dinofeat._native, which did not import "
            f"({e}); reinstall with `pip install .` (needs a C++17 compiler) or use impl='reference'"
        ) from e
    return _native


def gemm_backend() -> str:
    """BLAS used for the chunk GEMMs: "torch" (default; MKL on x86 wheels) or "numpy" (its OpenBLAS).

    ``DINOFEAT_CPU_GEMM=numpy`` switches. Measured on the 2-core project machine: both ~1.1 s for 4565x3025x6528,
    but at 18921x18921x384 (short chunks) torch 3.3 s vs numpy 11.8 s.
    """
    forced = os.environ.get("DINOFEAT_CPU_GEMM", "").strip().lower()
    return "numpy" if forced == "numpy" else "torch"


# Tiling of S (defaults; see best_buddies). One tile of S is the only O(T1 * T2)-ish buffer of the call, and the BLAS
# packs a K-panel of the tile's d2 rows, so bounding the tile *width* also bounds the BLAS workspace. Measured at
# 4565x3025x6528 on the 2-core machine (anonymous peak RSS growth of the call, fresh process, code paths warmed):
# one 346x3025 chunk (the old default) 8.6 MiB, 259x1009 tiles 2.7 MiB, 519x505 tiles 2.1 MiB; time: 519x505 tiles
# ran at 0.95x a dense matmul + two max passes (median of 7, interleaved), 259-row tiles at ~1.12-1.17x.
TILE_COLS = 512  # at most this many columns of S per tile (T2 is split into equal tiles)
TILE_BYTES = 1 << 20  # rows per tile: about this many bytes of S (~2% of the dense S of 4565x3025) ...
TILE_MIN_ROWS = 256  # ... but at least this many (short GEMMs re-read d2 too often), at most T1


def tile_shape(t1: int, t2: int, chunk: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the S tiles: ``chunk`` (or the default) rows of d1 by at most :data:`TILE_COLS` of d2."""
    n_col_tiles = -(-t2 // TILE_COLS)
    cols = -(-t2 // n_col_tiles)
    rows = int(chunk) if chunk else max(TILE_MIN_ROWS, TILE_BYTES // (4 * cols))
    return max(1, min(rows, t1)), cols


def _gemm(a: np.ndarray, b: np.ndarray, rows: int, cols: int):
    """Returns ``matmul(i0, i1, j0, j1) -> a[i0:i1] @ b[j0:j1].T`` written into one reused float32 buffer of
    ``rows * cols`` elements (a C-contiguous view of its head; nothing is allocated per tile)."""
    buf = np.empty(rows * cols, dtype=np.float32)
    if gemm_backend() == "torch":
        ta, tb, tbuf = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(buf)

        def mm(i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
            r, c = i1 - i0, j1 - j0
            torch.matmul(ta[i0:i1], tb[j0:j1].t(), out=tbuf[: r * c].view(r, c))
            return buf[: r * c].reshape(r, c)
    else:

        def mm(i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
            r, c = i1 - i0, j1 - j0
            return np.matmul(a[i0:i1], b[j0:j1].T, out=buf[: r * c].reshape(r, c))

    return mm


def _rounded(x: np.ndarray, precision: str) -> np.ndarray:
    """float32 copy of x rounded to float16 / bfloat16."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(_HALF[precision]).float().numpy()


def log_bin(x: np.ndarray, num_patches: tuple[int, int], hierarchy: int, *, return_norm: bool = False,
            out: np.ndarray | None = None):
    """Log-binning on the CPU.

    Args:
        x: (B, T, C) float32 C-contiguous.
        num_patches: (Hp, Wp) with ``Hp * Wp == T``.
        hierarchy: levels h >= 1.
        return_norm: also compute the L2 norm of each output row.
        out: (B, T, C * (1 + 8 h)) float32 C-contiguous buffer to write into (default: a new array).

    Returns:
        ``(out (B, T, C * (1 + 8 h)) float32, norm (B, T) float32 or None)``.
    """
    out, norm = native().log_bin(
        x, int(num_patches[0]), int(num_patches[1]), int(hierarchy), bool(return_norm), out
    )
    return out, norm


def best_buddies(d1: np.ndarray, d2: np.ndarray, *, precision: str = "fp32", chunk: int | None = None):
    """Tiled Best Buddies on the CPU.

    S is computed one (rows x cols) tile at a time (:func:`tile_shape`): for each chunk of ``rows`` rows of d1,
    the column tiles in increasing order. The C++ epilogue folds each tile into the running column maxima (strict
    '>', rows in increasing order: ties -> lowest row) and returns the tile's row maxima (first column on ties),
    which are merged into the row results with a strict '>' in increasing column order (ties -> lowest column).

    Args:
        d1: (T1, C) float32 C-contiguous, T1 > 0.
        d2: (T2, C) float32 C-contiguous, T2 > 0.
        precision: "fp32"; "fp16"/"bf16" round the normalised rows to that type first (parity with the GPU
            path; on the CPU this needs normalised float32 copies of both inputs and is not faster).
        chunk: rows of d1 per tile (default: about 1 MiB of S per tile, at least 256 rows; 519 x 505 at
            4565 x 3025).

    Returns:
        ``(nn_1 int64 (T1,), sim_1 float32 (T1,), nn_2 int64 (T2,), sim_2 float32 (T2,), mask bool (T1,))``.
    """
    nat = native()
    t1, t2 = d1.shape[0], d2.shape[0]
    if precision == "fp32":
        a, b = d1, d2
        row_scale = (1.0 / nat.row_norms(d1)).astype(np.float32)
        col_scale = (1.0 / nat.row_norms(d2)).astype(np.float32)
    else:  # normalise, round to the GEMM type, accumulate in float32
        a, b = (_rounded(x / nat.row_norms(x)[:, None], precision) for x in (d1, d2))
        row_scale = col_scale = None
    rows, cols = tile_shape(t1, t2, chunk)
    nn_1 = np.empty(t1, dtype=np.int64)
    sim_1 = np.empty(t1, dtype=np.float32)
    nn_2 = np.full(t2, -1, dtype=np.int64)
    sim_2 = np.full(t2, -np.inf, dtype=np.float32)
    # row maxima of one tile (not the first of its rows), merged into sim_1 / nn_1
    tile_val = np.empty(rows, dtype=np.float32)
    tile_idx = np.empty(rows, dtype=np.int64)
    upd = np.empty(rows, dtype=np.bool_)
    matmul = _gemm(a, b, rows, cols)
    for i0 in range(0, t1, rows):
        i1 = min(i0 + rows, t1)
        r = i1 - i0
        rs = None if row_scale is None else row_scale[i0:i1]
        for j0 in range(0, t2, cols):
            j1 = min(j0 + cols, t2)
            s = matmul(i0, i1, j0, j1)
            cs = None if col_scale is None else col_scale[j0:j1]
            if j0 == 0:  # first tile of these rows: its maxima are the running ones
                nat.bb_epilogue(s, i0, rs, cs, sim_1[i0:i1], nn_1[i0:i1], sim_2[j0:j1], nn_2[j0:j1])
                continue
            tv, ti, up = tile_val[:r], tile_idx[:r], upd[:r]
            nat.bb_epilogue(s, i0, rs, cs, tv, ti, sim_2[j0:j1], nn_2[j0:j1])
            np.greater(tv, sim_1[i0:i1], out=up)
            np.add(ti, j0, out=ti)  # tile-local -> global column
            np.copyto(sim_1[i0:i1], tv, where=up)
            np.copyto(nn_1[i0:i1], ti, where=up)
    mask = nn_2[nn_1] == np.arange(t1)
    return nn_1, sim_1, nn_2, sim_2, mask


# ------------------------------------------------------------------ binned Best Buddies (shifted Gram tiles)


def binned_levels(x: np.ndarray, grid, hierarchy: int) -> list[np.ndarray]:
    """Level maps ``[x, box3(x), ...]`` of a (T, C) float32 map, each (T, C) float32 (log_bin's own box average)."""
    nat = native()
    return [x] + [nat.box_average(x[None], int(grid[0]), int(grid[1]), k)[0] for k in range(1, hierarchy)]


