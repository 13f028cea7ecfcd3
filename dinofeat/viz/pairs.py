"""Drawing correspondences: the two resized images side by side with coloured, numbered pairs."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import OutputError


def pair_colors(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours (evenly spaced hues)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def draw_correspondences(corr, gap: int = 10) -> Image.Image:
    """Side-by-side canvas of corr.image1 | corr.image2 with each pair as a numbered circle and a line."""
    im1, im2 = corr.image1.convert("RGB"), corr.image2.convert("RGB")
    width, height = im1.width + gap + im2.width, max(im1.height, im2.height)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(im1, (0, 0))
    canvas.paste(im2, (im1.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    radius = max(3, min(height, width) // 60)
    off = im1.width + gap
    for k, ((y1, x1), (y2, x2), color) in enumerate(zip(corr.points1, corr.points2, pair_colors(len(corr)), strict=False)):
        draw.line([(x1, y1), (x2 + off, y2)], fill=color, width=1)
        for x, y in ((x1, y1), (x2 + off, y2)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=(0, 0, 0), fill=color, width=1)
            draw.text((x + radius + 1, y - radius - 1), str(k), fill=color, font=font, stroke_width=1,
                      stroke_fill=(0, 0, 0))
    return canvas


def check_output_path(path: str | os.PathLike, flag: str = "output") -> Path:
    """Fail early (before any work) if `path`'s directory cannot be created or written; returns the Path.

    A missing directory is fine (atomic_save creates it); a file in the way, a directory that is not writable or
    an existing directory at `path` itself is an OutputError naming `flag`.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a directory; pass a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {str(path)!r}: cannot create its directory, {str(parent)!r} is a file in the "
                          "way; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {str(path)!r}: the directory {str(parent)!r} is not writable (permission "
                          "denied); choose another path")
    return path


