"""`dinofeat.part_cosegment`: common object parts of a set of images, as the original `part_cosegmentation.py`.

Co-segmentation's foreground stage, k-means of the foreground descriptors into parts (or an elbow, then the
parts of the clusters common to all images with `three_stages`), per-patch distances to the part centroids and
to the nearest background centroid as CRF unary energies, nearest-upsampled, dense CRF, argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .common import (
    check_positive_int,
    elbow_kmeans,
    image_list,
    make_extractor,
    train_kmeans,
)
from .coseg import check_common, foreground_stage, saliency_extractor_for
from .crf import dense_crf, resolve_crf
from .defaults import COSEG, PARTS


@dataclass
class PartsResult:
    """One image's part co-segmentation.

    image: the resized PIL image (H, W).
    parts: (H, W) int64 part index after the dense CRF, -1 for background.
    grid_parts: (Hp, Wp) int64 part index before the CRF (nearest part centroid or background), -1 background.
    num_parts: number of part labels (parts take values 0 .. num_parts - 1).
    crf: the CRF that ran ("pydensecrf" or "torch").
    """

    image: Image.Image
    parts: np.ndarray
    grid_parts: np.ndarray
    num_parts: int
    crf: str


def sq_distances(x: np.ndarray, centroids: np.ndarray, chunk_elems: int = 1 << 25) -> np.ndarray:
    """((x[:, None] - c[None]) ** 2).sum(2) in float32 as the original writes it, in row chunks: (N, k)."""
    out = np.empty((x.shape[0], centroids.shape[0]), np.float32)
    rows = max(1, chunk_elems // max(1, centroids.size))
    for s in range(0, x.shape[0], rows):
        out[s:s + rows] = ((x[s:s + rows, None, :] - centroids[None]) ** 2).sum(axis=2)
    return out


def part_energies(normalized: np.ndarray, part_centroids: np.ndarray, bg_centroids: np.ndarray,
                  num_patches: tuple[int, int]) -> np.ndarray:
    """(Hp, Wp, k + 1) float32: squared distance to each part centroid and the minimum to a background centroid
    (last channel; +inf without background centroids, where the original crashes), minus the per-patch maximum."""
    d_parts = sq_distances(normalized, part_centroids)
    if len(bg_centroids):
        d_bg = sq_distances(normalized, bg_centroids).min(axis=1)[:, None]
    else:
        d_bg = np.full((normalized.shape[0], 1), np.inf, np.float32)
    d = np.concatenate((d_parts, d_bg), axis=1).reshape(num_patches[0], num_patches[1], -1)
    finite = np.where(np.isfinite(d), d, -np.inf)
    return d - finite.max(axis=-1, keepdims=True)


def grid_labels(energies: np.ndarray) -> np.ndarray:
    """(Hp, Wp, k + 1) -> (Hp, Wp) int64: lowest energy (first on ties), -1 where it is background (channel k)."""
    lab = np.argmin(energies, axis=-1).astype(np.int64)
    lab[lab == energies.shape[-1] - 1] = -1
    return lab


def smooth_parts(energies: np.ndarray, image: Image.Image, crf: str, device="cpu") -> np.ndarray:
    """Energies nearest-upsampled to the image size (torch Upsample), dense CRF -> (H, W) int64, -1 background."""
    width, height = image.size
    u = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(energies)).permute(2, 0, 1)[None],
                                        size=(height, width), mode="nearest")[0].numpy()
    u = np.where(np.isfinite(u), u, np.float32(1e10)).astype(np.float32)
    lab = dense_crf(u, np.array(image.convert("RGB")), method=crf, device=device).astype(np.int64)
    lab[lab == energies.shape[-1] - 1] = -1
    return lab


def crop_augmentations(pil: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` random 95% crops of the image and `count` of its mirror (interleaved, as the original)."""
    flipped = pil.transpose(Image.FLIP_LEFT_RIGHT)
    ch, cw = int(pil.height * 0.95), int(pil.width * 0.95)
    out = []
    for _ in range(count):
        for src in (pil, flipped):
            top, left = int(rng.integers(0, pil.height - ch + 1)), int(rng.integers(0, pil.width - cw + 1))
            out.append(src.crop((left, top, left + cw, top + ch)))
    return out


