"""Keypoint data sets as pairs: the WILLOW-ObjectClass, SPair-71k and json layouts, and seeded pair sampling.

Every reader returns `{class: [KeypointPair, ...]}` (classes sorted, pairs in a fixed order), so the evaluation
(`dinofeat.apps.keypoints`) does not care where the annotations came from.

Layouts:
  willow  ROOT/<Class>/<name>.png (or .jpg) with ROOT/<Class>/<name>.mat holding `pts_coord` (2, N): row 0 x,
          row 1 y, in the image's pixels; the same index is the same part in every image of the class.
  spair   ROOT/JPEGImages/<category>/<name>.jpg and ROOT/PairAnnotation/<split>/*.json (SPair-71k's own
          pair annotations: `src_kps` / `trg_kps` [[x, y], ...], `trg_bndbox` [x1, y1, x2, y2]).
  json    ROOT/keypoints.json (format in docs/accuracy.md):
          {"images": [{"file": "cars/a.jpg", "class": "car", "keypoints": {"wheel": [x, y], ...},
                       "bbox": [x1, y1, x2, y2]}, ...]}
          `class` defaults to "all", `bbox` is optional; keypoints with the same id correspond.
For willow and json, the pairs of a class are its ordered image pairs (s, t), s != t, in sorted order, each
with the keypoints both images annotate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import IMAGE_SUFFIXES

LAYOUTS = ("willow", "spair", "json")
JSON_NAME = "keypoints.json"


@dataclass(frozen=True)
class AnnotatedImage:
    """One image: path, keypoints {id: (x, y)} in its stored pixels, optional object box (x1, y1, x2, y2)."""

    path: Path
    keypoints: dict
    bbox: tuple | None = None


@dataclass(frozen=True)
class KeypointPair:
    """One evaluation pair: src_kps (N, 2) and trg_kps (N, 2) corresponding (x, y) in original pixels;
    trg_all (M, 2) every keypoint annotated on the target (for the `kpbox` threshold); trg_bbox or None."""

    cls: str
    name: str
    src: Path
    trg: Path
    src_kps: np.ndarray
    trg_kps: np.ndarray
    trg_all: np.ndarray
    trg_bbox: tuple | None = None


def sample(items: list, per_class: int | None, rng: np.random.Generator) -> list:
    """`per_class` items drawn without replacement (kept in their order), or all of them for None."""
    if per_class is None:
        return list(items)
    idx = np.sort(rng.choice(len(items), size=min(per_class, len(items)), replace=False))
    return [items[i] for i in idx]


def check_per_class(value, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise InputError(f"{flag}={value!r}: expected an int >= 1 (or none for every pair)")


def image_pairs(images: dict[str, list[AnnotatedImage]]) -> dict[str, list[KeypointPair]]:
    """Every ordered pair (s, t), s != t, of each class, with the keypoint ids both images annotate."""
    out: dict[str, list[KeypointPair]] = {}
    for cls, items in images.items():
        pairs = []
        for s in items:
            for t in items:
                if s is t:
                    continue
                ids = [k for k in s.keypoints if k in t.keypoints]
                pairs.append(KeypointPair(
                    cls=cls, name=f"{s.path.stem}->{t.path.stem}", src=s.path, trg=t.path,
                    src_kps=_points([s.keypoints[k] for k in ids]), trg_kps=_points([t.keypoints[k] for k in ids]),
                    trg_all=_points(list(t.keypoints.values())), trg_bbox=t.bbox))
        out[cls] = pairs
    return out


def _points(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


def _classes(found: dict, classes, root: Path, what: str, flag: str = "--classes") -> dict:
    if classes:
        missing = sorted(set(classes) - set(found))
        if missing:
            raise InputError(f"{flag}: {', '.join(missing)} not found under {root}; present: "
                             f"{', '.join(sorted(found)) or 'none'}")
        found = {c: found[c] for c in classes}
    if not found:
        raise InputError(f"ROOT {str(root)!r}: no {what}")
    return dict(sorted(found.items()))


def read_willow(root, classes=None) -> dict[str, list[AnnotatedImage]]:
    """{class: [AnnotatedImage]} of a WILLOW-ObjectClass folder (ids are the keypoint indices 0..N-1)."""
    from scipy.io import loadmat

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ROOT {str(root)!r}: not a directory (WILLOW layout: ROOT/<Class>/<name>.png + .mat)")
    found: dict[str, list[AnnotatedImage]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        items = []
        for mat in sorted(folder.glob("*.mat")):
            image = next((mat.with_suffix(s) for s in IMAGE_SUFFIXES if mat.with_suffix(s).is_file()), None)
            if image is None:
                raise InputError(f"{mat}: no image next to it ({mat.stem} with one of {', '.join(IMAGE_SUFFIXES)})")
            try:
                pts = np.asarray(loadmat(str(mat))["pts_coord"], dtype=np.float64)
            except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
                raise InputError(f"{mat}: not a WILLOW annotation with pts_coord ({type(e).__name__}: {e})") from None
            if pts.ndim != 2 or pts.shape[0] != 2:
                raise InputError(f"{mat}: pts_coord must be (2, N) (x row, y row), got {pts.shape}")
            items.append(AnnotatedImage(image, {i: (pts[0, i], pts[1, i]) for i in range(pts.shape[1])}))
        if items:
            found[folder.name] = items
    return _classes(found, classes, root, "class folders holding <name>.mat annotations (WILLOW layout)")


def read_json(root, classes=None) -> dict[str, list[AnnotatedImage]]:
    """{class: [AnnotatedImage]} of ROOT/keypoints.json (image paths relative to ROOT)."""
    root = Path(root)
    path = root / JSON_NAME if root.is_dir() else root
    if not path.is_file():
        raise InputError(f"ROOT {str(root)!r}: no {JSON_NAME} (json layout: see docs/accuracy.md)")
    base = path.parent
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["images"]
        found: dict[str, list[AnnotatedImage]] = {}
        for i, e in enumerate(entries):
            kps = {str(k): tuple(float(v) for v in xy) for k, xy in e["keypoints"].items()}
            if any(len(xy) != 2 for xy in kps.values()):
                raise ValueError(f"images[{i}]: every keypoint must be [x, y]")
            bbox = tuple(float(v) for v in e["bbox"]) if e.get("bbox") is not None else None
            if bbox is not None and len(bbox) != 4:
                raise ValueError(f"images[{i}]: bbox must be [x1, y1, x2, y2]")
            found.setdefault(str(e.get("class", "all")), []).append(AnnotatedImage(base / e["file"], kps, bbox))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a dinofeat keypoints.json ({type(e).__name__}: {e}); expected "
                         '{"images": [{"file": ..., "class": ..., "keypoints": {"id": [x, y]}}]}') from None
    return _classes(found, classes, root, f"images in {path}")


def read_spair(root, classes=None, split: str = "test",
               flags=("ROOT", "--classes")) -> dict[str, list[KeypointPair]]:
    """{category: [KeypointPair]} of SPair-71k's pair annotations, sorted by file name (`flags`: the names of the
    root and class arguments in errors)."""
    root = Path(root)
    ann_dir = root / "PairAnnotation" / split
    if not (root / "JPEGImages").is_dir() or not ann_dir.is_dir():
        raise InputError(f"{flags[0]} {str(root)!r}: expected SPair-71k's layout with JPEGImages/<category>/ and "
                         f"PairAnnotation/{split}/*.json")
    found: dict[str, list[KeypointPair]] = {}
    for path in sorted(ann_dir.glob("*.json")):
        try:
            ann = json.loads(path.read_text(encoding="utf-8"))
            cat = ann["category"]
            src, trg = _points(ann["src_kps"]), _points(ann["trg_kps"])
            box = ann.get("trg_bndbox")
            pair = KeypointPair(cls=cat, name=path.name, src=root / "JPEGImages" / cat / ann["src_imname"],
                                trg=root / "JPEGImages" / cat / ann["trg_imname"], src_kps=src, trg_kps=trg,
                                trg_all=trg, trg_bbox=tuple(float(v) for v in box) if box is not None else None)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a SPair-71k pair annotation ({type(e).__name__}: {e})") from None
        found.setdefault(cat, []).append(pair)
    return _classes(found, classes, ann_dir, "pair annotations", flags[1])


def load_keypoint_pairs(root, layout: str, classes=None, pairs_per_class: int | None = None, seed: int = 0,
                        split: str = "test") -> dict[str, list[KeypointPair]]:
    """The evaluation pairs of a data set: every pair of each class, or `pairs_per_class` drawn per class with a
    numpy generator seeded with `seed` (classes in sorted order)."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    check_per_class(pairs_per_class, "--pairs-per-class")
    if layout == "spair":
        pairs = read_spair(root, classes, split)
    else:
        pairs = image_pairs((read_willow if layout == "willow" else read_json)(root, classes))
    rng = np.random.default_rng(seed)
    return {cls: sample(items, pairs_per_class, rng) for cls, items in pairs.items()}
