"""Camera frames from real photos warped by known homographies (the robotics tests' fixtures).

`warped_sequence(photo, n)` returns n frames of the photo's size: frame 0 is the photo, frame k the photo seen
through the homography H_k (a small rotation, zoom, shift and tilt about the centre), so a point x of frame 0
appears at H_k x in frame k (pixel centres, (x, y, 1) homogeneous). Warped with Pillow's bicubic perspective
transform; the borders the warp exposes are black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from testutil import EXAMPLES


def photos() -> dict[str, np.ndarray]:
    """The real photos: examples/ (the paper's pair) and scikit-image's CC0 astronaut and coffee."""
    from skimage import data

    out = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(EXAMPLES).glob("img_*.png"))}
    out["astronaut"], out["coffee"] = data.astronaut(), data.coffee()
    return out


def homography(k: int, size: tuple[int, int]) -> np.ndarray:
    """H_k (3x3) for frame k of an (H, W) frame: rotate 2k degrees, zoom 1 + 0.03k, shift (3k, -2k) px, tilt."""
    h, w = size
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
    a, s = np.deg2rad(2.0 * k), 1 + 0.03 * k
    rot = np.array([[s * np.cos(a), -s * np.sin(a), 3.0 * k], [s * np.sin(a), s * np.cos(a), -2.0 * k],
                    [2e-5 * k, -1e-5 * k, 1]])
    return c @ rot @ np.linalg.inv(c)


def warp(photo: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The photo seen through H (same size): output(x) = photo(H^-1 x)."""
    inv = np.linalg.inv(H)
    inv = inv / inv[2, 2]
    out = Image.fromarray(photo).transform((photo.shape[1], photo.shape[0]), Image.Transform.PERSPECTIVE,
                                           tuple(inv.reshape(-1)[:8]), resample=Image.Resampling.BICUBIC)
    return np.asarray(out)


def warped_sequence(photo: np.ndarray, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, homographies): frame k = warp(photo, H_k), H_0 = identity."""
    hs = [homography(k, photo.shape[:2]) for k in range(n)]
    return [photo if k == 0 else warp(photo, hs[k]) for k in range(n)], hs


def apply(H: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """(K, 2) (y, x) points mapped by H (acting on (x, y, 1)), as (y, x)."""
    xy1 = np.c_[yx[:, 1], yx[:, 0], np.ones(len(yx))] @ H.T
    return np.c_[xy1[:, 1] / xy1[:, 2], xy1[:, 0] / xy1[:, 2]]


def to_input_pixels(points, input_hw, resized_hw) -> np.ndarray:
    """(K, 2) (y, x) of the resized image -> pixel centres of the input image (as `StreamMatch.frame_points`)."""
    scale = np.array([input_hw[0] / resized_hw[0], input_hw[1] / resized_hw[1]])
    return (np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5) * scale - 0.5
