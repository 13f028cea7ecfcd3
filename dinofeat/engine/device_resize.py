"""Pillow's 8-bit Lanczos resize, bit for bit, as torch ops on any device (no host round trip).

`preprocess` resizes with ``PIL.Image.resize(size, Image.LANCZOS)``. Pillow does it in two separable passes
(horizontal, then vertical), each with fixed-point coefficients (22 fractional bits) and a rounding to uint8
(``libImaging/Resample.c``: ``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``ImagingResampleInner``). Here each
pass is one float64 matrix product with the same integer coefficients: every product and sum is an integer
below 2**53, so float64 holds it exactly and the result equals Pillow's whatever the summation order.
tests/engine/test_device_resize.py compares with Pillow over sizes, up- and down-scaling.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
LANCZOS_SUPPORT = 3.0


def _lanczos(x: float) -> float:
    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v *= math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


@functools.lru_cache(maxsize=64)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of Pillow's integer Lanczos coefficients (scaled by 2**22)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(w)
        for x in range(xmax):
            k = w[x] / ww if ww != 0.0 else w[x]
            # C's (int) truncates toward zero: Pillow rounds half away from zero this way
            out[xx, xmin + x] = math.trunc(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else \
                math.trunc(0.5 + k * (1 << PRECISION_BITS))
    out.setflags(write=False)
    return out


def _pass(x: torch.Tensor, coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """One Pillow pass along `dim` of a float64 tensor of 0..255 integers; returns 0..255 integers (float64)."""
    y = torch.movedim(x, dim, -1) @ coeffs.T
    y = torch.floor((y + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp_(0, 255)
    return torch.movedim(y, -1, dim)


def lanczos_resize_u8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's ``resize((w, h), Image.LANCZOS)`` of an (H, W, C) 8-bit image, on the image's device.

    Args:
        image: (H, W, C) tensor holding 0..255 integers (uint8 or any real dtype).
        size: (height, width) of the result.

    Returns:
        (h, w, C) float64 tensor of 0..255 integers on the same device; the input itself (as float64) when the
        size already matches (Pillow then copies).
    """
    height, width = int(size[0]), int(size[1])
    x = image.to(torch.float64)
    if width != x.shape[1]:
        x = _pass(x, _coeffs(x.shape[1], width, x.device), 1)
    if height != x.shape[0]:
        x = _pass(x, _coeffs(x.shape[0], height, x.device), 0)
    return x


@functools.lru_cache(maxsize=64)
def _coeffs(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(lanczos_matrix(in_size, out_size).copy()).to(device)
