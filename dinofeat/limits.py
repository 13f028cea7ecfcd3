"""Input-size limits: the decompression-bomb guard and the token budget (defaults in one place).

Both are checked before anything large is allocated: the pixel limit on the image header (before decoding), the
token budget on the size the image will have after resizing (before resizing). Raise them per process with the
environment variables below (read at call time), e.g. ``DINOFEAT_MAX_TOKENS=100000``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import InputError

PIL_HARD_LIMIT = 2 * 89_478_485  # Pillow refuses (DecompressionBombError) above 2 * PIL.Image.MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Limits:
    """Per-image limits (one image; a pair is checked image by image)."""

    # Decoded pixels (width * height) of one input image; above it the file is refused before it is decoded
    # (a 60000x60000 PNG is a 100-byte header but 10.8 GB decoded). 100 MP: a 12000x8000 photo still loads.
    max_image_pixels: int = 100_000_000
    # Patch tokens Hp * Wp of one preprocessed image (after resizing to load_size). Time grows ~T^1.9 and the
    # fp32 pair ~T^0.9 in memory (README, Benchmarks): 40,000 tokens is about an 800x800 image at stride 4
    # (~3 min per pair on 2 CPU cores, a few GiB). A 1x4000 image at load 224 would be 12.3 M tokens.
    max_tokens: int = 40_000


DEFAULT_LIMITS = Limits()
ENV_VARS = {"max_image_pixels": "DINOFEAT_MAX_IMAGE_PIXELS", "max_tokens": "DINOFEAT_MAX_TOKENS"}


def current_limits() -> Limits:
    """DEFAULT_LIMITS with any environment override (`ENV_VARS`) applied."""
    values = {}
    for f in fields(Limits):
        text = os.environ.get(ENV_VARS[f.name])
        if text is None or not text.strip():
            continue
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise InputError(f"{ENV_VARS[f.name]}={text!r}: expected a positive integer")
        values[f.name] = value
    return Limits(**{**DEFAULT_LIMITS.__dict__, **values})


def check_pixels(width: int, height: int, name: str) -> None:
    """Refuse an image above the pixel limit (call on the header, before decoding)."""
    limit = current_limits().max_image_pixels
    if width * height > limit:
        raise InputError(pixel_limit_message(name, f"{width}x{height} = {width * height:,} pixels", limit))


def pixel_limit_message(name: str, what: str, limit: int) -> str:
    extra = (f" (above {PIL_HARD_LIMIT:,} also raise PIL.Image.MAX_IMAGE_PIXELS)" if limit >= PIL_HARD_LIMIT
             else "")
    return (f"{name}: image of {what} is above the limit of {limit:,} pixels (decompression-bomb guard); if you "
            f"trust the file, raise it with the environment variable {ENV_VARS['max_image_pixels']}=N{extra}")


def check_tokens(grid: tuple[int, int], size_hw: tuple[int, int], name: str, hint: str = "") -> None:
    """Refuse a preprocessed size whose patch grid (Hp, Wp) exceeds the token budget."""
    limit = current_limits().max_tokens
    tokens = int(grid[0]) * int(grid[1])
    if tokens > limit:
        raise InputError(
            f"{name}: {size_hw[0]}x{size_hw[1]} px after resizing gives a {grid[0]}x{grid[1]} patch grid = "
            f"{tokens:,} tokens, above the token budget of {limit:,}{hint}; use a smaller load_size (or a larger "
            f"stride), or raise the budget with the environment variable {ENV_VARS['max_tokens']}=N"
        )
