"""Drawing correspondences: the two resized images side by side with coloured, numbered pairs."""

from __future__ import annotations

import colorsys
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


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


def atomic_save(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# The applications' drawers live in viz_apps.py (kept apart to keep this module small).
from .viz_apps import draw_cosegmentation, draw_mask, draw_parts, draw_pca, pca_images  # noqa: E402

__all__ = ["atomic_save", "draw_correspondences", "draw_cosegmentation", "draw_mask", "draw_parts", "draw_pca",
           "pair_colors", "pca_images"]
