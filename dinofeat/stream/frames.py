"""Camera frames -> tensors without copies, and the device-side preprocessing of `FrameStream`.

A frame is a numpy array, a torch tensor or any object with ``__dlpack__`` (CuPy, JAX, ...). Encodings (the ROS
`sensor_msgs/Image` names): ``rgb8`` / ``bgr8`` (H, W, 3) uint8, ``mono8`` (H, W) or (H, W, 1) uint8, and
``float_chw`` (3, H, W) float RGB in [0, 1] (what ``ToTensor`` gives).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

ENCODINGS = ("rgb8", "bgr8", "mono8", "float_chw")


def as_tensor(frame, name: str = "frame") -> torch.Tensor:
    """A torch view of `frame`'s memory (no copy) when it is a torch tensor, a numpy array or a DLPack object.

    Read-only numpy arrays (which DLPack cannot flag) and arrays of a kind DLPack cannot carry are copied once.
    """
    if isinstance(frame, torch.Tensor):
        return frame
    if isinstance(frame, np.ndarray):
        if frame.dtype == object or frame.dtype.kind not in "uif":
            raise InputError(f"{name}: expected a uint8 or float array, got dtype {frame.dtype}")
        if frame.flags.writeable:
            return torch.from_numpy(frame)
        return torch.from_numpy(frame.copy())  # DLPack / from_numpy cannot carry a read-only flag
    if hasattr(frame, "__dlpack__"):
        try:
            return torch.from_dlpack(frame)
        except (BufferError, RuntimeError, TypeError) as e:
            raise InputError(f"{name}: cannot import {type(frame).__name__} through DLPack ({e}); pass a numpy "
                             "array or a torch tensor") from None
    raise InputError(f"{name}: unsupported type {type(frame).__name__}; pass a numpy array, a torch tensor or an "
                     "object with __dlpack__ (uint8 HxWx3 rgb8/bgr8, HxW mono8, or 3xHxW float)")


def check_encoding(encoding) -> str:
    if encoding not in ENCODINGS:
        raise InputError(f"encoding={encoding!r} is unknown; choose one of {', '.join(ENCODINGS)}")
    return encoding


def frame_size(t: torch.Tensor, encoding: str, name: str = "frame") -> tuple[int, int]:
    """(H, W) of a frame tensor in `encoding`, after checking its shape and dtype (expected vs actual)."""
    if encoding == "float_chw":
        if t.ndim != 3 or t.shape[0] != 3 or not t.is_floating_point():
            raise InputError(f"{name}: encoding float_chw expects a (3, H, W) float tensor in [0, 1], got "
                             f"shape {tuple(t.shape)} dtype {t.dtype}")
        if t.shape[1] == 0 or t.shape[2] == 0:
            raise InputError(f"{name}: empty frame of shape {tuple(t.shape)}")
        return int(t.shape[1]), int(t.shape[2])
    if t.dtype != torch.uint8:
        raise InputError(f"{name}: encoding {encoding} expects uint8 pixels, got dtype {t.dtype}; pass "
                         "encoding='float_chw' for a (3, H, W) float image in [0, 1]")
    if encoding == "mono8":
        ok = t.ndim == 2 or (t.ndim == 3 and t.shape[2] == 1)
        expected = "(H, W) or (H, W, 1)"
    else:
        ok = t.ndim == 3 and t.shape[2] == 3
        expected = "(H, W, 3)"
    if not ok:
        hint = "; a (3, H, W) image needs .permute(1, 2, 0)" if t.ndim == 3 and t.shape[0] in (1, 3) else ""
        raise InputError(f"{name}: encoding {encoding} expects shape {expected}, got {tuple(t.shape)}{hint}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name}: empty frame of shape {tuple(t.shape)}")
    return int(t.shape[0]), int(t.shape[1])


def to_rgb_hwc(t: torch.Tensor, encoding: str) -> torch.Tensor:
    """(H, W, 3) RGB of a uint8 frame: a view for rgb8, a channel flip for bgr8, the grey value repeated for mono8
    (what ``PIL.Image.convert("RGB")`` does with an "L" image)."""
    if encoding == "rgb8":
        return t
    if encoding == "bgr8":
        return t.flip(-1)
    grey = t if t.ndim == 2 else t[..., 0]
    return grey.unsqueeze(-1).expand(*grey.shape, 3)
