"""Drawing the applications' results (PCA views, co-segmentation, part co-segmentation), as the original scripts
draw them; re-exported by `dinofeat.viz`. Takes results duck-typed (numpy arrays + the resized PIL image)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# The original's part colours (matplotlib names): red, yellow, blue, lime, darkviolet, magenta, cyan, brown.
PART_COLORS = ((255, 0, 0), (255, 255, 0), (0, 0, 255), (0, 255, 0), (148, 0, 211), (255, 0, 255), (0, 255, 255),
               (165, 42, 42))


def _minmax_uint8(x: np.ndarray) -> np.ndarray:
    """Per-channel min-max over the grid to 0..255 (a constant channel gives 0)."""
    lo = x.min(axis=(0, 1), keepdims=True)
    span = x.max(axis=(0, 1), keepdims=True) - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0)
    return (y * 255).astype(np.uint8)


def pca_images(result, resize: bool = True) -> dict[str, Image.Image]:
    """{"0": .., "1": .., ..., "rgb": ..}: each component min-max normalised as a grey image, and the last three
    components as RGB (the original's `plot_pca`), nearest-resized to the image when `resize`."""
    comps = np.asarray(result.components, dtype=np.float32)
    out = {}
    for i in range(comps.shape[2]):
        out[str(i)] = Image.fromarray(_minmax_uint8(comps[:, :, i:i + 1])[:, :, 0], mode="L")
    if comps.shape[2] >= 3:
        out["rgb"] = Image.fromarray(_minmax_uint8(comps[:, :, -3:]), mode="RGB")
    if resize:
        out = {k: v.resize(result.image.size, Image.NEAREST) for k, v in out.items()}
    return out


def draw_pca(result, gap: int = 10) -> Image.Image:
    """The resized image beside the last three components as RGB (first component as grey when n < 3)."""
    views = pca_images(result)
    view = views.get("rgb", views["0"]).convert("RGB")
    return _side_by_side([result.image.convert("RGB"), view], gap)


def checkerboard(height: int, width: int, edge: int = 10) -> np.ndarray:
    """(H, W) float in {0.75, 1} * 255: the original's chessboard background."""
    rows = (np.arange(height) // edge) % 2 == 0
    cols = (np.arange(width) // edge) % 2 == 1
    board = rows[:, None].astype(float)
    board = np.where(cols[None, :], 1 - board, board)
    return np.where(board == 0, 0.75, 1.0) * 255


def draw_cosegmentation(result) -> Image.Image:
    """The foreground of the image over a grey chessboard (background pixels show the board)."""
    img = np.asarray(result.image.convert("RGB"), dtype=np.float64)
    mask = np.asarray(result.mask, bool)
    board = checkerboard(*mask.shape)[..., None].repeat(3, axis=2)
    return Image.fromarray(np.where(mask[..., None], img, board).astype(np.uint8), mode="RGB")


def draw_mask(result) -> Image.Image:
    """The binary mask as a black / white image."""
    return Image.fromarray(np.asarray(result.mask, bool).astype(np.uint8) * 255, mode="L")


def part_colors(n: int) -> list[tuple[int, int, int]]:
    if n <= len(PART_COLORS):
        return list(PART_COLORS[:n])
    from .pairs import pair_colors

    return pair_colors(n)


def draw_parts(result, alpha: float = 0.5) -> Image.Image:
    """Foreground over the chessboard with each part blended in its colour (alpha 0.5), background = board."""
    img = np.asarray(result.image.convert("RGB"), dtype=np.float64)
    parts = np.asarray(result.parts)
    fg = parts >= 0
    board = checkerboard(*parts.shape)[..., None].repeat(3, axis=2)
    out = np.where(fg[..., None], img, board)
    colors = np.asarray(part_colors(max(int(result.num_parts), 1)), dtype=np.float64)
    tinted = colors[np.clip(parts, 0, len(colors) - 1)]
    out = np.where(fg[..., None], (1 - alpha) * out + alpha * tinted, out)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def _side_by_side(images: list[Image.Image], gap: int) -> Image.Image:
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas
