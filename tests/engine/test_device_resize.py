"""`lanczos_resize_u8` reproduces Pillow's 8-bit Lanczos resize bit for bit (down, up, one axis, same size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinofeat.engine.device_resize import lanczos_matrix, lanczos_resize_u8


@pytest.mark.parametrize("shape,size", [
    ((480, 640), (224, 298)),   # VGA camera frame -> load size 224 (the common robot case)
    ((360, 640), (112, 199)),   # strong reduction (wide kernels)
    ((37, 53), (20, 28)),       # odd sizes
    ((17, 19), (40, 45)),       # upscaling
    ((224, 300), (224, 298)),   # one axis only (Pillow runs one pass)
    ((50, 50), (50, 50)),       # no resize
])
def test_equals_pillow(shape, size):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.LANCZOS))
    got = lanczos_resize_u8(torch.from_numpy(a), size)
    assert got.shape == (*size, 3) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.to(torch.uint8).numpy(), expected)


def test_coefficients_are_integer_and_sum_to_one():
    m = lanczos_matrix(640, 298)
    assert m.shape == (298, 640)
    assert np.array_equal(m, np.round(m))
    assert np.all(np.abs(m.sum(axis=1) - 2**22) <= m.shape[1])  # each row: 1.0 in 22-bit fixed point, +- rounding
