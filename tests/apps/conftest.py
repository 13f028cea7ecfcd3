"""Fixtures of the application tests: three tiny images (two share a size, so batching is exercised), the
original's per-image extraction of them, and a stride-8 extractor for the low-resolution saliency."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from testutil import EXAMPLES

LOAD = 32  # 48x32 / 32x32 images: 7x11 / 7x7 patch grids at stride 4 (deterministic weights, cheap forwards)


@pytest.fixture(scope="session")
def app_images():
    a = Image.open(EXAMPLES / "img_a.png").convert("RGB")
    b = Image.open(EXAMPLES / "img_b.png").convert("RGB")
    return [a, b, a.transpose(Image.FLIP_LEFT_RIGHT)]


@pytest.fixture(scope="session")
def extractor_s8(extractor):
    """The stride-8 extractor the applications derive from `extractor` (an Extractor built from the same file)."""
    from dinofeat.apps.common import derived_extractor

    ex8 = derived_extractor(extractor, 8)
    assert ex8.stride == 8 and ex8.weights_sha256 == extractor.weights_sha256
    return ex8


@pytest.fixture(scope="session")
def original_features(extractor, extractor_s8, app_images):
    """The original's structure: one extraction per image (layer 11 key, unbinned) and the saliency of a stride-8
    forward at half the load size, resized to the descriptor grid with torchvision's NEAREST Resize."""
    from torchvision import transforms

    out = []
    for img in app_images:
        batch, pil = extractor.preprocess(img, LOAD)
        f = extractor.extract(batch, layer=11, facet="key")
        h, w = f.load_size
        low, _ = extractor_s8.preprocess(img, (h // 2, w // 2))
        s = extractor_s8.extract(low, layer=11, saliency=True)
        grid = Image.fromarray(s.saliency[0].numpy().reshape(s.num_patches))
        sal = np.array(transforms.Resize(f.num_patches, transforms.InterpolationMode.NEAREST)(grid)).flatten()
        out.append({"pil": pil, "desc": f.descriptors[0].numpy(), "sal": sal, "grid": f.num_patches,
                    "size": f.load_size})
    return out
