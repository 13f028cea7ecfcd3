"""Shared steps of the applications: image lists, one batched forward per image, low-resolution saliency,
L2 normalisation and k-means (faiss as the original, or torch on the device), the elbow search."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
KMEANS_METHODS = ("faiss", "torch")


@dataclass
class ImageFeatures:
    """One image's extraction: descriptors (T, C) float32, saliency (T,) float32 or None, cls (C,) or None."""

    image: Image.Image
    descriptors: np.ndarray
    saliency: np.ndarray | None
    num_patches: tuple[int, int]
    load_size: tuple[int, int]
    cls: np.ndarray | None = None


def image_list(images, name: str = "images") -> list:
    """A list of images (paths, PIL images or arrays); a directory expands to its image files, sorted."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    try:
        items = list(images)
    except TypeError:
        raise InputError(f"{name}: expected a list of images (paths, PIL images, HxWx3 arrays), got "
                         f"{type(images).__name__}") from None
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            files = sorted(p for p in Path(item).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{name}: directory {str(item)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(str(p) for p in files)
        else:
            out.append(item)
    if not out:
        raise InputError(f"{name}: expected at least one image, got none")
    return out


def make_extractor(extractor, model, stride, weights, backend, device, precision="fp32", progress=False):
    from ..engine.extractor import Extractor

    if extractor is not None:
        if not isinstance(extractor, Extractor):
            raise InputError(f"extractor: expected a dinofeat.Extractor, got {type(extractor).__name__}")
        return extractor
    return Extractor(model=model, stride=stride, weights=weights, backend=backend, device=device,
                     precision=precision, progress=progress)


def derived_extractor(ex, stride: int):
    """An Extractor with `ex`'s model, weights, backend, device and precision at another stride
    (`Extractor.with_stride`: made once per extractor and stride, kept while `ex` lives)."""
    try:
        return ex.with_stride(stride)
    except InputError as e:
        raise InputError(f"saliency_extractor: {e}; or pass saliency_extractor= (stride {stride}) or "
                         "low_res_saliency_maps=False") from None


def extract_features(ex, images, load_size, layer, facet, bin, *, saliency=False, include_cls=False,
                     batch_size=8, progress=False, desc="extract") -> list[ImageFeatures]:
    """One forward per image, images of one preprocessed size batched together (`batch_size` at most;
    `Extractor.extract_many`), on any backend.

    Returns one `ImageFeatures` per image, in input order.
    """
    if include_cls and bin:
        raise InputError("remove_outliers=True needs bin=False (the CLS descriptor is not log-binned), got bin=True")
    feats = ex.extract_many(images, layer=layer, facet=facet, bin=bin, saliency=saliency, cls=include_cls,
                            load_size=load_size, batch_size=batch_size, progress=progress, desc=desc)
    return [ImageFeatures(image=f.image, descriptors=_numpy(f.descriptors), saliency=_numpy(f.saliency),
                          num_patches=f.num_patches, load_size=f.load_size, cls=_numpy(f.cls)) for f in feats]


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """(1, ...) tensor of one image -> float32 numpy (...), or None."""
    return None if t is None else t[0].float().cpu().numpy()


def low_res_saliency(sal_ex, images, feats: list[ImageFeatures], full_size: bool, batch_size=8) -> list[np.ndarray]:
    """Saliency from `sal_ex` at half each image's load size (as the original's stride-8 extractor), resized to
    the descriptor grid with Pillow NEAREST. `full_size`: keep the load size (the original with load_size=None)."""
    sizes = [f.load_size if full_size else (f.load_size[0] // 2, f.load_size[1] // 2) for f in feats]
    prepared = [sal_ex.preprocess(img, size) for img, size in zip(images, sizes, strict=True)]
    low = sal_ex.extract_many(prepared, layer=sal_ex.spec.depth - 1, facet="key", saliency=True,
                              batch_size=batch_size)
    out = []
    for f, lf in zip(feats, low, strict=True):
        grid = Image.fromarray(_numpy(lf.saliency).reshape(lf.num_patches).astype(np.float32), mode="F")
        hp, wp = f.num_patches
        out.append(np.asarray(grid.resize((wp, hp), Image.NEAREST)).reshape(-1))
    return out


def l2_normalized(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit rows, as `faiss.normalize_L2` (zero rows stay zero)."""
    import faiss

    y = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(y)
    return y


def check_kmeans_method(kmeans: str) -> str:
    if kmeans not in KMEANS_METHODS:
        raise InputError(f"kmeans={kmeans!r}: expected one of {', '.join(KMEANS_METHODS)} (faiss is the original's; "
                         "torch runs on the extractor's device)")
    return kmeans


class KMeansModel:
    """Centroids (k, C) float32 and `assign(x) -> (sq_dist (N,), labels (N,) int64)`."""

    def __init__(self, centroids: np.ndarray, index=None):
        self.centroids = centroids
        self._index = index

    def assign(self, x: np.ndarray, device="cpu") -> tuple[np.ndarray, np.ndarray]:
        if self._index is not None:
            d, lab = self._index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
            return d[:, 0], lab[:, 0].astype(np.int64)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        ct = torch.from_numpy(self.centroids).to(device)
        d = _sq_dists(xt, ct)
        best, lab = d.min(dim=1)
        return best.cpu().numpy(), lab.cpu().numpy().astype(np.int64)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]).clamp_min_(0)


def train_kmeans(x: np.ndarray, k: int, *, method="faiss", niter=300, nredo=10, device="cpu", seed=1234) -> KMeansModel:
    """k-means on the rows of x (N, C) float32: faiss.Kmeans(niter, nredo) as the original, or a torch Lloyd
    k-means on `device` (random initial rows, `nredo` restarts, the lowest objective kept)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] < k:
        raise InputError(f"k-means: {k} clusters need at least {k} training descriptors, got {x.shape[0]}; "
                         "lower sample_interval or the number of clusters")
    if method == "faiss":
        import faiss

        from .. import progress as status

        km = faiss.Kmeans(d=x.shape[1], k=k, niter=niter, nredo=nredo)
        with status.captured_warnings(f"faiss k-means ({x.shape[0]} descriptors, k={k})", native=True):
            km.train(x)
        return KMeansModel(km.centroids.copy(), km.index)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x).to(device)
    best, best_obj = None, float("inf")
    for _ in range(nredo):
        c = xt[torch.randperm(xt.shape[0], generator=gen)[:k].to(device)].clone()
        for _ in range(niter):
            lab = _sq_dists(xt, c).argmin(1)
            sums = torch.zeros_like(c).index_add_(0, lab, xt)
            counts = torch.bincount(lab, minlength=k).to(xt.dtype)[:, None]
            new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
            if torch.equal(new, c):
                break
            c = new
        obj = float(_sq_dists(xt, c).min(1).values.sum())
        if obj < best_obj:
            best, best_obj = c, obj
    return KMeansModel(best.cpu().numpy())


def elbow_kmeans(x_all: np.ndarray, x_train: np.ndarray, elbow: float, ks, *, method="faiss", niter=300,
                 nredo=10, device="cpu"):
    """For k in `ks`: train on x_train, label x_all, mean squared distance; stop at the first k whose mean is
    above `elbow` times the previous one (that k is kept, as the original). k larger than the training set ends
    the search (the original would crash there).

    Returns (model, labels (N,) int64, objectives list).
    """
    objectives: list = []
    model = labels = None
    for k in ks:
        if k > x_train.shape[0] and model is not None:
            break
        model = train_kmeans(x_train, k, method=method, niter=niter, nredo=nredo, device=device)
        sq, labels = model.assign(x_all, device)
        objectives.append(sq.sum() / x_all.shape[0])  # float32, as the original compares them
        if len(objectives) > 1 and objectives[-1] > elbow * objectives[-2]:
            break
    return model, labels, objectives


def sampled(descs: list[np.ndarray], interval: int) -> np.ndarray:
    """Every `interval`-th row of each image's descriptors, concatenated (the k-means training set)."""
    return np.concatenate([d[::interval] for d in descs], axis=0)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}={value!r}: expected an int >= {minimum}")
    return int(value)


def check_number(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r}: expected a number") from None
    if np.isnan(out):
        raise InputError(f"{name}=nan: expected a number")
    return out
