"""Array-kind plumbing shared by the kernel entry points: detect, validate, convert, convert back.

Kinds: ``"numpy"`` (numpy.ndarray), ``"torch"`` (torch.Tensor on any device) and ``"cupy"`` (cupy.ndarray).
CuPy is never imported here unless the caller already passed a CuPy array.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

FLOAT_NAMES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class Origin:
    """Where an input came from, so that results can be handed back the same way."""

    kind: str  # "numpy" | "torch" | "cupy"
    device: object = None  # torch.device for torch inputs
    on_gpu: bool = False


def array_kind(x) -> str | None:
    """``"numpy"``, ``"torch"``, ``"cupy"`` or None for anything else (lists are not accepted)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, torch.Tensor):
        return "torch"
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(x, cp.ndarray):
        return "cupy"
    return None


def origin_of(name: str, x) -> Origin:
    kind = array_kind(x)
    if kind is None:
        raise InputError(
            f"{name} must be a numpy array, a torch tensor or a CuPy array, got {type(x).__module__}."
            f"{type(x).__qualname__}; convert it with numpy.asarray(...) first"
        )
    if kind == "torch":
        return Origin("torch", x.device, x.device.type == "cuda")
    return Origin(kind, None, kind == "cupy")


def dtype_name(x) -> str:
    """Canonical dtype name (``"float32"``, ``"bfloat16"``, ``"int64"``...) of any supported array."""
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    return str(x.dtype)


def check_float(name: str, x) -> str:
    dt = dtype_name(x)
    if dt not in FLOAT_NAMES:
        raise InputError(
            f"{name} must be a floating array (float32, float16, bfloat16 or float64), got dtype {dt}; "
            f"cast it, e.g. {name}.astype('float32') / {name}.float()"
        )
    return dt


def check_ndim(name: str, x, allowed: tuple[int, ...], layout: str) -> None:
    if x.ndim not in allowed:
        raise InputError(
            f"{name} must have shape {layout} ({' or '.join(f'{n}-D' for n in allowed)}), "
            f"got {x.ndim}-D shape {tuple(x.shape)}"
        )


def _not_finite_error(name: str, what: str, where: tuple) -> InputError:
    loc = f"row {where[-1]}" if len(where) == 1 else f"batch {where[0]}, row {where[-1]}"
    return InputError(
        f"{name} contains {what} at {loc}; check the input (descriptors must be finite, e.g. the backbone "
        "ran in float16 and overflowed, or an image was empty)"
    )


@dataclass(frozen=True)
class DeferredFinite:
    """A finiteness check of a device array, computed on the device without a host sync.

    ``row_sums`` (..., ) float32 on the device: a row holds a NaN or an Inf iff its sum is not finite (barring a
    float32 overflow of the sum of a row of huge finite values, reported as Inf). `raise_if_bad` reads it (one
    sync, when the caller synchronises anyway) and raises the same `InputError` as the host check."""

    name: str
    row_sums: object

    def raise_if_bad(self) -> None:
        s = self.row_sums
        if array_kind(s) == "torch":
            bad = ~torch.isfinite(s)
            if not bool(bad.any()):
                return
            where = tuple(int(v) for v in torch.nonzero(bad)[0].tolist())
            what = "NaN" if bool(torch.isnan(s[where])) else "Inf"
        else:
            cp = sys.modules["cupy"]
            bad = ~cp.isfinite(s)
            if not bool(bad.any()):
                return
            where = tuple(int(v[0]) for v in cp.nonzero(bad))
            what = "NaN" if bool(cp.isnan(s[where])) else "Inf"
        raise _not_finite_error(self.name, what, where)


def check_finite_deferred(name: str, x) -> DeferredFinite | None:
    """Device arrays (torch CUDA, CuPy): enqueue the per-row sums on the device and return a `DeferredFinite`
    (no host sync). Host arrays: check now (`check_finite`) and return None."""
    kind = array_kind(x)
    on_device = (kind == "torch" and x.device.type != "cpu") or kind == "cupy"
    if not on_device:
        check_finite(name, x)
        return None
    if kind == "torch":
        return DeferredFinite(name, x.sum(dim=-1, dtype=torch.float32))
    return DeferredFinite(name, x.sum(axis=-1, dtype=sys.modules["cupy"].float32))


