"""Keypoint-transfer accuracy (PCK@alpha): the one implementation behind `dinofeat eval keypoints` and
`dinofeat eval spair`.

Transfer of one pair: each source keypoint (original pixels) -> the token whose window centre is nearest in the
resized image (`keypoint_tokens`) -> its descriptor's cosine nearest neighbour among all target tokens
(`transfer`) -> that token's window centre mapped back to the target's original pixels (`token_centres`). Window
centres are `col * stride + patch / 2`, `row * stride + patch / 2` in resized pixels (the points of
`find_correspondences`), and resized = original * (resized width / original width) per axis.

A keypoint is correct when the prediction lies within alpha * max(h, w) of its annotation, (h, w) the extent of
(`pck_ref`) `kpbox`: every keypoint annotated on the target, `bbox`: the target's object box, `image`: the target
image. PCK of a class = correct / keypoints over its pairs; the mean is over classes.

Features: one forward per image through `FeatureStore` (unbinned; binned per image when it is a target, binned
rows of the keypoint tokens only when it is a source).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import kernels
from ..errors import DinofeatError, InputError
from .kp_data import KeypointPair, load_keypoint_pairs

PCK_REFS = ("kpbox", "bbox", "image")
DEFAULT_PCK_REF = {"willow": "kpbox", "json": "kpbox", "spair": "bbox"}


@dataclass
class ImageFeat:
    """One image's features: desc (T, C) float32 unbinned; grid (Hp, Wp); scale (sx, sy) = resized / original
    size per axis; size (h, w) of the original (stored) image."""

    desc: torch.Tensor
    grid: tuple[int, int]
    scale: tuple[float, float]
    size: tuple[int, int]


@dataclass
class KeypointResult:
    """per_class {class: PCK in [0, 1]}, mean over classes, pairs / keypoints per class, errors [(pair, message)]
    of pairs that could not be evaluated, settings, and `samples` (a few pairs' transfers, for drawing)."""

    per_class: dict[str, float]
    mean: float
    alpha: float
    pck_ref: str
    num_pairs: dict[str, int]
    num_keypoints: dict[str, int]
    errors: list[tuple[str, str]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    chance_per_class: dict[str, float] = field(default_factory=dict)
    chance: float = float("nan")

    def to_dict(self) -> dict:
        """What `pck.json` holds (`pairs`: the number of pairs evaluated; `chance`: the expected PCK of a uniformly
        random target token, per class and mean)."""
        return {"per_class": self.per_class, "mean": self.mean, "alpha": self.alpha, "pck_ref": self.pck_ref,
                "pairs": sum(self.num_pairs.values()), "chance_per_class": self.chance_per_class,
                "chance": self.chance, "pairs_per_class": self.num_pairs,
                "keypoints_per_class": self.num_keypoints, "errors": [list(e) for e in self.errors],
                "settings": self.settings}


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
    tokens = np.asarray(tokens, dtype=np.int64)
    row, col = tokens // grid[1], tokens % grid[1]
    return np.stack(((col * stride + patch / 2) / scale[0], (row * stride + patch / 2) / scale[1]), axis=1)


def descriptors(feat: ImageFeat, bin: bool, tokens: np.ndarray | None = None) -> torch.Tensor:
    """Unit-norm descriptors (T, C') of every token, or (N, C') of `tokens` only; log-binned when `bin`."""
    if bin:
        d = kernels.log_bin(feat.desc, feat.grid) if tokens is None else kernels.log_bin_rows(feat.desc, feat.grid,
                                                                                            tokens)
    else:
        d = feat.desc if tokens is None else feat.desc[torch.from_numpy(tokens).to(feat.desc.device)]
    return torch.nn.functional.normalize(d.float(), dim=1, eps=1e-8)


def transfer(src_rows: torch.Tensor, trg_desc: torch.Tensor) -> np.ndarray:
    """(N,) index of each unit-norm source row's cosine nearest neighbour among the (T, C) target rows."""
    return (src_rows @ trg_desc.T).argmax(dim=1).cpu().numpy()


def pck_size(pair: KeypointPair, pck_ref: str, image_size: tuple[int, int]) -> float:
    """max(h, w) of the reference extent of the pair's target (original pixels)."""
    if pck_ref == "image":
        return float(max(image_size))
    if pck_ref == "bbox":
        if pair.trg_bbox is None:
            raise InputError("--pck-ref bbox: the target has no object box; use --pck-ref kpbox or image")
        x1, y1, x2, y2 = pair.trg_bbox
        return float(max(x2 - x1, y2 - y1))
    pts = pair.trg_all
    return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])))


