"""Drawers of the accuracy evaluations: keypoint transfers (`draw_keypoint_samples`) and correspondences coloured
by their error under the true homography (`draw_homography`)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .pairs import pair_colors

GOOD, FAIR, BAD = (40, 200, 60), (250, 200, 30), (230, 40, 40)


def _fit(path, height: int) -> tuple[Image.Image, float]:
    with Image.open(path) as im:
        im = im.convert("RGB")
        f = height / im.height
        return im.resize((max(1, round(im.width * f)), height), Image.LANCZOS), f


def draw_keypoint_samples(samples: list[dict], height: int = 200, gap: int = 8) -> Image.Image:
    """One row per sample transfer: source with its keypoints | target with the annotations (rings) and the
    predictions (dots, same colour per keypoint), each linked to its annotation in green (correct) or red."""
    rows = []
    for s in samples:
        src, fs = _fit(s["src"], height)
        trg, ft = _fit(s["trg"], height)
        row = Image.new("RGB", (src.width + gap + trg.width, height), "white")
        row.paste(src, (0, 0))
        row.paste(trg, (src.width + gap, 0))
        d = ImageDraw.Draw(row)
        off = src.width + gap
        colors = pair_colors(len(s["src_kps"]))
        for (sx, sy), (px, py), (tx, ty), ok, c in zip(s["src_kps"] * fs, s["pred"] * ft, s["trg_kps"] * ft,
                                                       s["correct"], colors, strict=True):
            d.ellipse((sx - 4, sy - 4, sx + 4, sy + 4), fill=c, outline="black")
            d.line((off + px, py, off + tx, ty), fill=GOOD if ok else BAD, width=2)
            d.ellipse((off + tx - 5, ty - 5, off + tx + 5, ty + 5), outline=c, width=2)
            d.ellipse((off + px - 3, py - 3, off + px + 3, py + 3), fill=c, outline="black")
        d.text((4, 4), f"{s['cls']}: {s['name']}", fill="white", stroke_width=2, stroke_fill="black")
        rows.append(row)
    if not rows:
        return Image.new("RGB", (height, height), "white")
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + gap
    return canvas


def draw_homography(result, height: int = 480, gap: int = 10, max_lines: int = 400) -> Image.Image:
    """IMG1 | IMG2 with every foreground Best Buddy (at most `max_lines`, evenly spread) as a line coloured by its
    error under the true homography: green <= 5 px, yellow <= 5 % of IMG2's diagonal, red beyond."""
    im1, f1 = _fit(result.image1, height)
    im2, f2 = _fit(result.image2, height)
    canvas = Image.new("RGB", (im1.width + gap + im2.width, height), "white")
    canvas.paste(im1, (0, 0))
    canvas.paste(im2, (im1.width + gap, 0))
    d = ImageDraw.Draw(canvas)
    n = len(result.errors)
    diag = float(np.hypot(*result.size2))
    pick = np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int)) if n else np.zeros(0, int)
    for i in pick:
        (x1, y1), (x2, y2), e = result.points1[i] * f1, result.points2[i] * f2, result.errors[i]
        c = GOOD if e <= 5 else FAIR if e <= 0.05 * diag else BAD
        d.line((x1, y1, im1.width + gap + x2, y2), fill=c, width=1)
        d.ellipse((x1 - 2, y1 - 2, x1 + 2, y1 + 2), fill=c)
        d.ellipse((im1.width + gap + x2 - 2, y2 - 2, im1.width + gap + x2 + 2, y2 + 2), fill=c)
    m = result.metrics
    text = (f"{m['num_matches']} best buddies; green <= 5 px: {100 * (m['within_px']['5'] or 0):.1f}%, "
            f"yellow <= 5% diagonal: {100 * (m['within_diag']['0.05'] or 0):.1f}%")
    d.text((4, 4), text, fill="white", stroke_width=2, stroke_fill="black")
    return canvas