def part_cosegment(images, elbow: float = COSEG.elbow, load_size=COSEG.load_size, layer: int = COSEG.layer,
                   facet: str = COSEG.facet, bin: bool = COSEG.bin, thresh: float = COSEG.thresh,
                   model: str = "dino_vits8", stride: int = COSEG.stride,
                   votes_percentage: float = COSEG.votes_percentage, sample_interval: int = COSEG.sample_interval,
                   low_res_saliency_maps: bool = COSEG.low_res_saliency_maps, num_parts: int = PARTS.num_parts,
                   num_crop_augmentations: int = PARTS.num_crop_augmentations,
                   three_stages: bool = PARTS.three_stages, elbow_second_stage: float = PARTS.elbow_second_stage,
                   weights=None, backend: str = "auto", device="auto", *, extractor=None, saliency_extractor=None,
                   precision: str = "fp32", kmeans: str = "faiss", crf: str = "auto", seed: int = 0,
                   batch_size: int = 8, progress: bool = False) -> list[PartsResult]:
    """Part co-segmentation of a set of images (the original `find_part_cosegmentation`).

    Args:
        images: list of paths / PIL images / HxWx3 uint8 arrays (or one directory).
        num_parts: parts (k-means clusters of the foreground descriptors).
        num_crop_augmentations: random 95% crops (and their mirrors) per image joining the clustering (not the
            votes); drawn from numpy's generator seeded with `seed` (the original: torch's global RNG, files on disk).
        kmeans: "faiss" (default, the original's) or "torch" (on the extractor's device, fast mode).
        crf: "auto" (pydensecrf when installed, else torch), "pydensecrf" or "torch" (see `dinofeat.apps.crf`).

    Returns:
        one `PartsResult` per input image (augmentations dropped), in input order.
    """
    check_common(elbow, thresh, votes_percentage, sample_interval, kmeans, batch_size)
    num_parts = check_positive_int(num_parts, "num_parts")
    num_aug = check_positive_int(num_crop_augmentations, "num_crop_augmentations", minimum=0)
    crf = resolve_crf(crf)
    originals = image_list(images)
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    sal_ex = saliency_extractor_for(ex, saliency_extractor, low_res_saliency_maps)
    items = list(originals)
    if num_aug:
        rng = np.random.default_rng(seed)
        for img in originals:
            items.extend(crop_augmentations(ex.preprocess(img, load_size)[1], num_aug, rng))
    voters = np.arange(len(items)) < len(originals)
    st = foreground_stage(items, ex, sal_ex, load_size=load_size, layer=layer, facet=facet, bin=bin, thresh=thresh,
                          votes_percentage=votes_percentage, sample_interval=sample_interval, elbow=elbow,
                          remove_outliers=False, outliers_thresh=COSEG.outliers_thresh,
                          low_res_saliency_maps=low_res_saliency_maps, kmeans=kmeans, batch_size=batch_size,
                          progress=progress, voters=voters)
    kdev = ex.device if kmeans == "torch" else "cpu"
    fg = [np.isin(lab, st.salient) for lab in st.labels]
    x_fg = np.concatenate([n[m] for n, m in zip(st.normalized, fg, strict=True)])
    x_fg_train = np.concatenate([n[m][::sample_interval] for n, m in zip(st.normalized, fg, strict=True)])
    if x_fg.shape[0] == 0:  # no cluster won the votes: every pixel is background (the original crashes)
        return _all_background(st, len(originals), crf)
    ks = range(1, COSEG.max_clusters + 1) if three_stages else [num_parts]
    part_model, _, _ = elbow_kmeans(x_fg, x_fg_train, elbow_second_stage, ks, method=kmeans,
                                    niter=COSEG.kmeans_niter, nredo=COSEG.kmeans_nredo, device=kdev)
    bg1 = st.model.centroids[[i for i in range(st.model.centroids.shape[0]) if i not in set(st.salient.tolist())]]
    energies = [part_energies(n, part_model.centroids, bg1, f.num_patches) for n, f in zip(st.normalized, st.feats,
                                                                                             strict=True)]
    parts = [smooth_parts(e, f.image, crf, ex.device) for e, f in zip(energies, st.feats, strict=True)]
    num_labels = part_model.centroids.shape[0]
    if three_stages:
        energies, num_labels = _third_stage(st, parts, part_model, bg1, voters, num_parts, sample_interval, kmeans,
                                            kdev)
        if energies is None:
            return _all_background(st, len(originals), crf)
        parts = [smooth_parts(e, f.image, crf, ex.device) for e, f in zip(energies, st.feats, strict=True)]
    return [PartsResult(image=st.feats[i].image, parts=parts[i], grid_parts=grid_labels(energies[i]),
                        num_parts=num_labels, crf=crf) for i in range(len(originals))]


def _all_background(st, n: int, crf: str) -> list[PartsResult]:
    return [PartsResult(image=f.image, parts=np.full(f.load_size, -1, np.int64),
                        grid_parts=np.full(f.num_patches, -1, np.int64), num_parts=0, crf=crf) for f in st.feats[:n]]


def _third_stage(st, parts, part_model, bg1, voters, num_parts, sample_interval, kmeans, kdev):
    """Parts present in every original image are common; the rest join the background; k-means of the common
    descriptors into `num_parts`. Returns (per-image energies, num_parts), or (None, 0) when no part is common."""
    smoothed = []
    for p, f in zip(parts, st.feats, strict=True):
        t = torch.from_numpy(p.astype(np.float32))[None, None]
        smoothed.append(torch.nn.functional.interpolate(t, size=f.num_patches, mode="nearest")[0, 0].numpy()
                        .reshape(-1).astype(np.int64))
    votes = np.zeros(part_model.centroids.shape[0])
    for lab, voter in zip(smoothed, voters, strict=True):
        if voter:
            votes[np.unique(lab[lab >= 0])] += 1
    common = np.nonzero(votes == int(np.sum(voters)))[0]
    masks = [np.isin(lab, common) for lab in smoothed]
    x_train = np.concatenate([n[m][::sample_interval] for n, m in zip(st.normalized, masks, strict=True)])
    if x_train.shape[0] == 0:
        return None, 0
    if x_train.shape[0] < num_parts:
        raise InputError(f"three_stages=True: {len(common)} part(s) common to every image leave {x_train.shape[0]} "
                         f"training descriptors for num_parts={num_parts}; use three_stages=False or fewer parts")
    common_model = train_kmeans(x_train, num_parts, method=kmeans, niter=COSEG.kmeans_niter,
                                nredo=COSEG.kmeans_nredo, device=kdev)
    bg2 = part_model.centroids[[i for i in range(part_model.centroids.shape[0]) if i not in set(common.tolist())]]
    bg = np.concatenate((bg1, bg2), axis=0)
    energies = [part_energies(n, common_model.centroids, bg, f.num_patches)
                for n, f in zip(st.normalized, st.feats, strict=True)]
    return energies, num_parts
