"""Preprocessing: sizes as torchvision's Resize, Pillow Lanczos, image kinds, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinofeat.engine.preprocess import load_image, preprocess, resized_size
from dinofeat.errors import InputError
from dinofeat.model.zoo import IMAGENET_MEAN, IMAGENET_STD


def _pre(image, load_size=224):
    return preprocess(image, load_size, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    ("wh", "load", "expected"),
    [((300, 451), 224, (224, 336)), ((300, 451), 320, (320, 481)), ((451, 300), 224, (336, 224)),
     ((512, 512), 224, (224, 224)), ((224, 224), 224, (224, 224)), ((100, 50), 224, (448, 224))],
)
def test_resized_size_truncates_like_torchvision(wh, load, expected):
    assert resized_size(*wh, load) == expected


def test_resize_matches_torchvision_and_skips_equal_size():
    from torchvision import transforms

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (301, 451, 3), dtype=np.uint8))
    ref = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.LANCZOS),
                              transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x, pil = _pre(img)
    assert pil.size == (335, 224)
    np.testing.assert_array_equal(x[0].numpy(), ref(img).numpy())
    same = Image.fromarray(rng.integers(0, 256, (224, 300, 3), dtype=np.uint8))
    _, pil2 = _pre(same)
    assert np.array_equal(np.asarray(pil2), np.asarray(same))  # untouched, not resampled


def test_image_kinds_give_rgb(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    # grayscale array and file, RGBA, 16-bit, palette
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(gray)), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(np.asarray(load_image(rgba)), rgb)
    g16 = gray.astype(np.uint16) * 257
    assert np.array_equal(np.asarray(load_image(g16))[..., 0], gray)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.array_equal(np.asarray(load_image(tmp_path / "g16.png"))[..., 0], gray)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    shown = load_image(tmp_path / "rot.jpg")
    assert shown.size == (20, 40)
    raw = load_image(tmp_path / "rot.jpg", exif_transpose=False)
    assert raw.size == (40, 20)


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read .* as an image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match=r"arr.transpose\(1, 2, 0\)"):
        load_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="empty image"):
        load_image(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(InputError, match="torch.Tensor"):
        load_image(torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match="unsupported type"):
        load_image(42)
