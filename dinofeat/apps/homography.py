"""Homography accuracy of Best-Buddies correspondences (`dinofeat eval homography`).

For a pair (IMG1, IMG2) with the true homography H (pixel (x, y, 1) of IMG1 -> IMG2, original pixels): every
foreground Best Buddy (`Correspondences.bbs_mask`, not only the k-means picks) gives p1 -> p2, the tokens'
window centres mapped back to original pixels (`keypoints.token_centres`). Its error is ||H p1 - p2|| after
dehomogenising. Reported: the share within 1/3/5/10 px and within 1/5/10 % of IMG2's diagonal, the median error,
and the homography estimated from the correspondences with OpenCV's RANSAC (`cv2.findHomography`, reprojection
threshold `ransac_thresh` px, RNG seeded) scored by its mean corner error: the mean distance between IMG1's four
corners (0, 0), (w-1, 0), (0, h-1), (w-1, h-1) mapped by the estimate and by H (HPatches' homography accuracy).

Ground truth files: OpenCV FileStorage (XML / YAML, the first matrix node, as Oxford's `H1to3p.xml`) or a plain
3x3 text matrix (HPatches' `H_1_2`). A folder in the HPatches layout holds `1.ppm ... 6.ppm` and `H_1_2 ...
H_1_6`; image names may carry a prefix (`graf1.png`) and the matrices may be FileStorage files (`H1to3p.xml`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import IMAGE_SUFFIXES

WITHIN_PX = (1, 3, 5, 10)
WITHIN_DIAG = (0.01, 0.05, 0.1)
_SUFFIXES = (*IMAGE_SUFFIXES, ".ppm", ".pgm")


@dataclass
class HomographyResult:
    """metrics (what `homography.json` holds); points1 / points2 (N, 2) (x, y) original pixels of the foreground
    Best Buddies; errors (N,) px under H; the true and estimated (None when RANSAC fails) homographies."""

    metrics: dict
    points1: np.ndarray
    points2: np.ndarray
    errors: np.ndarray
    H: np.ndarray
    H_est: np.ndarray | None
    size1: tuple[int, int] = (0, 0)
    size2: tuple[int, int] = (0, 0)
    image1: Path | None = None
    image2: Path | None = None
    settings: dict = field(default_factory=dict)


def read_homography(path) -> np.ndarray:
    """(3, 3) float64 of an OpenCV FileStorage file (first matrix node) or a whitespace-separated 3x3 text file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"H: file not found: {str(path)!r}")
    head = path.read_bytes()[:64].lstrip()
    if head.startswith((b"<?xml", b"<opencv_storage", b"%YAML")) or path.suffix.lower() in (".xml", ".yml", ".yaml"):
        H = _read_filestorage(path)
    else:
        try:
            H = np.loadtxt(path, dtype=np.float64)
        except ValueError as e:
            raise InputError(f"H {str(path)!r}: not a 3x3 text matrix ({e})") from None
    if H.shape != (3, 3) or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        raise InputError(f"H {str(path)!r}: expected a finite invertible 3x3 matrix, got shape {H.shape}")
    return H


def _read_filestorage(path: Path) -> np.ndarray:
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as e:
        raise InputError(f"H {str(path)!r}: not an OpenCV FileStorage file ({str(e).strip()})") from None
    try:
        root = fs.root()
        for name in root.keys():
            node = fs.getNode(name)
            if node.isMap() or node.isSeq():
                mat = node.mat()
                if mat is not None:
                    return np.asarray(mat, dtype=np.float64)
    finally:
        fs.release()
    raise InputError(f"H {str(path)!r}: no matrix node in the FileStorage file")


def folder_pairs(folder) -> list[tuple[str, Path, Path, Path]]:
    """[(name, image 1, image k, H_1_k)] of an HPatches-layout folder, k = 2..6 where both files exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"FOLDER {str(folder)!r}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = {int(m.group(1)): p for p in files if p.suffix.lower() in _SUFFIXES
              and (m := re.fullmatch(r"\D*(\d)", p.stem))}
    mats = {int(m.group(1)): p for p in files
            if (m := re.fullmatch(r"H_?1_?(?:to)?(\d)p?", p.stem if p.suffix.lower() in (".xml", ".yml", ".yaml")
                                                          else p.name))}
    pairs = [(f"1_{k}", images[1], images[k], mats[k]) for k in range(2, 10) if 1 in images and k in images
             and k in mats]
    if not pairs:
        raise InputError(f"FOLDER {str(folder)!r}: no HPatches pairs (1.ppm with k.ppm and H_1_k, or graf1.png with "
                         f"graf3.png and H1to3p.xml); found {', '.join(p.name for p in files[:8]) or 'nothing'}")
    return pairs


def homography_metrics(p1: np.ndarray, p2: np.ndarray, H: np.ndarray, size1: tuple[int, int],
                       size2: tuple[int, int], ransac_thresh: float = 3.0) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """(metrics, errors (N,), estimated H or None) of correspondences p1 (N, 2) -> p2 (N, 2), (x, y) original
    pixels, under the true H; size1 / size2 (h, w) of the images. Shares are None without correspondences."""
    import cv2

    p1 = np.asarray(p1, np.float64).reshape(-1, 2)
    p2 = np.asarray(p2, np.float64).reshape(-1, 2)
    err = np.linalg.norm(project(H, p1) - p2, axis=1)
    metrics = {**error_shares(err, np.full(len(err), np.hypot(*size2))), "ransac_corner_error_px": None,
               "ransac_inliers": 0, "ransac_thresh_px": float(ransac_thresh)}
    H_est = None
    if len(err) >= 4:
        cv2.setRNGSeed(0)
        H_est, mask = cv2.findHomography(p1.astype(np.float32), p2.astype(np.float32), cv2.RANSAC,
                                         float(ransac_thresh))
        if H_est is not None:
            h, w = size1
            corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
            metrics["ransac_corner_error_px"] = float(np.linalg.norm(project(H_est, corners) - project(H, corners),
                                                                     axis=1).mean())
            metrics["ransac_inliers"] = int(mask.sum())
    return metrics, err, H_est


def error_shares(err: np.ndarray, diag: np.ndarray) -> dict:
    """num_matches, within_px / within_diag (shares in [0, 1], None without matches) and median_px of errors
    err (N,) px, each match's image diagonal diag (N,) px."""
    n = len(err)
    return {"num_matches": n, "within_px": {str(e): (float(np.mean(err <= e)) if n else None) for e in WITHIN_PX},
            "within_diag": {str(f): (float(np.mean(err <= f * diag)) if n else None) for f in WITHIN_DIAG},
            "median_px": float(np.median(err)) if n else None}


