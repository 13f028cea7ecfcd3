"""`find_correspondences`: Best Buddies in the foreground, clustered and ranked as the original (SEMANTICS §6)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from . import kernels
from .errors import InputError


@dataclass
class Correspondences:
    """What `find_correspondences` returns (index fields are in token space, tokens row-major).

    points1, points2: lists of (y, x) Python ints in the resized images' pixels (`4 * v + 4` at stride 4, p 8).
    image1, image2: the resized PIL images the points refer to.
    nn_1 (T1,) int64, sim_1 (T1,) float32: nearest neighbour in image 2 of each patch of image 1, and its cosine.
    nn_2 (T2,) int64, sim_2 (T2,) float32: the same from image 2 to image 1.
    bbs_mask (T1,) bool: best buddies that survive the foreground filter (the ones k-means sees).
    mutual_mask (T1,) bool: all mutual nearest neighbours before the foreground filter.
    fg_mask1 (T1,), fg_mask2 (T2,) bool: saliency > thresh.
    saliency1 (T1,), saliency2 (T2,) float32.
    kmeans_labels (N_bb,) int32: cluster of each surviving best buddy (in increasing image-1 index).
    indices1, indices2 (K,) int64: token indices of the returned pairs, in cluster-label order.
    num_patches1, num_patches2: (Hp, Wp) of each image.
    """

    points1: list[tuple[int, int]]
    points2: list[tuple[int, int]]
    image1: Image.Image
    image2: Image.Image
    nn_1: torch.Tensor
    sim_1: torch.Tensor
    nn_2: torch.Tensor
    sim_2: torch.Tensor
    bbs_mask: torch.Tensor
    mutual_mask: torch.Tensor
    fg_mask1: torch.Tensor
    fg_mask2: torch.Tensor
    saliency1: torch.Tensor
    saliency2: torch.Tensor
    kmeans_labels: np.ndarray
    indices1: np.ndarray
    indices2: np.ndarray
    num_patches1: tuple[int, int]
    num_patches2: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points1)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (points as (K, 2) int64 (y, x); images as HxWx3 uint8)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            elif isinstance(v, Image.Image):
                v = np.asarray(v)
            elif f.name.startswith("points"):
                v = np.asarray(v, dtype=np.int64).reshape(-1, 2)
            out[f.name] = np.asarray(v)
        return out


def foreground_filter(mutual: torch.Tensor, nn_2: torch.Tensor, fg1: torch.Tensor, fg2: torch.Tensor) -> torch.Tensor:
    """The original's foreground filter (SEMANTICS §6.4), on the tensors' device.

    bbs[i] = mutual[i] & fg1[i] & M[i], where M[i] is true iff some foreground j of image 2 has nn_2[j] == i
    (looser than "both ends foreground", reproduced on purpose).
    """
    hit = torch.zeros_like(mutual)
    hit[nn_2[fg2]] = True
    return mutual & fg1 & hit


def select_pairs(desc1: np.ndarray, desc2_of_bb: np.ndarray, scores: np.ndarray, num_pairs: int,
                 labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means over the L2-normalised concatenated pair descriptors, then the best-scored member per cluster.

    Args:
        desc1: (N, C) descriptors of the surviving best buddies in image 1 (increasing index order).
        desc2_of_bb: (N, C) descriptors of their partners in image 2.
        scores: (N,) float32 mean saliency of each pair.
        labels: (N,) cluster labels to use instead of running k-means (to check the stage given known labels).

    Returns:
        (chosen, labels): chosen (K,) int64 positions into the N pairs, in cluster-label order; labels (N,) int32.
    """
    n = desc1.shape[0]
    k = min(num_pairs, n)
    if labels is None:
        from sklearn.cluster import KMeans

        together = np.concatenate((desc1, desc2_of_bb), axis=1)
        length = np.sqrt((together**2).sum(axis=1))[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            normalized = together / length
        labels = KMeans(n_clusters=k, random_state=0).fit(normalized).labels_
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InputError(f"kmeans_labels: expected shape ({n},), got {labels.shape}")
    best = np.full(k, -np.inf, dtype=np.float64)
    chosen = np.full(k, -1, dtype=np.int64)
    for i, (label, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=False)):
        if score > best[label]:  # strictly greater: the earliest index wins ties
            best[label] = score
            chosen[label] = i
    return chosen[chosen >= 0], labels.astype(np.int32)