def pck_correct(pred: np.ndarray, truth: np.ndarray, alpha: float, size: float) -> np.ndarray:
    """(N,) bool: prediction within alpha * size (Euclidean, pixels) of the annotation."""
    return np.linalg.norm(pred - truth, axis=1) <= alpha * size


def chance_hits(truth: np.ndarray, centres: np.ndarray, alpha: float, size: float) -> float:
    """Expected correct keypoints of a uniformly random prediction among the target's token centres (T, 2)."""
    d = np.linalg.norm(centres[None, :, :] - truth[:, None, :], axis=2)
    return float((d <= alpha * size).mean(axis=1).sum())


class StoreFeatures:
    """`path -> ImageFeat` through a `FeatureStore` (one forward per image while the store keeps it).
    Annotations refer to the stored pixels, so EXIF orientation is not applied."""

    def __init__(self, ex, load_size, layer: int, facet: str, store=None):
        from ..pipeline.store import FeatureStore

        self.ex, self.load_size, self.layer, self.facet = ex, load_size, layer, facet
        self.store = store if store is not None else FeatureStore()
        self.config = {"model": ex.model_name, "weights_sha256": ex.weights_sha256, "stride": ex.stride,
                       "load_size": load_size, "layer": layer, "facet": facet, "precision": ex.precision,
                       "backend": ex.backend.name, "exif_transpose": False}
        self.forwards = 0
        self._sizes: dict[Path, tuple[int, int]] = {}

    def __call__(self, path) -> ImageFeat:
        from ..pipeline.store import feature_key, image_digest

        path = Path(path)
        key = feature_key(image_digest(path, name="image"), self.config)
        f = self.store.get(key)
        if f is None:
            batch, pil = self.ex.preprocess(path, self.load_size, exif_transpose=False)
            f = self.ex.extract(batch, layer=self.layer, facet=self.facet, bin=False)
            f.image = pil
            self.store.put(key, f, write=False)
            self.forwards += 1
        if path not in self._sizes:
            with Image.open(path) as im:
                self._sizes[path] = (im.height, im.width)
        h, w = self._sizes[path]
        return ImageFeat(desc=f.descriptors[0], grid=f.num_patches, scale=(f.image.width / w, f.image.height / h),
                         size=(h, w))