def project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by the 3x3 homography H, dehomogenised."""
    q = np.concatenate((pts, np.ones((len(pts), 1))), axis=1) @ np.asarray(H, np.float64).T
    return q[:, :2] / q[:, 2:3]


def best_buddy_points(corr, size1: tuple[int, int], size2: tuple[int, int], stride: int,
                      patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(p1, p2): every foreground Best Buddy of `Correspondences` corr as (N, 2) (x, y) pixels of the original
    images of (h, w) size1 / size2 (the window centres of `corr.points*`, scaled back)."""
    from .keypoints import token_centres

    idx1 = corr.bbs_mask.nonzero().flatten().cpu().numpy()
    idx2 = corr.nn_1.cpu().numpy()[idx1]
    out = []
    for idx, img, grid, (h, w) in ((idx1, corr.image1, corr.num_patches1, size1),
                                   (idx2, corr.image2, corr.num_patches2, size2)):
        out.append(token_centres(idx, (img.width / w, img.height / h), grid, stride, patch))
    return out[0], out[1]


def foreground_best_buddies(matcher, image1, image2):
    """`Correspondences` of the pair under the matcher's configuration with every foreground Best Buddy
    (`bbs_mask`) but without the k-means selection (empty points): features through the matcher's store."""
    from ..correspondences import match_views, view_of

    c, ex = matcher.config, matcher.extractor
    f1, f2 = matcher.features(image1), matcher.features(image2)
    return match_views(view_of(f1, 0, c.layer, f1.image), view_of(f2, 0, c.layer, f2.image), bin=c.bin,
                       thresh=c.thresh, stride=ex.stride, patch_size=ex.patch_size,
                       match_precision=c.match_precision, select=False)


def evaluate_homography(image1, image2, H, *, matcher=None, ransac_thresh: float = 3.0, **matcher_args):
    """`HomographyResult` of one pair (H: a (3, 3) array or a file `read_homography` reads). `matcher`: a
    `dinofeat.Matcher` to reuse, else one is made from `matcher_args` (the `Matcher` arguments)."""
    from ..pipeline.matcher import Matcher

    H = read_homography(H) if isinstance(H, (str, Path)) else np.asarray(H, np.float64)
    if H.shape != (3, 3):
        raise InputError(f"H: expected a 3x3 matrix, got shape {H.shape}")
    if isinstance(ransac_thresh, bool) or not isinstance(ransac_thresh, (int, float)) or not ransac_thresh > 0:
        raise InputError(f"--ransac-thresh {ransac_thresh!r}: expected a number of pixels > 0")
    from ..engine.preprocess import load_image

    m = matcher or Matcher(**matcher_args)
    sizes = [load_image(im, name=name).size[::-1] for im, name in ((image1, "IMG1"), (image2, "IMG2"))]
    size1, size2 = sizes
    corr = foreground_best_buddies(m, image1, image2)
    p1, p2 = best_buddy_points(corr, size1, size2, m.extractor.stride, m.extractor.patch_size)
    metrics, err, H_est = homography_metrics(p1, p2, H, size1, size2, ransac_thresh)
    c = m.config
    settings = {"model": m.extractor.model_name, "stride": m.extractor.stride, "layer": c.layer, "facet": c.facet,
                "bin": c.bin, "thresh": c.thresh, "load_size": c.load_size, "weights_sha256":
                m.extractor.weights_sha256}
    return HomographyResult(metrics=metrics, points1=p1, points2=p2, errors=err, H=H, H_est=H_est, size1=size1,
                            size2=size2,
                            image1=Path(image1) if isinstance(image1, (str, Path)) else None,
                            image2=Path(image2) if isinstance(image2, (str, Path)) else None, settings=settings)


def pooled_metrics(results: list[HomographyResult]) -> dict:
    """The metrics over several pairs: shares and median over all their correspondences pooled, the RANSAC corner
    error averaged over the pairs where RANSAC found a homography."""
    err = np.concatenate([r.errors for r in results] + [np.zeros(0)])
    diag = np.concatenate([np.full(len(r.errors), np.hypot(*r.size2)) for r in results] + [np.zeros(0)])
    corner = [r.metrics["ransac_corner_error_px"] for r in results if r.metrics["ransac_corner_error_px"] is not None]
    return {**error_shares(err, diag), "ransac_corner_error_px": float(np.mean(corner)) if corner else None,
            "pairs": len(results)}