def token_to_pixel(idx: np.ndarray, num_patches: tuple[int, int], stride: int, patch: int) -> list[tuple[int, int]]:
    """Token index -> (y, x) pixel of its window centre, `(v - 1) * s + s + p // 2` as the original."""
    wp = num_patches[1]
    out = []
    for t in np.asarray(idx).tolist():
        row, col = int(t / wp), t % wp
        out.append(((row - 1) * stride + stride + patch // 2, (col - 1) * stride + stride + patch // 2))
    return out


def check_match_args(num_pairs, thresh) -> float:
    """Validate `num_pairs` (int >= 1, not bool) and `thresh` (a number, not NaN); returns thresh as a float."""
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, (int, np.integer)) or num_pairs < 1:
        raise InputError(f"num_pairs={num_pairs!r}: expected an int >= 1")
    try:
        value = float(thresh)
    except (TypeError, ValueError):
        raise InputError(f"thresh={thresh!r}: expected a number (saliency threshold, default 0.05)") from None
    if np.isnan(value):
        raise InputError("thresh=nan: expected a number (saliency threshold, default 0.05)")
    return value


def find_correspondences(image1, image2, num_pairs: int = 10, load_size=224, layer: int = 9, facet: str = "key",
                         bin: bool = True, thresh: float = 0.05, model: str = "dino_vits8", stride: int = 4,
                         weights=None, backend: str = "auto", device="auto", *, extractor=None,
                         precision: str = "fp32", match_precision: str = "fp32", kmeans_labels=None,
                         progress: bool = False) -> Correspondences:
    """Best-Buddies correspondences between two images, as the original `find_correspondences`.

    Args:
        image1, image2: path, PIL image or HxWx3 uint8 array.
        num_pairs: number of pairs to return (k-means clusters); fewer when fewer best buddies survive.
        extractor: an existing `Extractor` to reuse (then model/stride/weights/backend/device/precision are ignored).
        precision: the ViT's precision when the extractor is created here ("fp32" exact, "bf16", "fp16").
        match_precision: GEMM precision of Best Buddies ("fp32" default, exact; "bf16"/"fp16" faster on GPUs).
        kmeans_labels: labels of the surviving best buddies to use instead of running k-means.

    Returns:
        `Correspondences`; with zero surviving best buddies, empty points (the original crashes there).
    """
    from .engine.extractor import Extractor

    thresh = check_match_args(num_pairs, thresh)
    ex = extractor or Extractor(model=model, stride=stride, weights=weights, backend=backend, device=device,
                                precision=precision, progress=progress)
    batch1, pil1 = ex.preprocess(image1, load_size, name="image1")
    batch2, pil2 = ex.preprocess(image2, load_size, name="image2")
    f1 = ex.extract(batch1, layer=layer, facet=facet, bin=bin, saliency=True)
    f2 = ex.extract(batch2, layer=layer, facet=facet, bin=bin, saliency=True)
    d1, d2 = f1.descriptors[0], f2.descriptors[0]
    sal1, sal2 = f1.saliency[0], f2.saliency[0]
    bb = kernels.best_buddies(d1, d2, precision=match_precision)
    fg1, fg2 = sal1 > thresh, sal2 > thresh
    bbs = foreground_filter(bb.mask, bb.nn_2, fg1, fg2)
    bb_idx = torch.nonzero(bbs, as_tuple=False).squeeze(1)
    partner = bb.nn_1[bb_idx]
    scores = ((sal1[bb_idx] + sal2[partner]) / 2).cpu().numpy()  # float32, as the original ranks them
    if bb_idx.numel():
        chosen, labels = select_pairs(d1[bb_idx].cpu().numpy(), d2[partner].cpu().numpy(), scores, num_pairs,
                                      kmeans_labels)
    else:
        chosen, labels = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    idx1 = bb_idx.cpu().numpy()[chosen]
    idx2 = bb.nn_1.cpu().numpy()[idx1]
    p, s = ex.patch_size, ex.stride
    return Correspondences(
        points1=token_to_pixel(idx1, f1.num_patches, s, p), points2=token_to_pixel(idx2, f2.num_patches, s, p),
        image1=pil1, image2=pil2, nn_1=bb.nn_1, sim_1=bb.sim_1, nn_2=bb.nn_2, sim_2=bb.sim_2, bbs_mask=bbs,
        mutual_mask=bb.mask, fg_mask1=fg1, fg_mask2=fg2, saliency1=sal1, saliency2=sal2, kmeans_labels=labels,
        indices1=idx1.astype(np.int64), indices2=idx2.astype(np.int64),
        num_patches1=f1.num_patches, num_patches2=f2.num_patches,
    )