def check_finite(name: str, x) -> None:
    """Raise InputError naming the first row that holds a NaN or an Inf. x: (..., C). Synchronises on device
    arrays (use `check_finite_deferred` there).

    Fast path: the sum of all elements is finite iff no element is NaN/Inf (barring an overflow of the sum, which
    falls through to the exact per-row scan). It needs no temporary the size of x.

    Device inputs (torch CUDA, CuPy) are not checked: the check would cost a host synchronisation per call. There a
    NaN/Inf propagates (log_bin: NaN in the bins that pool it; best_buddies: NaN similarities never win an argmax
    unless a whole row is NaN) -- check device data where it is made if it can hold NaN.
    """
    kind = array_kind(x)
    if kind == "cupy" or (kind == "torch" and x.device.type != "cpu"):
        return
    if (x.numel() if kind == "torch" else x.size) == 0:
        return
    if kind == "torch":
        if bool(torch.isfinite(x.sum())):
            return
        bad_rows = ~torch.isfinite(x).all(dim=-1)
        if not bool(bad_rows.any()):
            return
        where = tuple(int(v) for v in torch.nonzero(bad_rows)[0].tolist())
        what = "NaN" if bool(torch.isnan(x[where]).any()) else "Inf"
    else:
        xp = np if kind == "numpy" else sys.modules["cupy"]
        if bool(xp.isfinite(x.sum())):
            return
        bad_rows = ~xp.isfinite(x).all(axis=-1)
        if not bool(bad_rows.any()):
            return
        where = tuple(int(v[0]) for v in xp.nonzero(bad_rows))
        what = "NaN" if bool(xp.isnan(x[where]).any()) else "Inf"
    raise _not_finite_error(name, what, where)


# ---------------------------------------------------------------- conversions between kinds


def to_torch(x, origin: Origin) -> torch.Tensor:
    if origin.kind == "torch":
        return x
    if origin.kind == "numpy":
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.from_dlpack(x)  # cupy -> torch CUDA, zero-copy


def from_torch(t: torch.Tensor, origin: Origin):
    if origin.kind == "torch":
        return t.to(origin.device) if t.device != origin.device else t
    if origin.kind == "numpy":
        return t.detach().cpu().numpy()
    import cupy as cp

    return cp.from_dlpack(t.detach())


def to_numpy_f32(x, origin: Origin) -> np.ndarray:
    """Host float32 C-contiguous copy/view of x (float16/bfloat16/float64 are converted)."""
    if origin.kind == "torch":
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        return np.ascontiguousarray(x.numpy())
    if origin.kind == "cupy":
        import cupy as cp

        x = cp.asnumpy(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def from_numpy(a: np.ndarray, origin: Origin):
    """Hand a host result back as the caller's kind and device (same dtype as ``a``)."""
    if origin.kind == "numpy":
        return a
    if origin.kind == "torch":
        t = torch.from_numpy(a)
        return t.to(origin.device) if origin.device.type != "cpu" else t
    import cupy as cp

    return cp.asarray(a)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def resolve_out_dtype(out_dtype, in_name: str, origin: Origin) -> str:
    """Canonical name of the output dtype of log_bin (default: the input's, float64 -> float32)."""
    if out_dtype is None:
        name = "float32" if in_name == "float64" else in_name
    elif isinstance(out_dtype, torch.dtype):
        name = str(out_dtype).removeprefix("torch.")
    else:
        try:
            name = str(np.dtype(out_dtype))
        except TypeError:
            name = str(out_dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise InputError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype!r}")
    if name == "bfloat16" and origin.kind != "torch":
        raise InputError(
            f"out_dtype bfloat16 needs torch tensors ({origin.kind} has no bfloat16); use float32"
        )
    return name
