"""CPU implementation of the kernels: the C++/OpenMP extension ``dinofeat._native`` plus torch's BLAS.

Functions here take host float32 arrays (the dispatcher validates and converts user input) and return numpy
arrays. Best Buddies runs the GEMM of each chunk of ``S`` with the BLAS numpy or torch ships (see
:func:`gemm_backend`) into one reused buffer and hands it to the C++ epilogue; rows are never copied or normalised: the
epilogue scales ``S[i, j]`` by ``1 / max(|x1_i|, 1e-8)`` and ``1 / max(|x2_j|, 1e-8)``, so the extra memory is
one chunk plus O(T1 + T2).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import BackendUnavailableError
from .reference import default_chunk

_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def native():
    """The compiled module ``dinofeat._native`` (BackendUnavailableError if the package was built without it)."""
    try:
        from .. import _native
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


def _gemm(a: np.ndarray, b: np.ndarray, rows: int):
    """Returns ``matmul(i0, i1) -> a[i0:i1] @ b.T`` written into one reused (rows, T2) float32 buffer."""
    buf = np.empty((rows, b.shape[0]), dtype=np.float32)
    if gemm_backend() == "torch":
        ta, tbt, tbuf = torch.from_numpy(a), torch.from_numpy(b).t(), torch.from_numpy(buf)

        def mm(i0: int, i1: int) -> np.ndarray:
            torch.matmul(ta[i0:i1], tbt, out=tbuf[: i1 - i0])
            return buf[: i1 - i0]
    else:
        bt = b.T

        def mm(i0: int, i1: int) -> np.ndarray:
            return np.matmul(a[i0:i1], bt, out=buf[: i1 - i0])

    return mm


def _rounded(x: np.ndarray, precision: str) -> np.ndarray:
    """float32 copy of x rounded to float16 / bfloat16."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(_HALF[precision]).float().numpy()


def log_bin(x: np.ndarray, num_patches: tuple[int, int], hierarchy: int, *, return_norm: bool = False):
    """Log-binning on the CPU.

    Args:
        x: (B, T, C) float32 C-contiguous.
        num_patches: (Hp, Wp) with ``Hp * Wp == T``.
        hierarchy: levels h >= 1.
        return_norm: also compute the L2 norm of each output row.

    Returns:
        ``(out (B, T, C * (1 + 8 h)) float32, norm (B, T) float32 or None)``.
    """
    out, norm = native().log_bin(
        x, int(num_patches[0]), int(num_patches[1]), int(hierarchy), bool(return_norm)
    )
    return out, norm


def best_buddies(d1: np.ndarray, d2: np.ndarray, *, precision: str = "fp32", chunk: int | None = None):
    """Chunked Best Buddies on the CPU.

    Args:
        d1: (T1, C) float32 C-contiguous, T1 > 0.
        d2: (T2, C) float32 C-contiguous, T2 > 0.
        precision: "fp32"; "fp16"/"bf16" round the normalised rows to that type first (parity with the GPU
            path; on the CPU this needs normalised float32 copies of both inputs and is not faster).
        chunk: rows of d1 per GEMM chunk (default: about 4 MB of S).

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
    step = int(chunk) if chunk else default_chunk(t1, t2)
    nn_1 = np.empty(t1, dtype=np.int64)
    sim_1 = np.empty(t1, dtype=np.float32)
    nn_2 = np.full(t2, -1, dtype=np.int64)
    sim_2 = np.full(t2, -np.inf, dtype=np.float32)
    matmul = _gemm(a, b, min(step, t1))
    for i0 in range(0, t1, step):
        i1 = min(i0 + step, t1)
        s = matmul(i0, i1)
        rs = None if row_scale is None else row_scale[i0:i1]
        nat.bb_epilogue(s, i0, rs, col_scale, sim_1[i0:i1], nn_1[i0:i1], sim_2, nn_2)
    mask = nn_2[nn_1] == np.arange(t1)
    return nn_1, sim_1, nn_2, sim_2, mask
