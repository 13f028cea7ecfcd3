"""`dinofeat eval spair | keypoints | homography`: the accuracy evaluations on the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..apps.defaults import SPAIR
from ..config import MatchConfig, add_arguments
from ..errors import DinofeatError
from .common import _check_images, _extractor, add_descriptor_arguments, add_model_arguments


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dataset", metavar="BENCHMARK", required=True)
    s = sub.add_parser("spair", help="PCK on SPair-71k's pair annotations (the paper's Table 3 protocol)")
    s.add_argument("--root", required=True, help="the SPair-71k folder (JPEGImages/, PairAnnotation/)")
    s.add_argument("--categories", nargs="+", default=None, help="default: every category present")
    s.add_argument("--alpha", type=float, default=SPAIR.alpha, help="PCK threshold as a share of the box size")
    s.add_argument("--pairs-per-category", type=int, default=SPAIR.pairs_per_category,
                   help="pairs evaluated per category")
    s.add_argument("--seed", type=int, default=SPAIR.seed, help="seed of the pair sampling")
    s.add_argument("--split", default=SPAIR.split, help="SPair-71k split (trn | val | test)")
    s.add_argument("--bbox", dest="normalize", action="store_const", const="bbox", default="image",
                   help="threshold alpha * max(bbox h, w) instead of alpha * max(image h, w)")
    s.add_argument("--json", default=None, metavar="OUT.json", help="also write the result as JSON")
    add_descriptor_arguments(s, SPAIR.layer, SPAIR.bin)

    k = sub.add_parser("keypoints", help="keypoint-transfer accuracy (PCK@alpha) of a WILLOW / SPair / json data "
                       "set (docs/accuracy.md)")
    k.add_argument("root", metavar="ROOT", help="the data set folder")
    k.add_argument("--layout", default="willow", choices=["willow", "spair", "json"],
                   help="dataset layout under ROOT (json: docs/accuracy.md)")
    k.add_argument("--classes", nargs="+", default=None, help="class folders to evaluate (default: all)")
    k.add_argument("--pairs-per-class", type=int, default=None, help="ordered pairs drawn per class (default: all)")
    k.add_argument("--seed", type=int, default=0, help="seed of --pairs-per-class (default 0)")
    k.add_argument("--alpha", type=float, default=0.1, help="PCK threshold share (default 0.1)")
    k.add_argument("--pck-ref", default=None, choices=["kpbox", "bbox", "image"],
                   help="extent whose max(h, w) scales alpha: the target's keypoints' box (willow / json default), "
                   "its object box (spair default) or the image")
    k.add_argument("--split", default=SPAIR.split, help="SPair-71k split (--layout spair)")
    k.add_argument("--out", default=None, metavar="DIR", help="write DIR/pck.json, pck.md and pck_samples.png")
    _match(k, thresh=False)

    h = sub.add_parser("homography", help="Best-Buddies accuracy under a ground-truth homography (HPatches, Oxford)")
    h.add_argument("inputs", nargs="+", metavar="IMG1 IMG2 H | FOLDER",
                   help="two images and the homography file (FileStorage XML or 3x3 text), or an HPatches folder")
    h.add_argument("--ransac-thresh", type=float, default=3.0, help="RANSAC reprojection threshold, px (3)")
    h.add_argument("--out", default=None, metavar="DIR", help="write DIR/homography.json and homography*.png")
    _match(h, thresh=True)


def _match(p: argparse.ArgumentParser, thresh: bool) -> None:
    """`dinofeat match`'s descriptor flags (and its foreground threshold where Best Buddies are filtered)."""
    add_arguments(p, MatchConfig, only=("layer", "facet", "bin", "thresh")[:4 if thresh else 3],
                  help={"bin": "unbinned descriptors", "thresh": "saliency threshold for the foreground"})
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)


def eval_main(args) -> int:
    return {"spair": _spair, "keypoints": _keypoints, "homography": _homography}[args.dataset](args)


def _out_dir(args) -> Path | None:
    from ..viz import check_output_path

    if args.out is None:
        return None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DinofeatError(f"--out {args.out!r}: exists and is not a directory")
    check_output_path(out / "probe.json", "--out")
    return out


def _write_json(path: Path, data: dict) -> Path:
    from ..viz import atomic_save

    return atomic_save(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)), "--out")


def _write_png(path: Path, image) -> Path:
    from ..viz import atomic_save

    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG"), "--out")


def _spair(args) -> int:
    from ..apps.spair import evaluate_spair, spair_pairs

    spair_pairs(args.root, args.categories, args.pairs_per_category, args.seed, args.split)  # before the model
    res = evaluate_spair(args.root, categories=args.categories, load_size=args.load_size, layer=args.layer,
                         facet=args.facet, bin=args.bin, extractor=_extractor(args), alpha=args.alpha,
                         pairs_per_category=args.pairs_per_category, seed=args.seed, split=args.split,
                         normalize=args.normalize, progress=not args.quiet)
    print(pck_table(res.per_category, res.num_pairs, res.num_keypoints, res.mean, args.alpha, "category"))
    for name, msg in res.errors:
        print(f"skipped {name}: {msg}")
    if args.json:
        from ..viz import atomic_save

        path = atomic_save(args.json, lambda tmp: Path(tmp).write_text(json.dumps(res.to_dict(), indent=2)))
        print(f"result written to {path}")
    return 0


