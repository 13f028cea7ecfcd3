"""Public, checking entry points of the kernels: ``log_bin`` and ``best_buddies``.

Every check on user input happens here, once; the implementations (``reference``, ``cpu``, ``cuda``) receive
validated, contiguous arrays. Results come back as the caller's array kind on the caller's device.

``impl``:
    * ``"auto"`` (default): numpy / torch-CPU inputs -> ``"cpu"`` if ``dinofeat._native`` imports, else
      ``"reference"``; torch-CUDA / CuPy inputs -> ``"cuda"``.
    * ``"reference"``: plain torch (:mod:`dinofeat.kernels.reference`) on the input's device.
    * ``"cpu"``: the C++ extension ``dinofeat._native`` (device inputs are copied to the host and back).
    * ``"cuda"``: CuPy ``RawModule`` kernels (host inputs are copied to the current GPU and back).

Dtypes: float32, float16, bfloat16 (torch only) and float64. float64 is accepted and **cast to float32**
(all implementations compute in float32, as the original does); the log_bin output then defaults to float32.
Non-contiguous inputs are made contiguous (a copy), never rejected.

Implementations: :data:`KERNELS` is the one table ``{op: {implementation: function}}`` the public functions
dispatch through (ops ``log_bin``, ``best_buddies``, ``best_buddies_binned``, ``log_bin_rows``; implementations
``reference``, ``cpu``, ``cuda``). Each entry takes validated, contiguous arrays of the caller's kind and hands back
the caller's kind: an implementation's conversions live in its entry, the checks in the public function. The
``cpu`` and ``cuda`` modules are imported on an entry's first call.

Limits: :data:`MAX_HIERARCHY` and :data:`BINNED_MAX_HIERARCHY` are ``DF_LOG_BIN_MAX_LEVELS`` /
``DF_BBB_MAX_LEVELS`` of the kernel headers, read from them (:mod:`dinofeat.kernels.headers`).

NaN / Inf: host inputs are checked before computing (`InputError`). Device inputs (torch CUDA, CuPy) are never
synchronised for it: `best_buddies` computes per-row sums on the device and reports through
:meth:`BestBuddies.check` (call it where you synchronise anyway; `find_correspondences` does); `log_bin` does not
check device inputs (a NaN / Inf propagates into every output bin that reads it). `best_buddies_binned` defers
its check of device inputs exactly as `best_buddies` does.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..config import MATCH_PRECISIONS
from ..errors import BackendUnavailableError, InputError
from . import _arrays as A
from . import reference
from .headers import define

IMPLS = ("auto", "reference", "cpu", "cuda")
PRECISIONS = MATCH_PRECISIONS  # declared in dinofeat.config
MAX_HIERARCHY = define("DF_LOG_BIN_MAX_LEVELS")  # log_bin, log_bin_rows (log_bin_common.cuh: 12)
BINNED_MAX_HIERARCHY = define("DF_BBB_MAX_LEVELS")  # best_buddies_binned (bb_binned_common.cuh: 4)


class BestBuddies(NamedTuple):
    """Result of :func:`best_buddies`; unpacks as ``nn_1, sim_1, nn_2, sim_2, mask``.

    Attributes:
        nn_1: (T1,) int64, ``argmax_j S[i, j]`` (lowest j on ties; -1 when T2 == 0).
        sim_1: (T1,) float32, ``max_j S[i, j]`` (-inf when T2 == 0).
        nn_2: (T2,) int64, ``argmax_i S[i, j]`` (lowest i on ties; -1 when T1 == 0).
        sim_2: (T2,) float32, ``max_i S[i, j]`` (-inf when T1 == 0).
        mask: (T1,) bool, ``nn_2[nn_1[i]] == i`` (False when T2 == 0).
    """

    nn_1: object
    sim_1: object
    nn_2: object
    sim_2: object
    mask: object

    def check(self) -> BestBuddies:
        """Raise `InputError` if a device input held a NaN or an Inf (synchronises once); returns self.
        Host inputs were checked before computing: a no-op for them."""
        for pending in getattr(self, "_pending", ()):
            pending.raise_if_bad()
        return self


class _DeviceBestBuddies(BestBuddies):
    """`BestBuddies` of device inputs, carrying their deferred finiteness checks (``_pending``)."""


def _with_pending(values, pending: list) -> BestBuddies:
    pending = [p for p in pending if p is not None]
    if not pending:
        return BestBuddies(*values)
    res = _DeviceBestBuddies(*values)
    res._pending = tuple(pending)
    return res


@functools.cache
def native_available() -> bool:
    """True if the compiled extension ``dinofeat._native`` imports."""
    from .cpu import native

    try:
        native()
    except BackendUnavailableError:
        return False
    return True


def _resolve_impl(impl: str, origin: A.Origin) -> str:
    if impl not in IMPLS:
        raise InputError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if origin.on_gpu:
        return "cuda"
    return "cpu" if native_available() else "reference"


def _as_int(name: str, v) -> int:
    if isinstance(v, bool):
        raise InputError(f"{name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {v!r}") from None


def _check_num_patches(num_patches, t: int, shape) -> tuple[int, int]:
    try:
        vals = [num_patches[0], num_patches[1]]
        n = len(num_patches)
    except (TypeError, IndexError, KeyError):
        raise InputError(f"num_patches must be a pair (Hp, Wp), got {num_patches!r}") from None
    if n != 2:
        raise InputError(f"num_patches must be a pair (Hp, Wp), got {n} values: {num_patches!r}")
    hp, wp = (_as_int("num_patches", v) for v in vals)
    if hp < 0 or wp < 0:
        raise InputError(f"num_patches must be non-negative, got (Hp, Wp) = ({hp}, {wp})")
    if hp * wp != t:
        raise InputError(
            f"num_patches (Hp, Wp) = ({hp}, {wp}) gives Hp*Wp = {hp * wp} cells, but desc has T = {t} tokens "
            f"(desc shape {tuple(shape)}); pass the patch grid the descriptors were extracted on"
        )
    return hp, wp


def _check_hierarchy(hierarchy, most: int) -> int:
    """``hierarchy`` as an int in 1..most (log_bin: :data:`MAX_HIERARCHY`; binned: :data:`BINNED_MAX_HIERARCHY`)."""
    if (
        isinstance(hierarchy, bool)
        or not isinstance(hierarchy, (int, np.integer))
        or not 1 <= int(hierarchy) <= most
    ):
        raise InputError(f"hierarchy must be an integer in 1..{most}, got {hierarchy!r}")
    return int(hierarchy)


def _check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _contiguous(x, origin: A.Origin):
    if origin.kind == "torch":
        return x.contiguous()
    if origin.kind == "numpy":
        return np.ascontiguousarray(x)
    import cupy as cp

    return cp.ascontiguousarray(x)



# ------------------------------------------------------------------------------ the implementation table
# Every entry takes validated, contiguous arrays of the caller's kind (their Origin `o` beside them) and returns the
# caller's kind on the caller's device. The cpu / cuda modules load on first use (their compiled parts, the C++
# module and the CuPy RawModule, later still: on their first call).


def _cpu():
    from . import cpu

    return cpu


def _cpu_binned():
    from . import cpu_binned

    return cpu_binned


def _cuda():
    from . import cuda

    return cuda


def _log_bin_reference(desc, o, in_name, grid, hierarchy, out_name, return_norm, out):
    x = A.to_torch(desc, o)
    if x.dtype == torch.float64:
        x = x.to(torch.float32)
    res = reference.log_bin(x, grid, hierarchy, out_dtype=A.torch_dtype(out_name), return_norm=return_norm)
    res, norm = res if return_norm else (res, None)
    return A.from_torch(res, o), (A.from_torch(norm, o) if return_norm else None)


def _log_bin_cpu(desc, o, in_name, grid, hierarchy, out_name, return_norm, out):
    direct = out is not None and out_name == "float32" and not o.on_gpu  # the C++ writes into the caller's buffer
    target = (out.numpy() if o.kind == "torch" else out) if direct else None
    res, norm = _cpu().log_bin(A.to_numpy_f32(desc, o), grid, hierarchy, return_norm=return_norm, out=target)
    if direct:
        res = out
    else:
        res = _cast_host(res, out_name, o)
        res = A.from_numpy(res, o) if not isinstance(res, torch.Tensor) else _place(res, o)
    return res, (A.from_numpy(norm, o) if norm is not None else None)


def _log_bin_cuda(desc, o, in_name, grid, hierarchy, out_name, return_norm, out):
    return _cuda().log_bin_any(desc, o, in_name, grid, hierarchy, out_name, return_norm)


def _best_buddies_reference(x1, x2, o, precision, chunk):
    res = reference.best_buddies(A.to_torch(x1, o), A.to_torch(x2, o), precision=precision, chunk=chunk)
    return [A.from_torch(r, o) for r in res]


def _best_buddies_cpu(x1, x2, o, precision, chunk):
    res = _cpu().best_buddies(A.to_numpy_f32(x1, o), A.to_numpy_f32(x2, o), precision=precision, chunk=chunk)
    return [A.from_numpy(r, o) for r in res]


def _best_buddies_cuda(x1, x2, o, precision, chunk):
    return _cuda().best_buddies_any(x1, x2, o, precision, chunk)


def _binned_reference(k1, grid1, k2, grid2, o, hierarchy, precision, tiling):
    res = reference.best_buddies_binned(A.to_torch(k1, o), grid1, A.to_torch(k2, o), grid2, hierarchy=hierarchy,
                                        precision=precision)
    return [A.from_torch(r, o) for r in res]


def _binned_cpu(k1, grid1, k2, grid2, o, hierarchy, precision, tiling):
    res = _cpu_binned().best_buddies_binned(A.to_numpy_f32(k1, o), grid1, A.to_numpy_f32(k2, o), grid2,
                                            hierarchy=hierarchy, precision=precision, tiling=tiling)
    return [A.from_numpy(r, o) for r in res]


def _binned_cuda(k1, grid1, k2, grid2, o, hierarchy, precision, tiling):
    return _cuda().best_buddies_binned_any(k1, grid1, k2, grid2, o, hierarchy, precision)


def _levels_reference(desc, o, x, grid, hierarchy):
    """The level maps (torch, on x's device) log_bin_rows gathers from; ``x`` is desc as torch."""
    return reference.level_maps(x, grid, hierarchy)


def _levels_cpu(desc, o, x, grid, hierarchy):
    return [torch.from_numpy(m).to(x.device) for m in _cpu().binned_levels(A.to_numpy_f32(desc, o), grid, hierarchy)]


KERNELS: dict[str, dict[str, Callable]] = {
    "log_bin": {"reference": _log_bin_reference, "cpu": _log_bin_cpu, "cuda": _log_bin_cuda},
    "best_buddies": {"reference": _best_buddies_reference, "cpu": _best_buddies_cpu, "cuda": _best_buddies_cuda},
    "best_buddies_binned": {"reference": _binned_reference, "cpu": _binned_cpu, "cuda": _binned_cuda},
    # the rows are gathered with torch; "cuda" makes the level maps with the reference's box average on the device
    "log_bin_rows": {"reference": _levels_reference, "cpu": _levels_cpu, "cuda": _levels_reference},
}


# ------------------------------------------------------------------------------------------- log_bin


def log_bin(
    desc, num_patches, hierarchy: int = 2, *, out_dtype=None, return_norm: bool = False, impl: str = "auto",
    out=None,
):
    """Log-binned dense descriptors (the original ``_log_bin``), for a batch of token maps.

    Every output row concatenates ``1 + 8 h`` spatial bins of C channels: for level k in 0..h-1 and offsets
    ``dy, dx`` in ``(-3**k, 0, 3**k)`` (dy outer, skipping the centre for k > 0), the ``3**k``-box average
    (valid-count normalised) of the map at the clamped cell ``(y + dy, x + dx)``.

    Args:
        desc: (B, T, C) or (T, C) descriptors, tokens row-major over the grid; numpy, torch (CPU/CUDA) or CuPy;
            float32, float16, bfloat16 (torch) or float64 (cast to float32).
        num_patches: (Hp, Wp) with ``Hp * Wp == T``.
        hierarchy: number of levels h >= 1 (the original uses 2: 17 bins).
        out_dtype: float32, float16 or bfloat16 (torch only); default: the input dtype (float64 -> float32).
        return_norm: also return the L2 norm of every output row, float32 (computed in float32 before the cast).
        impl: "auto" | "reference" | "cpu" | "cuda" (see module docstring).
        out: optional C-contiguous buffer of the result's shape, dtype, kind and device, written and returned
            (reusing one keeps the first-touch page faults of a new 100+ MB array off the hot path; the C++
            path writes into it directly, the others copy).

    Returns:
        (B, T, C * (1 + 8 h)) (or (T, C * (1 + 8 h)) for 2-D input), index ``bin * C + c``, same array kind and
        device as ``desc`` (``out`` when given); with ``return_norm`` a tuple ``(binned, norm)`` with norm (B, T)
        (or (T,)).

    Raises:
        InputError: wrong type, ndim, dtype, ``Hp * Wp != T``, bad hierarchy/out_dtype/impl, NaN or Inf.
        BackendUnavailableError: ``impl`` names a backend that is not installed or has no device.
    """
    origin = A.origin_of("desc", desc)
    A.check_ndim("desc", desc, (2, 3), "(B, T, C) or (T, C)")
    in_name = A.check_float("desc", desc)
    squeeze = desc.ndim == 2
    if squeeze:
        desc = desc[None]
    b, t, c = (int(v) for v in desc.shape)
    grid = _check_num_patches(num_patches, t, desc.shape[1:] if squeeze else desc.shape)
    hierarchy = _check_hierarchy(hierarchy, MAX_HIERARCHY)
    out_name = A.resolve_out_dtype(out_dtype, in_name, origin)
    impl = _resolve_impl(impl, origin)
    if not origin.on_gpu:  # device inputs: no host sync (see the module docstring)
        A.check_finite("desc", desc)
    desc = _contiguous(desc, origin)
    user_out = out
    if out is not None:
        expect = (t, c * (1 + 8 * hierarchy)) if squeeze else (b, t, c * (1 + 8 * hierarchy))
        _check_out(out, origin, expect, out_name)
        if squeeze:
            out = out[None]
    if b * t * c == 0:
        impl = "reference"  # typed empty result, any kind
    res, norm = KERNELS["log_bin"][impl](desc, origin, in_name, grid, hierarchy, out_name, return_norm, out)
    out = _into(out, res, origin)
    if squeeze:
        out = out[0] if user_out is None else user_out
        norm = norm[0] if norm is not None else None
    return (out, norm) if return_norm else out


def _check_out(out, origin: A.Origin, shape: tuple, out_name: str) -> None:
    """``out`` must be the result's kind, device, dtype and shape, C-contiguous."""
    kind = A.array_kind(out)
    dev = out.device if kind == "torch" else None
    if kind != origin.kind or (kind == "torch" and dev != origin.device):
        raise InputError(f"out must be a {origin.kind} array on the input's device, got {type(out).__name__}"
                         + (f" on {dev}" if dev is not None else ""))
    if tuple(out.shape) != tuple(shape) or A.dtype_name(out) != out_name:
        raise InputError(f"out must have shape {tuple(shape)} and dtype {out_name}, got shape {tuple(out.shape)} "
                         f"and dtype {A.dtype_name(out)}")
    contiguous = out.is_contiguous() if kind == "torch" else out.flags.c_contiguous
    if not contiguous:
        raise InputError("out must be C-contiguous, got a strided view; pass a buffer made with empty(...)")


def _into(out, res, origin: A.Origin):
    """Copy res into the caller's out buffer (if any, and unless res is it) and return what log_bin hands back."""
    if out is None or res is out:
        return res
    if origin.kind == "torch":
        out.copy_(res)
    elif origin.kind == "numpy":
        np.copyto(out, res)
    else:
        out[...] = res
    return out


def _cast_host(out: np.ndarray, out_name: str, origin: A.Origin):
    if out_name == "float32":
        return out
    if out_name == "float16":
        return out.astype(np.float16)
    return torch.from_numpy(out).to(torch.bfloat16)  # bfloat16 is only accepted for torch callers


def _place(t: torch.Tensor, origin: A.Origin):
    return t.to(origin.device) if origin.device.type != "cpu" else t


# -------------------------------------------------------------------------------------- best_buddies


def best_buddies(desc1, desc2, *, precision: str = "fp32", chunk: int | None = None, impl: str = "auto"):
    """Best Buddies (mutual nearest neighbours) under cosine similarity, without materialising S.

    ``S = n1 @ n2.T`` with ``n = x / max(||x||_2, 1e-8)`` per row (float32), processed ``chunk`` rows of desc1
    at a time; memory is O(T1 + T2 + chunk * T2).

    Args:
        desc1: (T1, C) descriptors of image 1; numpy, torch (CPU/CUDA) or CuPy; float32/float16/bfloat16/float64.
        desc2: (T2, C) descriptors of image 2, same kind and device as ``desc1``.
        precision: "fp32" (default, matches the original), "fp16" or "bf16": normalised rows rounded to that
            type for a faster GEMM, products accumulated in float32.
        chunk: rows of desc1 per similarity tile (default: ~1 MiB S tiles of <= 512 columns on CPU, 256 MB on GPU).
        impl: "auto" | "reference" | "cpu" | "cuda".

    Returns:
        :class:`BestBuddies` ``(nn_1 (T1,) int64, sim_1 (T1,) float32, nn_2 (T2,) int64, sim_2 (T2,) float32,
        mask (T1,) bool)``, same kind and device as the inputs. Ties go to the lowest index (as ``torch.max``).
        Empty inputs: with T2 == 0, ``nn_1 = -1``, ``sim_1 = -inf``, ``mask = False``; with T1 == 0,
        ``nn_2 = -1``, ``sim_2 = -inf``.

    Raises:
        InputError: wrong type/ndim/dtype, different kinds or devices, C mismatch, NaN/Inf (device inputs: from
            ``result.check()``), bad precision/chunk.
        BackendUnavailableError: ``impl`` names a backend that is not installed or has no device.
    """
    o1 = _check_pair("desc1", desc1, "desc2", desc2)
    precision = _check_precision(precision)
    if chunk is not None:
        chunk = _as_int("chunk", chunk)
        if chunk <= 0:
            raise InputError(f"chunk must be a positive number of rows or None, got {chunk}")
    impl = _resolve_impl(impl, o1)
    pending = [A.check_finite_deferred("desc1", desc1), A.check_finite_deferred("desc2", desc2)]
    desc1 = _contiguous(desc1, o1)
    desc2 = _contiguous(desc2, o1)
    if int(desc1.shape[0]) == 0 or int(desc2.shape[0]) == 0:
        impl = "reference"
    return _with_pending(KERNELS["best_buddies"][impl](desc1, desc2, o1, precision, chunk), pending)


# ------------------------------------------------------------------------------ best_buddies_binned


def _check_pair(name1: str, x1, name2: str, x2):
    o1 = A.origin_of(name1, x1)
    o2 = A.origin_of(name2, x2)
    if (o1.kind, o1.device) != (o2.kind, o2.device):
        where1 = o1.device if o1.kind == "torch" else o1.kind
        where2 = o2.device if o2.kind == "torch" else o2.kind
        raise InputError(
            f"{name1} and {name2} must be the same array kind on the same device, got {o1.kind} on {where1} and "
            f"{o2.kind} on {where2}"
        )
    A.check_ndim(name1, x1, (2,), "(T1, C)")
    A.check_ndim(name2, x2, (2,), "(T2, C)")
    A.check_float(name1, x1)
    A.check_float(name2, x2)
    if x1.shape[1] != x2.shape[1]:
        raise InputError(
            f"{name1} and {name2} must have the same channel count C, got {name1} {tuple(x1.shape)} (C = "
            f"{x1.shape[1]}) and {name2} {tuple(x2.shape)} (C = {x2.shape[1]})"
        )
    return o1


def best_buddies_binned(
    keys1, num_patches1, keys2, num_patches2, *, hierarchy: int = 2, precision: str = "fp32", impl: str = "auto",
    tiling=None,
):
    """Best Buddies of the log-binned descriptors, without materialising the binned rows nor S.

    The same result as ``best_buddies(log_bin(keys1, num_patches1, hierarchy), log_bin(keys2, num_patches2,
    hierarchy))`` (exact arithmetic, summed in another order: only near-ties within float rounding can differ),
    from h Gram matrices of the level maps (raw keys, 3x3 averages, ...) read at the bins' shifted, clamped cells:
    ``binned1[i] . binned2[j] = sum_b G_l(b)[clamp1(i + o_b), clamp2(j + o_b)]``, ``G_l = L1_l @ L2_l.T``, with
    K = C instead of K = (1 + 8 h) C. The fast paths tile it: Gram tiles with their halo, the shifted adds and the
    max/argmax fused per tile (extra memory: the tiles). On the CPU only G_0 = K1 K2^T is a GEMM; the higher levels
    are box sums of it (no level maps are made).

    Args:
        keys1: (T1, C) unbinned descriptors of image 1, tokens row-major over ``num_patches1 = (Hp1, Wp1)``;
            numpy, torch (CPU/CUDA) or CuPy; float32/float16/bfloat16/float64 (computed in float32).
        keys2: (T2, C) of image 2 on ``num_patches2``, same kind and device.
        hierarchy: log-bin levels h in 1..4 (2: the original's 17 bins).
        precision: "fp32" (default); "fp16"/"bf16" round the level maps to that type before the Gram GEMMs.
        impl: "auto" | "reference" | "cpu" | "cuda".
        tiling: CPU tile budget: "fast" (32-64 MiB of tiles) | "low_memory" (tiles within max(4 MiB, 6% of the
            dense T1 x T2 fp32 S)) | a ``cpu_binned.BinnedTiling``; None: ``$DINOFEAT_BINNED_TILING``, else "fast".
            Same results either way.

    Returns:
        :class:`BestBuddies` ``(nn_1 (T1,) int64, sim_1 (T1,) float32, nn_2 (T2,) int64, sim_2 (T2,) float32,
        mask (T1,) bool)``, same kind and device as the inputs; ties go to the lowest index; empty inputs as
        :func:`best_buddies`.

    Raises:
        InputError: wrong type/ndim/dtype, kinds or devices differ, C mismatch, bad num_patches/hierarchy/precision,
            NaN/Inf (device inputs: from ``result.check()``, as :func:`best_buddies`).
        BackendUnavailableError: ``impl`` names a backend that is not installed or has no device.
    """
    o1 = _check_pair("keys1", keys1, "keys2", keys2)
    grid1 = _check_num_patches(num_patches1, int(keys1.shape[0]), keys1.shape)
    grid2 = _check_num_patches(num_patches2, int(keys2.shape[0]), keys2.shape)
    hierarchy = _check_hierarchy(hierarchy, BINNED_MAX_HIERARCHY)
    precision = _check_precision(precision)
    impl = _resolve_impl(impl, o1)
    tiling = _cpu_binned().resolve_tiling(tiling)  # checked for every impl: a typo is an error, not a silent default
    # host inputs: checked now; device inputs: per-row sums enqueued on the device, reported by `.check()`
    pending = [A.check_finite_deferred("keys1", keys1), A.check_finite_deferred("keys2", keys2)]
    keys1 = _contiguous(keys1, o1)
    keys2 = _contiguous(keys2, o1)
    if int(keys1.shape[0]) == 0 or int(keys2.shape[0]) == 0:  # empty: the plain result (nothing to bin)
        return _with_pending(KERNELS["best_buddies"]["reference"](keys1, keys2, o1, "fp32", None), pending)
    res = KERNELS["best_buddies_binned"][impl](keys1, grid1, keys2, grid2, o1, hierarchy, precision, tiling)
    return _with_pending(res, pending)


def log_bin_rows(desc, num_patches, indices, hierarchy: int = 2, *, impl: str = "auto"):
    """Log-binned rows of only the tokens ``indices`` (the rows ``log_bin(desc, num_patches)[indices]``).

    Args:
        desc: (T, C) descriptors on the (Hp, Wp) grid ``num_patches``; numpy, torch or CuPy; float dtypes.
        indices: (N,) integer token indices in 0..T-1 (any array kind, or a list).
        hierarchy: log-bin levels h >= 1.
        impl: "auto" | "reference" | "cpu" | "cuda": whose box average makes the level maps ("cuda" uses the
            reference's on the GPU); the rows are gathered with torch.

    Returns:
        (N, C * (1 + 8 h)) float32, same kind and device as ``desc``.
    """
    origin = A.origin_of("desc", desc)
    A.check_ndim("desc", desc, (2,), "(T, C)")
    A.check_float("desc", desc)
    grid = _check_num_patches(num_patches, int(desc.shape[0]), desc.shape)
    hierarchy = _check_hierarchy(hierarchy, MAX_HIERARCHY)
    impl = _resolve_impl(impl, origin)
    desc = _contiguous(desc, origin)
    x = A.to_torch(desc, origin)
    try:
        idx = torch.as_tensor(np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices),
                              device=x.device).long().reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"indices must be an integer array of token indices, got {type(indices).__name__}") from None
    t = int(desc.shape[0])
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t):
        raise InputError(f"indices must be in 0..{t - 1} (T = {t}), got values in {int(idx.min())}..{int(idx.max())}")
    if t == 0:
        impl = "reference"
    levels = KERNELS["log_bin_rows"][impl](desc, origin, x, grid, hierarchy)
    return A.from_torch(reference.gather_binned_rows(levels, grid, idx, hierarchy), origin)


__all__ = ["BestBuddies", "BackendUnavailableError", "best_buddies", "best_buddies_binned", "log_bin",
           "log_bin_rows", "native_available"]
