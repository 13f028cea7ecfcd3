"""PCK evaluation on SPair-71k (the method's Table 3 protocol): `evaluate_spair` and `dinofeat eval spair`.

Layout read (`dinofeat.apps.kp_data.read_spair`): <root>/JPEGImages/<category>/<name>.jpg and
<root>/PairAnnotation/<split>/*.json, each pair JSON holding `category`, `src_imname`, `trg_imname`, `src_kps` /
`trg_kps` ([[x, y], ...] in original pixels) and `trg_bndbox` ([x1, y1, x2, y2]).

Protocol: per category, `pairs_per_category` pairs sampled without replacement (numpy generator seeded with
`seed`, categories and files in sorted order); the transfer and PCK are `dinofeat.apps.keypoints`' (nearest
window centre -> cosine nearest neighbour among all target patches -> its window centre in the target's
original pixels), the threshold alpha * max(h, w) of the target image (or of its bounding box with
`normalize="bbox"`). PCK of a category = correct keypoints / keypoints over its pairs; the mean is over categories.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from .common import make_extractor
from .defaults import SPAIR
from .keypoints import StoreFeatures, evaluate_pairs
from .kp_data import check_per_class, read_spair, sample

NORMALIZATIONS = ("image", "bbox")


@dataclass
class PckResult:
    """per_category {category: PCK in [0, 1]}, mean over categories, pairs / keypoints counted per category,
    errors [(pair file, message)] for pairs that could not be evaluated, and the settings used."""

    per_category: dict[str, float]
    mean: float
    num_pairs: dict[str, int]
    num_keypoints: dict[str, int]
    errors: list[tuple[str, str]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"per_category": self.per_category, "mean": self.mean, "num_pairs": self.num_pairs,
                "num_keypoints": self.num_keypoints, "errors": [list(e) for e in self.errors],
                "settings": self.settings}


def spair_pairs(root, categories=None, pairs_per_category: int = SPAIR.pairs_per_category, seed: int = SPAIR.seed,
                split: str = SPAIR.split) -> dict:
    """{category: [KeypointPair]}: `pairs_per_category` pair annotations sampled per category (seeded)."""
    import numpy as np

    if pairs_per_category is None:
        raise InputError("pairs_per_category=None: expected an int >= 1")
    check_per_class(pairs_per_category, "pairs_per_category")
    pairs = read_spair(root, categories, split, flags=("--root", "--categories"))
    rng = np.random.default_rng(seed)
    return {cat: sample(items, pairs_per_category, rng) for cat, items in pairs.items()}


def evaluate_spair(root, categories=None, load_size=SPAIR.load_size, layer=SPAIR.layer, facet: str = SPAIR.facet,
                   bin: bool = SPAIR.bin, model: str = "dino_vits8", stride: int = SPAIR.stride, weights=None,
                   backend: str = "auto", device="auto", *, extractor=None, precision: str = "fp32",
                   alpha: float = SPAIR.alpha, pairs_per_category: int = SPAIR.pairs_per_category,
                   seed: int = SPAIR.seed, split: str = SPAIR.split, normalize: str = "image",
                   progress: bool = False) -> PckResult:
    """PCK@alpha of nearest-neighbour keypoint transfer on SPair-71k (see the module docstring for the protocol).

    A pair whose image or annotation is broken becomes an entry of `errors`; the others are still counted.
    """
    if normalize not in NORMALIZATIONS:
        raise InputError(f"normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    chosen = spair_pairs(root, categories, pairs_per_category, seed, split)
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    res = evaluate_pairs(chosen, StoreFeatures(ex, load_size, layer, facet), stride=ex.stride, patch=ex.patch_size,
                         alpha=alpha, pck_ref=normalize, bin=bin, samples=0, progress=progress)
    settings = {"model": ex.model_name, "stride": ex.stride, "layer": layer, "facet": facet, "bin": bin,
                "load_size": load_size, "alpha": alpha, "normalize": normalize, "pairs_per_category":
                pairs_per_category, "seed": seed, "split": split, "weights_sha256": ex.weights_sha256}
    return PckResult(per_category=res.per_class, mean=res.mean, num_pairs=res.num_pairs,
                     num_keypoints=res.num_keypoints, errors=res.errors, settings=settings)
