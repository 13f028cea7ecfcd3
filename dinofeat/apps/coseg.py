"""`dinofeat.cosegment`: the common foreground of a set of images, as the original `cosegmentation.py`.

Stages (each a function, so that tests can check one given the previous one's output):
extraction (one forward per image, batched) -> low-resolution saliency -> optional outlier removal (CLS cosine)
-> L2-normalised descriptors -> elbow k-means (faiss) -> saliency votes -> salient-cluster mask -> GrabCut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .common import (
    ImageFeatures,
    KMeansModel,
    check_kmeans_method,
    check_number,
    check_positive_int,
    derived_extractor,
    elbow_kmeans,
    extract_features,
    image_list,
    l2_normalized,
    low_res_saliency,
    make_extractor,
)
from .defaults import COSEG

LOW_RES_SALIENCY_STRIDE = 8  # the original's saliency extractor stride (patch size when 8 does not divide it)


@dataclass
class CosegResult:
    """One image's co-segmentation.

    image: the resized PIL image (H, W).
    mask: (H, W) bool, the foreground after GrabCut (all False for an outlier image).
    grid_mask: (Hp, Wp) bool, patches whose cluster is salient (before resizing and GrabCut).
    labels: (Hp, Wp) int64 k-means cluster of each patch (-1 for an outlier image).
    saliency: (Hp, Wp) float32 saliency used for the votes.
    inlier: False when remove_outliers dropped the image.
    """

    image: Image.Image
    mask: np.ndarray
    grid_mask: np.ndarray
    labels: np.ndarray
    saliency: np.ndarray
    inlier: bool = True


@dataclass
class ForegroundStage:
    """What the first (foreground) stage leaves for co-segmentation and part co-segmentation.

    feats: per-image extraction; saliency: per-image (T,) float32; normalized: per-image (T, C) float32 unit rows;
    model: the k-means kept by the elbow; labels: per-image (T,) int64; num_labels: k + 1 as the original counts;
    votes: (num_labels,) float; salient: cluster ids voted foreground; inliers: bool per image; objectives: elbow.
    """

    feats: list[ImageFeatures]
    saliency: list[np.ndarray]
    normalized: list[np.ndarray]
    model: KMeansModel
    labels: list[np.ndarray]
    num_labels: int
    votes: np.ndarray
    salient: np.ndarray
    inliers: np.ndarray
    objectives: list


def vote_salient(labels: list[np.ndarray], saliency: list[np.ndarray], num_labels: int, thresh: float,
                 votes_percentage: float, num_images: int, voters=None) -> tuple[np.ndarray, np.ndarray]:
    """Each voting image votes for the clusters whose mean saliency there exceeds `thresh`; clusters with at least
    ceil(num_images * votes_percentage / 100) votes are salient. Returns (votes (num_labels,), salient ids)."""
    votes = np.zeros(num_labels)
    for i, (lab, sal) in enumerate(zip(labels, saliency, strict=True)):
        if voters is not None and not voters[i]:
            continue
        for label in range(num_labels):
            members = sal[lab == label]
            if members.size and members.mean() > thresh:  # an empty cluster's mean is NaN: no vote
                votes[label] += 1
    salient = np.nonzero(votes >= np.ceil(num_images * votes_percentage / 100))[0]
    return votes, salient


def outlier_inliers(cls: np.ndarray, outliers_thresh: float) -> np.ndarray:
    """(N, C) CLS descriptors -> (N,) bool: cosine to their mean >= outliers_thresh (torch's cosine, float32)."""
    t = torch.from_numpy(np.ascontiguousarray(cls, dtype=np.float32))
    sims = torch.nn.functional.cosine_similarity(t, t.mean(dim=0)[None], dim=1)
    return (sims >= outliers_thresh).numpy()


def grabcut_refine(image: Image.Image, grid_mask: np.ndarray, kernel: int = COSEG.grabcut_kernel,
                   iters: int = COSEG.grabcut_iters) -> np.ndarray:
    """(Hp, Wp) bool grid mask -> (H, W) bool at the image's size: resized as the original (a mode-"1" Pillow
    image, which Pillow resizes with NEAREST whatever filter is asked), eroded `kernel`x`kernel` into sure
    foreground / background, GrabCut (`iters`, init with mask); the resized mask where GrabCut cannot run."""
    import cv2

    width, height = image.size
    resized = np.array(Image.fromarray(np.ascontiguousarray(grid_mask, dtype=bool)).resize((width, height),
                                                                                          Image.LANCZOS))
    k = np.ones((kernel, kernel), np.uint8)
    fg = cv2.erode(np.uint8(resized), k)
    bg = cv2.erode(np.uint8(1 - resized.astype(np.int64)), k)
    full = np.full((height, width), cv2.GC_PR_FGD, np.uint8)
    full[bg == 1] = cv2.GC_BGD
    full[fg == 1] = cv2.GC_FGD
    try:
        cv2.grabCut(np.array(image.convert("RGB")), full, None, np.zeros((1, 65), np.float64),
                    np.zeros((1, 65), np.float64), iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # no sure foreground or background: keep the resized mask, as the original
        return resized.astype(bool)
    return (full == cv2.GC_FGD) | (full == cv2.GC_PR_FGD)


def saliency_extractor_for(ex, saliency_extractor, low_res: bool):
    if not low_res:
        return ex
    if saliency_extractor is not None:
        return make_extractor(saliency_extractor, None, None, None, None, None)
    p = ex.patch_size
    return derived_extractor(ex, LOW_RES_SALIENCY_STRIDE if p % LOW_RES_SALIENCY_STRIDE == 0 else p)


def foreground_stage(items, ex, sal_ex, *, load_size, layer, facet, bin, thresh, votes_percentage, sample_interval,
                     elbow, remove_outliers, outliers_thresh, low_res_saliency_maps, kmeans, batch_size, progress,
                     voters=None, max_clusters=COSEG.max_clusters) -> ForegroundStage:
    """Extraction, saliency, outliers, elbow k-means and votes (cosegmentation.py up to the salient labels).

    `voters`: bool per item (None: all); only voters vote and count towards `votes_percentage`.
    """
    feats = extract_features(ex, items, load_size, layer, facet, bin, saliency=not low_res_saliency_maps,
                             include_cls=remove_outliers, batch_size=batch_size, progress=progress, desc="descriptors")
    if low_res_saliency_maps:
        saliency = low_res_saliency(sal_ex, items, feats, full_size=load_size is None, batch_size=batch_size)
    else:
        saliency = [f.saliency for f in feats]
    voters = np.ones(len(items), bool) if voters is None else np.asarray(voters, bool)
    inliers = np.ones(len(items), bool)
    if remove_outliers:
        inliers = outlier_inliers(np.stack([f.cls for f in feats]), outliers_thresh)
        if not inliers.any():
            raise InputError(f"outliers_thresh={outliers_thresh}: every image is an outlier; lower it")
    kept = np.nonzero(inliers)[0]
    normalized = [l2_normalized(f.descriptors) for f in feats]
    x_all = np.concatenate([normalized[i] for i in kept])
    x_train = np.concatenate([normalized[i][::sample_interval] for i in kept])
    device = ex.device if kmeans == "torch" else "cpu"
    model, labels_all, objectives = elbow_kmeans(x_all, x_train, elbow, range(1, max_clusters + 1), method=kmeans,
                                                 niter=COSEG.kmeans_niter, nredo=COSEG.kmeans_nredo, device=device)
    k = model.centroids.shape[0]
    labels = [np.full(feats[i].descriptors.shape[0], -1, np.int64) for i in range(len(items))]
    for i, part in zip(kept, np.split(labels_all, np.cumsum([feats[i].descriptors.shape[0] for i in kept])[:-1]),
                       strict=True):
        labels[i] = part
    num_labels = k + 1  # the original's `np.max(n_clusters) + 1`: one label more than clusters, never voted for
    voting = voters & inliers
    votes, salient = vote_salient([labels[i] for i in kept], [saliency[i] for i in kept], num_labels, thresh,
                                  votes_percentage, int(voting.sum()), voters=voting[kept])
    return ForegroundStage(feats=feats, saliency=saliency, normalized=normalized, model=model, labels=labels,
                           num_labels=num_labels, votes=votes, salient=salient, inliers=inliers,
                           objectives=objectives)


def check_common(elbow, thresh, votes_percentage, sample_interval, kmeans, batch_size):
    check_number(elbow, "elbow")
    check_number(thresh, "thresh")
    check_number(votes_percentage, "votes_percentage")
    check_positive_int(sample_interval, "sample_interval")
    check_positive_int(batch_size, "batch_size")
    check_kmeans_method(kmeans)


def cosegment(images, elbow: float = COSEG.elbow, load_size=COSEG.load_size, layer: int = COSEG.layer,
              facet: str = COSEG.facet, bin: bool = COSEG.bin, thresh: float = COSEG.thresh, model: str = "dino_vits8",
              stride: int = COSEG.stride, votes_percentage: float = COSEG.votes_percentage,
              sample_interval: int = COSEG.sample_interval, remove_outliers: bool = COSEG.remove_outliers,
              outliers_thresh: float = COSEG.outliers_thresh,
              low_res_saliency_maps: bool = COSEG.low_res_saliency_maps, weights=None, backend: str = "auto",
              device="auto", *, extractor=None, saliency_extractor=None, precision: str = "fp32",
              kmeans: str = "faiss", grabcut: bool = True, batch_size: int = 8,
              progress: bool = False) -> list[CosegResult]:
    """Co-segmentation of a set of images (the original `find_cosegmentation`).

    Args:
        images: list of paths / PIL images / HxWx3 uint8 arrays (or one directory).
        kmeans: "faiss" (the original's faiss.Kmeans, default) or "torch" (Lloyd k-means on the extractor's
            device: the fast mode, not identical).
        saliency_extractor: a stride-8 `Extractor` for the low-resolution saliency (derived from `extractor`
            with the same weights when None).
        grabcut: refine with GrabCut (the original always does); False returns the resized grid mask.

    Returns:
        one `CosegResult` per image, in input order: mask (H, W) bool, grid_mask (Hp, Wp) bool, labels, saliency.
    """
    check_common(elbow, thresh, votes_percentage, sample_interval, kmeans, batch_size)
    items = image_list(images)
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    sal_ex = saliency_extractor_for(ex, saliency_extractor, low_res_saliency_maps)
    st = foreground_stage(items, ex, sal_ex, load_size=load_size, layer=layer, facet=facet, bin=bin, thresh=thresh,
                          votes_percentage=votes_percentage, sample_interval=sample_interval, elbow=elbow,
                          remove_outliers=remove_outliers, outliers_thresh=outliers_thresh,
                          low_res_saliency_maps=low_res_saliency_maps, kmeans=kmeans, batch_size=batch_size,
                          progress=progress)
    import cv2

    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's RNG: start from a fresh process's state
    out = []
    for i, f in enumerate(st.feats):
        grid = np.isin(st.labels[i], st.salient).reshape(f.num_patches) & bool(st.inliers[i])
        if not st.inliers[i]:
            mask = np.zeros(f.load_size, bool)
        elif grabcut:
            mask = grabcut_refine(f.image, grid)
        else:
            mask = np.array(Image.fromarray(grid).resize(f.image.size, Image.NEAREST))
        out.append(CosegResult(image=f.image, mask=mask, grid_mask=grid, labels=st.labels[i].reshape(f.num_patches),
                               saliency=np.asarray(st.saliency[i], np.float32).reshape(f.num_patches),
                               inlier=bool(st.inliers[i])))
    return out
