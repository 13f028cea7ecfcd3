"""`dinofeat.pca`: principal components of dense descriptors, as the original `pca.py`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import InputError
from .common import check_positive_int, extract_features, image_list, make_extractor
from .defaults import PCA


@dataclass
class PcaResult:
    """One image's PCA view.

    image: the resized PIL image (H, W).
    components: (Hp, Wp, n_components) float32, the raw PCA projections (not normalised; drawing normalises).
    num_patches: (Hp, Wp).
    """

    image: Image.Image
    components: np.ndarray
    num_patches: tuple[int, int]


def pca(images, load_size=PCA.load_size, layer: int = PCA.layer, facet: str = PCA.facet, bin: bool = PCA.bin,
        stride: int = PCA.stride, model: str = "dino_vits8", n_components: int = PCA.n_components,
        all_together: bool = PCA.all_together, weights=None, backend: str = "auto", device="auto", *,
        extractor=None, precision: str = "fp32", batch_size: int = 8, progress: bool = False) -> list[PcaResult]:
    """PCA of every image's descriptors, fitted on all images together (or per image), as the original.

    Args:
        images: list of paths / PIL images / HxWx3 uint8 arrays (or one directory).
        n_components: principal components kept (scikit-learn `PCA(n_components)`).
        all_together: one PCA over the descriptors of all images; False fits one per image.
        extractor: a loaded `Extractor` to reuse (model/stride/weights/backend/device/precision are then ignored).
        batch_size: images of one size per forward (one forward per image, batched).

    Returns:
        one `PcaResult` per image, in input order; components (Hp, Wp, n_components) float32.
    """
    from sklearn.decomposition import PCA as SkPCA

    items = image_list(images)
    n_components = check_positive_int(n_components, "n_components")
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    feats = extract_features(ex, items, load_size, layer, facet, bin, batch_size=batch_size, progress=progress,
                             desc="pca")
    descs = [f.descriptors for f in feats]
    limit = min(sum(d.shape[0] for d in descs) if all_together else min(d.shape[0] for d in descs), descs[0].shape[1])
    if n_components > limit:
        raise InputError(f"n_components={n_components}: expected at most {limit} (min of descriptors and channels)")
    if all_together:
        together = np.concatenate(descs, axis=0)
        projected = SkPCA(n_components=n_components).fit(together).transform(together)
        per_image = np.split(projected, np.cumsum([d.shape[0] for d in descs])[:-1], axis=0)
    else:
        per_image = [SkPCA(n_components=n_components).fit(d).transform(d) for d in descs]
    return [PcaResult(image=f.image, components=np.asarray(p, dtype=np.float32).reshape(*f.num_patches, n_components),
                      num_patches=f.num_patches) for f, p in zip(feats, per_image, strict=True)]
