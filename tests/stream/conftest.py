"""Frames cut from the bundled example images, and one stream configuration, for the streaming tests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from testutil import EXAMPLES


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    """Three 60x80 rgb8 frames: a window sliding right over img_a (downscaled), then one from img_b."""
    a = np.asarray(Image.open(EXAMPLES / "img_a.png").convert("RGB").resize((160, 120), Image.LANCZOS))
    b = np.asarray(Image.open(EXAMPLES / "img_b.png").convert("RGB").resize((120, 120), Image.LANCZOS))
    out = [np.ascontiguousarray(a[10:70, 10 + 8 * i:90 + 8 * i]) for i in range(2)]
    out.append(np.ascontiguousarray(b[30:90, 20:100]))
    return out
