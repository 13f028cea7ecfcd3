"""`find_correspondences`: Best Buddies in the foreground, clustered and ranked as the original (SEMANTICS §6)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from . import kernels
from .config import check_match_args
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
        from . import progress as status

        with status.captured_warnings(f"scikit-learn k-means ({n} best buddies, k={k})"):
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


def _best_buddies_for_pair(keys1, grid1, keys2, grid2, bin: bool, exact_gemm: bool, precision: str,
                           hierarchy: int = 2):
    """Best Buddies of one pair, and a function giving the descriptor rows k-means needs.

    Args:
        keys1, keys2: unbinned descriptors (T1, C), (T2, C), or lists of per-layer (T, C_l) tensors (the descriptor
            is then the per-layer concatenation, binned per layer as `Extractor.extract` does).
        grid1, grid2: (Hp, Wp) of each image.
        bin: log-bin the descriptors (the original's default).
        exact_gemm: with bin, match on materialised binned rows (one K = 17 C GEMM, the previous path) instead of
            `kernels.best_buddies_binned` (shifted Gram matrices: the same sums in another order).
        precision: the Best-Buddies GEMM precision.

    Returns:
        (BestBuddies, rows) with ``rows(idx1, idx2) -> (desc1[idx1], desc2[idx2])`` float32 tensors (N, D): the
        (binned) descriptor rows of the given tokens, computed only for them on the binned-Gram path.
    """
    layers1 = list(keys1) if isinstance(keys1, (list, tuple)) else [keys1]
    layers2 = list(keys2) if isinstance(keys2, (list, tuple)) else [keys2]

    def cat(parts):
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    if bin and exact_gemm:
        d1 = cat([kernels.log_bin(x, grid1, hierarchy) for x in layers1])
        d2 = cat([kernels.log_bin(x, grid2, hierarchy) for x in layers2])
    elif not bin:
        d1, d2 = cat(layers1), cat(layers2)
    if not bin or exact_gemm:
        return kernels.best_buddies(d1, d2, precision=precision).check(), lambda i1, i2: (d1[i1], d2[i2])
    bb = kernels.best_buddies_binned(cat(layers1), grid1, cat(layers2), grid2, hierarchy=hierarchy,
                                     precision=precision).check()  # device NaN/Inf: reported here

    def rows(idx1, idx2):
        r1 = cat([kernels.log_bin_rows(x, grid1, idx1, hierarchy) for x in layers1])
        r2 = cat([kernels.log_bin_rows(x, grid2, idx2, hierarchy) for x in layers2])
        return r1, r2

    return bb, rows


def find_correspondences(image1, image2, num_pairs: int = 10, load_size=224, layer: int = 9, facet: str = "key",
                         bin: bool = True, thresh: float = 0.05, model: str = "dino_vits8", stride: int | str = "auto",
                         weights=None, backend: str = "auto", device="auto", *, extractor=None,
                         precision: str = "fp32", match_precision: str = "fp32", kmeans_labels=None,
                         progress: bool = False, exact_gemm: bool = False) -> Correspondences:
    """Best-Buddies correspondences between two images, as the original `find_correspondences`.

    Args:
        image1, image2: path, PIL image or HxWx3 uint8 array.
        num_pairs: number of pairs to return (k-means clusters); fewer when fewer best buddies survive.
        extractor: an existing `Extractor` to reuse (then model/stride/weights/backend/device/precision are ignored).
        precision: the ViT's precision when the extractor is created here ("fp32" exact, "bf16", "fp16").
        match_precision: GEMM precision of Best Buddies ("fp32" default, exact; "bf16"/"fp16" faster on GPUs).
        kmeans_labels: labels of the surviving best buddies to use instead of running k-means.
        exact_gemm: with bin=True, match on materialised 6528-d binned rows (the previous path) instead of the
            shifted-Gram `kernels.best_buddies_binned` (default: same results, ~8x fewer FLOPs, binned rows
            computed only for the surviving best buddies).

    Returns:
        `Correspondences`; with zero surviving best buddies, empty points (the original crashes there).
    """
    from .engine.extractor import Extractor

    num_pairs, thresh = check_match_args(num_pairs, thresh)
    ex = extractor or Extractor(model=model, stride=stride, weights=weights, backend=backend, device=device,
                                precision=precision, progress=progress)
    from . import progress as status

    views = []
    for name, image in (("image1", image1), ("image2", image2)):
        batch, pil = ex.preprocess(image, load_size, name=name)
        with status.step(f"forward of {name} ({batch.shape[-2]}x{batch.shape[-1]} pixels, {ex.spec.name} stride "
                         f"{ex.stride}, {ex.backend.name})"):
            f = ex.extract(batch, layer=layer, facet=facet, bin=False, saliency=True)
        views.append(view_of(f, 0, layer, pil))
    with status.step("matching (Best Buddies" + (", log-binned" if bin else "") + ")"):
        return match_views(views[0], views[1], num_pairs=num_pairs, bin=bin, thresh=thresh, stride=ex.stride,
                           patch_size=ex.patch_size, match_precision=match_precision, kmeans_labels=kmeans_labels,
                           exact_gemm=exact_gemm)


@dataclass
class ImageView:
    """One image's extracted data, what `match_views` needs (from `Extractor.extract` or a feature store).

    keys: (T, C) float32 unbinned descriptors, or a list of (T, C_l) tensors (one per requested layer, binned
        separately and concatenated in that order when bin=True, as `Extractor.extract` does).
    saliency: (T,) float32 in [0, 1].
    num_patches: (Hp, Wp) with Hp * Wp == T, tokens row-major.
    image: the resized PIL image the points refer to.
    """

    keys: torch.Tensor | list[torch.Tensor]
    saliency: torch.Tensor
    num_patches: tuple[int, int]
    image: Image.Image


def view_of(features, i: int, layer, image: Image.Image) -> ImageView:
    """The `ImageView` of item `i` of an unbinned `Features` batch (`layer` as passed to `extract`)."""
    if isinstance(layer, (list, tuple)):
        keys = [features.per_layer[lyr][i] for lyr in layer]
    else:
        keys = features.descriptors[i]
    return ImageView(keys=keys, saliency=features.saliency[i], num_patches=features.num_patches, image=image)


def match_views(view1: ImageView, view2: ImageView, *, num_pairs: int = 10, bin: bool = True,
                thresh: float = 0.05, stride: int = 4, patch_size: int = 8, match_precision: str = "fp32",
                kmeans_labels=None, exact_gemm: bool = False, select: bool = True) -> Correspondences:
    """The per-pair step of `find_correspondences` on already extracted data (no model involved).

    Best Buddies of the (binned, when `bin`) descriptors without materialising binned rows (unless `exact_gemm`),
    the foreground filter, k-means and the ranking. `find_correspondences`, `Matcher` and the batch layers all
    call this function, so they return the same fields for the same inputs.

    Args:
        view1, view2: `ImageView` of each image (keys (T, C) unbinned, saliency (T,), grid, resized image).
        num_pairs: k-means clusters / pairs returned; thresh: saliency threshold of the foreground.
        stride, patch_size: the ViT's, to map tokens to pixels.
        exact_gemm: with bin, Best Buddies on materialised binned rows instead of the shifted-Gram kernel.
        select: False skips k-means and the ranking (empty points, labels and indices): for callers that use
            every foreground best buddy (`bbs_mask`, `nn_1`), as the homography evaluation does.

    Returns:
        `Correspondences`; with zero surviving best buddies, empty points.
    """
    bb, rows = _best_buddies_for_pair(view1.keys, tuple(view1.num_patches), view2.keys, tuple(view2.num_patches),
                                      bin, exact_gemm, match_precision)
    sal1, sal2 = view1.saliency, view2.saliency
    fg1, fg2 = sal1 > thresh, sal2 > thresh
    bbs = foreground_filter(bb.mask, bb.nn_2, fg1, fg2)
    bb_idx = torch.nonzero(bbs, as_tuple=False).squeeze(1)
    partner = bb.nn_1[bb_idx]
    scores = ((sal1[bb_idx] + sal2[partner]) / 2).cpu().numpy()  # float32, as the original ranks them
    if bb_idx.numel() and select:
        r1, r2 = rows(bb_idx, partner)
        chosen, labels = select_pairs(r1.cpu().numpy(), r2.cpu().numpy(), scores, num_pairs, kmeans_labels)
    else:
        chosen, labels = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    idx1 = bb_idx.cpu().numpy()[chosen]
    idx2 = bb.nn_1.cpu().numpy()[idx1]
    grid1, grid2 = tuple(view1.num_patches), tuple(view2.num_patches)
    return Correspondences(
        points1=token_to_pixel(idx1, grid1, stride, patch_size),
        points2=token_to_pixel(idx2, grid2, stride, patch_size),
        image1=view1.image, image2=view2.image, nn_1=bb.nn_1, sim_1=bb.sim_1, nn_2=bb.nn_2, sim_2=bb.sim_2,
        bbs_mask=bbs, mutual_mask=bb.mask, fg_mask1=fg1, fg_mask2=fg2, saliency1=sal1, saliency2=sal2,
        kmeans_labels=labels, indices1=idx1.astype(np.int64), indices2=idx2.astype(np.int64),
        num_patches1=grid1, num_patches2=grid2,
    )
