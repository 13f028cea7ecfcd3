"""Shared steps of the applications: image lists, one batched forward per image, low-resolution saliency,
L2 normalisation and k-means (faiss as the original, or torch on the device), the elbow search."""

from __future__ import annotations

import os
import weakref
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import BackendUnavailableError, InputError

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


_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def derived_extractor(ex, stride: int):
    """An Extractor with `ex`'s model, weights, backend, device and precision at another stride (made once per
    extractor and stride, kept while `ex` lives)."""
    if stride == ex.stride:
        return ex
    per_ex = _DERIVED.setdefault(ex, {})
    if stride not in per_ex:
        per_ex[stride] = _new_derived(ex, stride)
    return per_ex[stride]


def _new_derived(ex, stride: int):
    from ..engine.extractor import Extractor

    weights = ex.weights_source
    if not (isinstance(weights, str) and Path(weights).is_file()):
        model = getattr(ex.backend, "model", None)
        if model is None:
            raise InputError("saliency_extractor: the extractor's weights were given in memory and its backend "
                             f"{ex.backend_name!r} keeps no model; pass saliency_extractor= (stride 8) or "
                             "low_res_saliency_maps=False")
        weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        table = getattr(ex.backend, "_pos_table", None)
        if table is not None:
            weights["pos_embed"] = table
    return Extractor(model=ex.model_name, stride=stride, weights=weights, backend=ex.backend_name,
                     device=ex.device, precision=ex.precision, rope_periods=ex.rope_periods,
                     pos_interp=ex.pos_interp, progress=False)


@contextmanager
def _cls_capture(ex, layer: int, facet: str):
    """Collect the CLS token's facet at `layer` during forwards (torch backend): list of (B, C) tensors."""
    model = getattr(ex.backend, "model", None)
    if model is None or ex.backend_name != "torch":
        raise BackendUnavailableError(f"remove_outliers needs the CLS descriptor, which only the torch backend "
                                      f"exposes; got backend {ex.backend_name!r}")
    block = model.blocks[layer]
    got: list[torch.Tensor] = []
    heads = model.spec.num_heads

    def on_qkv(_module, _inp, out):
        qkv = out[:, 0].float().reshape(out.shape[0], 3, heads, -1)[:, ("query", "key", "value").index(facet)]
        got.append(qkv.permute(0, 2, 1).reshape(out.shape[0], -1))  # channel d * heads + h

    def on_block(_module, _inp, out):
        got.append(out[:, 0].float())

    handle = block.register_forward_hook(on_block) if facet == "token" else block.attn.qkv.register_forward_hook(on_qkv)
    try:
        yield got
    finally:
        handle.remove()


def extract_features(ex, images, load_size, layer, facet, bin, *, saliency=False, include_cls=False,
                     batch_size=8, progress=False, desc="extract") -> list[ImageFeatures]:
    """One forward per image, images of one preprocessed size batched together (`batch_size` at most).

    Returns one `ImageFeatures` per image, in input order.
    """
    from tqdm import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected an int >= 1")
    if include_cls and bin:
        raise InputError("remove_outliers=True needs bin=False (the CLS descriptor is not log-binned), got bin=True")
    prepared = [ex.preprocess(img, load_size) for img in images]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (batch, _) in enumerate(prepared):
        groups[tuple(batch.shape[-2:])].append(i)
    out: list[ImageFeatures | None] = [None] * len(images)
    with tqdm(total=len(images), desc=desc, unit="img", disable=None if progress else True) as bar:
        for idxs in groups.values():
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start:start + batch_size]
                batch = torch.cat([prepared[i][0] for i in chunk])
                if include_cls:
                    with _cls_capture(ex, layer, facet) as got:
                        f = ex.extract(batch, layer=layer, facet=facet, bin=bin, saliency=saliency)
                    cls = got[0].cpu().numpy()
                else:
                    f = ex.extract(batch, layer=layer, facet=facet, bin=bin, saliency=saliency)
                    cls = None
                desc_np = f.descriptors.float().cpu().numpy()
                sal_np = f.saliency.float().cpu().numpy() if f.saliency is not None else None
                for b, i in enumerate(chunk):
                    out[i] = ImageFeatures(image=prepared[i][1], descriptors=desc_np[b],
                                           saliency=None if sal_np is None else sal_np[b],
                                           num_patches=f.num_patches, load_size=f.load_size,
                                           cls=None if cls is None else cls[b])
                bar.update(len(chunk))
    return out


def low_res_saliency(sal_ex, images, feats: list[ImageFeatures], full_size: bool, batch_size=8) -> list[np.ndarray]:
    """Saliency from `sal_ex` at half each image's load size (as the original's stride-8 extractor), resized to
    the descriptor grid with Pillow NEAREST. `full_size`: keep the load size (the original with load_size=None)."""
    sizes = [f.load_size if full_size else (f.load_size[0] // 2, f.load_size[1] // 2) for f in feats]
    prepared = [sal_ex.preprocess(img, size)[0] for img, size in zip(images, sizes, strict=True)]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, batch in enumerate(prepared):
        groups[tuple(batch.shape[-2:])].append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for idxs in groups.values():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start:start + batch_size]
            f = sal_ex.extract(torch.cat([prepared[i] for i in chunk]), layer=sal_ex.spec.depth - 1, facet="key",
                               saliency=True)
            sal = f.saliency.float().cpu().numpy()
            for b, i in enumerate(chunk):
                grid = Image.fromarray(sal[b].reshape(f.num_patches).astype(np.float32), mode="F")
                hp, wp = feats[i].num_patches
                out[i] = np.asarray(grid.resize((wp, hp), Image.NEAREST)).reshape(-1)
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
