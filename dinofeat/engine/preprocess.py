"""Image loading and preprocessing exactly as the original `ViTExtractor.preprocess` (SEMANTICS §2).

Shorter side -> `load_size` with Pillow's Lanczos (the longer side truncated, not rounded), skipped when the
size already matches; ToTensor (/255, float32); Normalize (subtract mean, divide by std, float32).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from ..limits import check_pixels, check_tokens, current_limits, pixel_limit_message

ImageLike = "str | os.PathLike | PIL.Image.Image | numpy.ndarray"


_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_bomb_warning():
    """Silence Pillow's DecompressionBombWarning (issued above PIL.Image.MAX_IMAGE_PIXELS, 89.5 MP): dinofeat's
    own pixel limit (`dinofeat.limits`, 100 MP by default) has already accepted or refused the image. Held under a
    lock because `warnings.catch_warnings` swaps process-wide state; the common case (an image below Pillow's
    level) only holds it while the header is parsed."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def load_image(image, *, exif_transpose: bool = True, name: str = "image") -> Image.Image:
    """Open a path / PIL image / HWC uint8 (or uint16) array as an 8-bit RGB PIL image.

    Grayscale, palette and RGBA images are converted like the original (`convert("RGB")`, alpha dropped);
    16-bit images are scaled to 8 bits (v >> 8 for files, round(v / 257) for arrays) instead of clipped.
    With `exif_transpose` (default) a photo's EXIF orientation is applied, so points refer to the image as
    displayed; the original ignored EXIF (pass False to reproduce it on rotated files).
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"{name}: file not found: {str(path)!r}; check the path")
        if path.is_dir():
            raise InputError(f"{name}: {str(path)!r} is a directory, not an image file")
        try:
            with _quiet_bomb_warning():  # our own limit applies (check_pixels), not Pillow's lower warning level
                im = Image.open(path)
            with im:
                check_pixels(im.width, im.height, name)  # header only: nothing decoded yet
                big = Image.MAX_IMAGE_PIXELS is not None and im.width * im.height > Image.MAX_IMAGE_PIXELS
                with _quiet_bomb_warning() if big else contextlib.nullcontext():
                    im.load()
                    pil = im.copy() if not exif_transpose else ImageOps.exif_transpose(im)
        except InputError:
            raise
        except Image.DecompressionBombError as e:  # above Pillow's own hard limit, refused at open
            raise InputError(pixel_limit_message(name, f"{str(path)!r} ({e})", current_limits().max_image_pixels)) \
                from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise InputError(
                f"{name}: cannot read {str(path)!r} as an image ({type(e).__name__}: {e}); "
                "pass a PNG/JPEG/... file, a PIL image or an HxWx3 uint8 array"
            ) from None
        return _to_rgb8(pil)
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, name)
        pil = ImageOps.exif_transpose(image) if exif_transpose else image
        return _to_rgb8(pil)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, name)
    if isinstance(image, torch.Tensor):
        raise InputError(
            f"{name}: got a torch.Tensor of shape {tuple(image.shape)}; pass an image (path, PIL, HxWx3 uint8 "
            "numpy array) to preprocess, or an already preprocessed (B,3,H,W) batch to Extractor.extract"
        )
    raise InputError(
        f"{name}: unsupported type {type(image).__name__}; pass a file path, a PIL.Image or an HxWx3 uint8 array"
    )


def _to_rgb8(pil: Image.Image) -> Image.Image:
    if pil.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(pil)
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
        pil = Image.fromarray(arr, mode="L")
    return pil.convert("RGB")


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        pass
    elif arr.ndim == 2:
        arr = arr[..., None]
    else:
        raise InputError(
            f"{name}: expected an HxW or HxWxC array with C in (1, 3, 4), got shape {tuple(arr.shape)}"
            + ("; a CxHxW array needs arr.transpose(1, 2, 0)" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else "")
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name}: empty image of shape {tuple(arr.shape)}")
    check_pixels(arr.shape[1], arr.shape[0], name)
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(
            f"{name}: expected a uint8 (or uint16) array, got dtype {arr.dtype}; convert with "
            "(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for float images in [0, 1]"
        )
    arr = np.ascontiguousarray(arr)
    channels = arr.shape[-1]
    if channels == 1:
        return Image.fromarray(arr[..., 0], mode="L").convert("RGB")
    if channels == 4:
        return Image.fromarray(arr, mode="RGBA").convert("RGB")
    return Image.fromarray(arr, mode="RGB")


def resized_size(width: int, height: int, load_size) -> tuple[int, int]:
    """(new_w, new_h) as torchvision's Resize(load_size) computes it: shorter side -> load_size, longer truncated."""
    if load_size is None:
        return width, height
    if isinstance(load_size, (tuple, list)):
        if len(load_size) != 2:
            raise InputError(f"load_size={load_size!r}: a sequence must be (height, width)")
        return int(load_size[1]), int(load_size[0])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(load_size), int(load_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def check_load_size(load_size, min_side: int) -> None:
    sizes = load_size if isinstance(load_size, (tuple, list)) else (load_size,)
    if load_size is None:
        return
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < min_side:
            raise InputError(
                f"load_size={load_size!r}: expected an int >= {min_side} (the patch size), a (height, width) pair "
                "of such ints, or None to keep the image size"
            )


def preprocess(image, load_size, mean, std, *, exif_transpose: bool = True, name: str = "image", grid=None):
    """Image -> ((1, 3, H, W) float32 tensor, resized RGB PIL image).

    grid: optional (height, width) -> (Hp, Wp) of the model; the token budget (`dinofeat.limits`) is then checked
    on the resized size before resizing.
    """
    pil = load_image(image, exif_transpose=exif_transpose, name=name)
    new_w, new_h = resized_size(pil.width, pil.height, load_size)
    if grid is not None:
        check_tokens(grid(new_h, new_w), (new_h, new_w), name,
                     f" (a {pil.width}x{pil.height} image with load_size={load_size!r}: the shorter side is resized "
                     "to load_size, the longer in proportion)")
    if (new_w, new_h) != (pil.width, pil.height):
        pil = pil.resize((new_w, new_h), Image.LANCZOS)
    arr = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())  # (H, W, 3)
    x = arr.permute(2, 0, 1).to(torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    x = x.sub(m).div(s)
    return x.unsqueeze(0), pil