def evaluate_pairs(pairs: dict[str, list[KeypointPair]], features: Callable[[Path], ImageFeat], *, stride: int,
                   patch: int, alpha: float, pck_ref: str, bin: bool, samples: int = 2,
                   progress: bool = False) -> KeypointResult:
    """PCK@alpha of nearest-neighbour keypoint transfer over `pairs` ({class: [KeypointPair]}).

    Pairs are visited grouped by target (each target's full descriptors are made once); a pair whose images or
    annotations are broken becomes an entry of `errors`, the others are still counted. `samples`: the first
    pairs of each class whose transfers are kept for drawing.
    """
    from tqdm import tqdm

    if pck_ref not in PCK_REFS:
        raise InputError(f"--pck-ref {pck_ref!r}: expected one of {', '.join(PCK_REFS)}")
    check_alpha(alpha)
    by_target: dict[Path, list[KeypointPair]] = {}
    for items in pairs.values():
        for p in items:
            by_target.setdefault(p.trg, []).append(p)
    correct = {c: 0 for c in pairs}
    chance = {c: 0.0 for c in pairs}
    total = {c: 0 for c in pairs}
    npairs = {c: 0 for c in pairs}
    errors: list[tuple[str, str]] = []
    kept: list[dict] = []
    bar = tqdm(total=sum(len(v) for v in by_target.values()), desc="eval keypoints", unit="pair",
               disable=None if progress else True)
    for trg, group in by_target.items():
        try:
            t = features(trg)
            trg_desc = descriptors(t, bin)
        except (DinofeatError, OSError) as e:
            errors.extend((p.name, f"{type(e).__name__}: {e}") for p in group)
            bar.update(len(group))
            continue
        for p in group:
            bar.update()
            try:
                if p.src_kps.shape != p.trg_kps.shape:
                    raise InputError(f"src_kps {p.src_kps.shape} and trg_kps {p.trg_kps.shape} differ in length")
                size = pck_size(p, pck_ref, t.size)
                if not len(p.src_kps):
                    npairs[p.cls] += 1
                    continue
                s = features(p.src)
                tokens = keypoint_tokens(p.src_kps, s.scale, s.grid, stride, patch)
                pred = token_centres(transfer(descriptors(s, bin, tokens), trg_desc), t.scale, t.grid, stride, patch)
            except (DinofeatError, OSError, ValueError) as e:
                errors.append((p.name, f"{type(e).__name__}: {e}"))
                continue
            ok = pck_correct(pred, p.trg_kps, alpha, size)
            every = token_centres(np.arange(t.grid[0] * t.grid[1]), t.scale, t.grid, stride, patch)
            chance[p.cls] += chance_hits(p.trg_kps, every, alpha, size)
            correct[p.cls] += int(ok.sum())
            total[p.cls] += len(ok)
            npairs[p.cls] += 1
            if sum(k["cls"] == p.cls for k in kept) < samples:
                kept.append({"cls": p.cls, "name": p.name, "src": p.src, "trg": p.trg, "src_kps": p.src_kps,
                             "trg_kps": p.trg_kps, "pred": pred, "correct": ok, "threshold": alpha * size})
    bar.close()
    per_class = {c: correct[c] / total[c] for c in pairs if total[c]}
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    by_chance = {c: chance[c] / total[c] for c in pairs if total[c]}
    return KeypointResult(per_class=per_class, mean=mean, alpha=float(alpha), pck_ref=pck_ref,
                          chance_per_class=by_chance,
                          chance=float(np.mean(list(by_chance.values()))) if by_chance else float("nan"),
                          num_pairs={c: n for c, n in npairs.items() if n}, num_keypoints={c: n for c, n in
                                                                                      total.items() if n},
                          errors=errors, samples=kept)


def check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise InputError(f"--alpha {alpha!r}: expected a number > 0 (share of max(h, w))")


def resolve_pck_ref(pck_ref: str | None, layout: str, pairs: dict, root) -> str:
    """The threshold reference: `pck_ref`, or the layout's default; bbox needs every target's object box."""
    pck_ref = pck_ref or DEFAULT_PCK_REF.get(layout, "kpbox")
    if pck_ref not in PCK_REFS:
        raise InputError(f"--pck-ref {pck_ref!r}: expected one of {', '.join(PCK_REFS)}")
    if pck_ref == "bbox" and any(p.trg_bbox is None for items in pairs.values() for p in items):
        raise InputError(f"--pck-ref bbox: the {layout} annotations under {str(root)!r} have no object boxes; use "
                         "--pck-ref kpbox or image")
    return pck_ref


def evaluate_keypoints(root, layout: str = "willow", classes=None, *, pairs_per_class: int | None = None,
                       seed: int = 0, alpha: float = 0.1, pck_ref: str | None = None, load_size=224,
                       layer: int = 9, facet: str = "key", bin: bool = True, model: str = "dino_vits8",
                       stride: int = 4, weights=None, backend: str = "auto", device="auto", extractor=None,
                       precision: str = "fp32", split: str = "test", samples: int = 2,
                       progress: bool = False) -> KeypointResult:
    """PCK@alpha of keypoint transfer on a data set in the `willow`, `spair` or `json` layout (see
    `dinofeat.apps.kp_data`); `pck_ref` defaults to kpbox (willow, json) or bbox (spair)."""
    from .common import make_extractor

    pairs = load_keypoint_pairs(root, layout, classes, pairs_per_class, seed, split)
    pck_ref = resolve_pck_ref(pck_ref, layout, pairs, root)
    ex = make_extractor(extractor, model, stride, weights, backend, device, precision, progress)
    feats = StoreFeatures(ex, load_size, layer, facet)
    res = evaluate_pairs(pairs, feats, stride=ex.stride, patch=ex.patch_size, alpha=alpha, pck_ref=pck_ref,
                         bin=bin, samples=samples, progress=progress)
    res.settings = {"layout": layout, "model": ex.model_name, "stride": ex.stride, "layer": layer, "facet": facet,
                    "bin": bin, "load_size": load_size, "pairs_per_class": pairs_per_class, "seed": seed,
                    "weights_sha256": ex.weights_sha256, "forwards": feats.forwards}
    return res
