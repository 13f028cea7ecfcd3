"""PCK evaluation on SPair-71k (the method's Table 3 protocol): `evaluate_spair` and `dinofeat eval spair`.

Layout read: <root>/JPEGImages/<category>/<name>.jpg and <root>/PairAnnotation/<split>/*.json, each pair JSON
holding `category`, `src_imname`, `trg_imname`, `src_kps` / `trg_kps` ([[x, y], ...] in original pixels) and
`src_bndbox` / `trg_bndbox` ([x1, y1, x2, y2]).

Protocol: per category, `pairs_per_category` pairs sampled without replacement (numpy generator seeded with
`seed`, categories and files in sorted order); each source keypoint is mapped to the patch whose window centre is
nearest; its descriptor's nearest neighbour (cosine) among all target patches gives the prediction (that patch's
window centre, mapped back to the target's original pixels); correct when within alpha * max(h, w) of the
annotation, (h, w) the target image's size (or the target bounding box's with `normalize="bbox"`). PCK of a
category = correct keypoints / keypoints over its pairs; the mean is over categories.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DinofeatError, InputError
from .common import make_extractor
from .defaults import SPAIR

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


def load_pairs(root, split: str = SPAIR.split, categories=None) -> dict[str, list[tuple[Path, dict]]]:
    """{category: [(json path, annotation), ...]} sorted by file name, for the requested categories."""
    root = Path(root)
    ann_dir = root / "PairAnnotation" / split
    if not (root / "JPEGImages").is_dir() or not ann_dir.is_dir():
        raise InputError(f"--root {str(root)!r}: expected SPair-71k's layout with JPEGImages/<category>/ and "
                         f"PairAnnotation/{split}/*.json")
    pairs: dict[str, list[tuple[Path, dict]]] = {}
    for path in sorted(ann_dir.glob("*.json")):
        try:
            ann = json.loads(path.read_text())
            cat = ann["category"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a SPair-71k pair annotation ({type(e).__name__}: {e})") from None
        pairs.setdefault(cat, []).append((path, ann))
    if categories:
        missing = sorted(set(categories) - set(pairs))
        if missing:
            raise InputError(f"--categories: {', '.join(missing)} not found under {ann_dir}; present: "
                             f"{', '.join(sorted(pairs)) or 'none'}")
        pairs = {c: pairs[c] for c in categories}
    if not pairs:
        raise InputError(f"--root {str(root)!r}: no pair annotations in {ann_dir}")
    return dict(sorted(pairs.items()))


def sample_pairs(pairs: dict[str, list], per_category: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    out = {}
    for cat, items in pairs.items():
        idx = np.sort(rng.choice(len(items), size=min(per_category, len(items)), replace=False))
        out[cat] = [items[i] for i in idx]
    return out


def keypoint_tokens(kps: np.ndarray, scale: tuple[float, float], grid: tuple[int, int], stride: int,
                    patch: int) -> np.ndarray:
    """(N, 2) (x, y) original pixels -> (N,) token index of the patch whose window centre is nearest."""
    x = kps[:, 0] * scale[0]
    y = kps[:, 1] * scale[1]
    col = np.clip(np.rint((x - patch / 2) / stride), 0, grid[1] - 1).astype(np.int64)
    row = np.clip(np.rint((y - patch / 2) / stride), 0, grid[0] - 1).astype(np.int64)
    return row * grid[1] + col


def token_centres(tokens: np.ndarray, scale: tuple[float, float], grid: tuple[int, int], stride: int,
                  patch: int) -> np.ndarray:
    """(N,) tokens -> (N, 2) (x, y) window centres in original pixels."""
    row, col = tokens // grid[1], tokens % grid[1]
    return np.stack(((col * stride + patch / 2) / scale[0], (row * stride + patch / 2) / scale[1]), axis=1)


class _Features:
    """Unit-norm descriptors per image file, one forward each, the last `keep` kept for pairs sharing images.
    Annotations refer to the stored pixels, so EXIF orientation is not applied."""

    def __init__(self, ex, load_size, layer, facet, bin, keep: int = 8):
        self.ex, self.args, self.keep, self.cache = ex, (load_size, layer, facet, bin), keep, OrderedDict()

    def __call__(self, path: Path):
        if path in self.cache:
            self.cache.move_to_end(path)
            return self.cache[path]
        load_size, layer, facet, bin = self.args
        batch, pil = self.ex.preprocess(str(path), load_size, exif_transpose=False)
        with Image.open(path) as im:
            w, h = im.size
        f = self.ex.extract(batch, layer=layer, facet=facet, bin=bin)
        d = torch.nn.functional.normalize(f.descriptors[0].float(), dim=1, eps=1e-8)
        self.cache[path] = (d, f.num_patches, (pil.width / w, pil.height / h), (h, w))
        if len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return self.cache[path]


def pair_correct(feats, root: Path, ann: dict, alpha: float, normalize: str, stride: int, patch: int):
    """(correct, total) keypoints of one pair annotation."""
    cat = ann["category"]
    src = feats(root / "JPEGImages" / cat / ann["src_imname"])
    trg = feats(root / "JPEGImages" / cat / ann["trg_imname"])
    src_kps = np.asarray(ann["src_kps"], np.float64).reshape(-1, 2)
    trg_kps = np.asarray(ann["trg_kps"], np.float64).reshape(-1, 2)
    if src_kps.shape != trg_kps.shape:
        raise InputError(f"src_kps {src_kps.shape} and trg_kps {trg_kps.shape} differ in length")
    if not len(src_kps):
        return 0, 0
    (d1, g1, s1, _), (d2, g2, s2, (h, w)) = src, trg
    tokens = keypoint_tokens(src_kps, s1, g1, stride, patch)
    nn = (d1[torch.from_numpy(tokens).to(d1.device)] @ d2.T).argmax(dim=1).cpu().numpy()
    pred = token_centres(nn, s2, g2, stride, patch)
    if normalize == "bbox":
        x1, y1, x2, y2 = (float(v) for v in ann["trg_bndbox"])
        size = max(x2 - x1, y2 - y1)
    else:
        size = max(h, w)
    dist = np.linalg.norm(pred - trg_kps, axis=1)
    return int((dist <= alpha * size).sum()), len(src_kps)


def evaluate_spair(root, categories=None, load_size=SPAIR.load_size, layer=SPAIR.layer, facet: str = SPAIR.facet,
                   bin: bool = SPAIR.bin, model: str = "dino_vits8", stride: int = SPAIR.stride, weights=None,
                   backend: str = "auto", device="auto", *, extractor=None, precision: str = "fp32",
                   alpha: float = SPAIR.alpha, pairs_per_category: int = SPAIR.pairs_per_category,
                   seed: int = SPAIR.seed, split: str = SPAIR.split, normalize: str = "image",
                   progress: bool = False) -> PckResult:
    """PCK@alpha of nearest-neighbour keypoint transfer on SPair-71k (see the module docstring for the protocol).

    A pair whose image or annotation is broken becomes an entry of `errors`; the others are still counted.
    """
    from tqdm import tqdm

    if normalize not in NORMALIZATIONS:
        raise InputError(f"normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if isinstance(pairs_per_category, bool) or not isinstance(pairs_per_category, int) or pairs_per_category < 1:
        raise InputError(f"pairs_per_category={pairs_per_category!r}: expected an int >= 1")
    root = Path(root)
    chosen = sample_pairs(load_pairs(root, split, categories), pairs_per_category, seed)
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    feats = _Features(ex, load_size, layer, facet, bin)
    correct, total, npairs, errors = {}, {}, {}, []
    todo = [(cat, path, ann) for cat, items in chosen.items() for path, ann in items]
    for cat, path, ann in tqdm(todo, desc="eval spair", unit="pair", disable=None if progress else True):
        try:
            c, t = pair_correct(feats, root, ann, alpha, normalize, ex.stride, ex.patch_size)
        except (DinofeatError, KeyError, TypeError, ValueError) as e:
            errors.append((path.name, f"{type(e).__name__}: {e}"))
            continue
        correct[cat] = correct.get(cat, 0) + c
        total[cat] = total.get(cat, 0) + t
        npairs[cat] = npairs.get(cat, 0) + 1
    per_cat = {c: correct[c] / total[c] for c in chosen if total.get(c)}
    mean = float(np.mean(list(per_cat.values()))) if per_cat else float("nan")
    settings = {"model": ex.model_name, "stride": ex.stride, "layer": layer, "facet": facet, "bin": bin,
                "load_size": load_size, "alpha": alpha, "normalize": normalize, "pairs_per_category":
                pairs_per_category, "seed": seed, "split": split, "weights_sha256": ex.weights_sha256}
    return PckResult(per_category=per_cat, mean=mean, num_pairs=npairs, num_keypoints=total, errors=errors,
                     settings=settings)