def pck_table(per_class: dict, pairs: dict, kps: dict, mean: float, alpha: float, head: str = "class") -> str:
    """Markdown table: one row per class (pairs, keypoints, PCK in %) and the mean."""
    lines = [f"| {head} | pairs | keypoints | PCK@{alpha:g} (%) |", "|---|---:|---:|---:|"]
    for c, v in per_class.items():
        lines.append(f"| {c} | {pairs[c]} | {kps[c]} | {100 * v:.2f} |")
    lines.append(f"| mean | {sum(pairs.values())} | {sum(kps.values())} | {100 * mean:.2f} |")
    return "\n".join(lines)


def _keypoints(args) -> int:
    from ..apps.keypoints import check_alpha, evaluate_keypoints, resolve_pck_ref
    from ..apps.kp_data import load_keypoint_pairs
    from ..viz import draw_keypoint_samples

    out = _out_dir(args)
    check_alpha(args.alpha)
    pairs = load_keypoint_pairs(args.root, args.layout, args.classes, args.pairs_per_class, args.seed, args.split)
    ref = resolve_pck_ref(args.pck_ref, args.layout, pairs, args.root)  # both before the model loads
    res = evaluate_keypoints(args.root, args.layout, args.classes, pairs_per_class=args.pairs_per_class,
                             seed=args.seed, alpha=args.alpha, pck_ref=args.pck_ref, load_size=args.load_size,
                             layer=args.layer, facet=args.facet, bin=not args.no_bin, extractor=_extractor(args),
                             split=args.split, progress=not args.quiet)
    table = pck_table(res.per_class, res.num_pairs, res.num_keypoints, res.mean, res.alpha)
    print(table)
    print(f"PCK@{res.alpha:g}, threshold alpha * max(h, w) of the target's {ref}; chance (a random target token) "
          f"{100 * res.chance:.2f}%; {res.settings['forwards']} forwards")
    for name, msg in res.errors:
        print(f"skipped {name}: {msg}")
    if out is not None:
        _write_json(out / "pck.json", res.to_dict())
        from ..viz import atomic_save

        atomic_save(out / "pck.md", lambda tmp: Path(tmp).write_text(table + "\n"), "--out")
        _write_png(out / "pck_samples.png", draw_keypoint_samples(res.samples))
        print(f"pck.json, pck.md, pck_samples.png written to {out}")
    return 0 if res.per_class else 1


def _homography(args) -> int:
    from ..apps.homography import evaluate_homography, folder_pairs, pooled_metrics, read_homography
    from ..pipeline.matcher import Matcher
    from ..viz import draw_homography

    out = _out_dir(args)
    if len(args.inputs) == 1:
        pairs = folder_pairs(args.inputs[0])
    elif len(args.inputs) == 3:
        pairs = [("pair", Path(args.inputs[0]), Path(args.inputs[1]), Path(args.inputs[2]))]
    else:
        raise DinofeatError(f"expected IMG1 IMG2 H or FOLDER, got {len(args.inputs)} arguments")
    for _, im1, im2, hpath in pairs:
        _check_images((("IMG1", str(im1)), ("IMG2", str(im2))))
        read_homography(hpath)
    m = Matcher(extractor=_extractor(args), load_size=args.load_size, layer=args.layer, facet=args.facet,
                bin=not args.no_bin, thresh=args.thresh)
    results = {}
    for name, im1, im2, hpath in pairs:
        results[name] = evaluate_homography(im1, im2, hpath, matcher=m, ransac_thresh=args.ransac_thresh)
        print(f"{name}: {homography_line(results[name].metrics)}")
    if len(args.inputs) == 3:
        data = next(iter(results.values())).metrics
    else:
        data = {**pooled_metrics(list(results.values())), "per_pair": {k: r.metrics for k, r in results.items()}}
        print(f"all: {homography_line(data)}")
    if out is not None:
        data = {**data, "settings": next(iter(results.values())).settings}
        _write_json(out / "homography.json", data)
        for name, r in results.items():
            _write_png(out / ("homography.png" if len(args.inputs) == 3 else f"homography_{name}.png"),
                       draw_homography(r))
        print(f"homography.json and PNG(s) written to {out}")
    return 0


def homography_line(m: dict) -> str:
    """One line of a metrics dict (shares in %)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    px = ", ".join(f"<={k}px {pct(v)}" for k, v in m["within_px"].items())
    diag = ", ".join(f"<={float(k) * 100:g}%diag {pct(v)}" for k, v in m["within_diag"].items())
    med = "n/a" if m["median_px"] is None else f"{m['median_px']:.2f}"
    corner = m["ransac_corner_error_px"]
    return (f"{m['num_matches']} best buddies; {px}; {diag}; median {med} px; RANSAC corner error "
            f"{'n/a' if corner is None else f'{corner:.2f}'} px")
