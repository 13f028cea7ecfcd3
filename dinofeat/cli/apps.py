"""`dinofeat pca | coseg | parts`: the applications on the command line (rows of `OPTIONAL_COMMANDS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..apps.defaults import COSEG, PARTS, PCA
from ..errors import DinofeatError
from .common import _check_suffix, _extractor, add_descriptor_arguments


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMG_OR_DIR", help="image files and/or directories of images")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="directory for the PNGs (created)")
    p.add_argument("--save", default=None, metavar="OUT.npz", help="also save every array to this .npz")
    p.add_argument("--batch-size", type=int, default=8, help="images of one size per forward (default 8)")


def _coseg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--elbow", type=float, default=COSEG.elbow, help="elbow of the k-means objective that picks k")
    p.add_argument("--thresh", type=float, default=COSEG.thresh, help="saliency threshold of a cluster's vote")
    p.add_argument("--votes-percentage", type=float, default=COSEG.votes_percentage,
                   help="percent of images in which a cluster must be salient to be foreground")
    p.add_argument("--sample-interval", type=int, default=COSEG.sample_interval,
                   help="k-means trains on every N-th descriptor")
    p.add_argument("--full-res-saliency", dest="low_res_saliency_maps", action="store_false",
                   help="saliency from the descriptor forward instead of a stride-8 half-size one")
    p.add_argument("--kmeans", default="faiss", choices=["faiss", "torch"],
                   help="faiss (the original's, default) or torch on --device (fast mode)")


def add_pca_arguments(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    p.add_argument("--n-components", type=int, default=PCA.n_components, help="principal components to draw")
    p.add_argument("--per-image", dest="all_together", action="store_false", help="fit one PCA per image")
    add_descriptor_arguments(p, PCA.layer, PCA.bin)


def add_coseg_arguments(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    _coseg_args(p)
    p.add_argument("--remove-outliers", action="store_true", help="drop images unlike the others before voting")
    p.add_argument("--outliers-thresh", type=float, default=COSEG.outliers_thresh,
                   help="with --remove-outliers: similarity below which an image is an outlier")
    add_descriptor_arguments(p, COSEG.layer, COSEG.bin)


def add_parts_arguments(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    _coseg_args(p)
    p.add_argument("--num-parts", type=int, default=PARTS.num_parts, help="parts to find")
    p.add_argument("--num-crop-augmentations", type=int, default=PARTS.num_crop_augmentations,
                   help="random crops added per image for the part clustering")
    p.add_argument("--three-stages", action="store_true", help="the original's optional third clustering stage")
    p.add_argument("--elbow-second-stage", type=float, default=PARTS.elbow_second_stage,
                   help="elbow of the second (part) clustering")
    p.add_argument("--crf", default="auto", choices=["auto", "pydensecrf", "torch"],
                   help="dense CRF: pydensecrf (the original's), a torch mean-field, or auto")
    add_descriptor_arguments(p, COSEG.layer, COSEG.bin)


def _check_save(args) -> None:
    if args.save:
        _check_suffix(args.save, (".npz",), "--save")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise DinofeatError(f"-o/--output {args.output!r}: exists and is not a directory")


def _names(sources) -> list[str]:
    """One unique file stem per image (input order)."""
    seen: dict[str, int] = {}
    out = []
    for src in sources:
        stem = Path(src).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def _write(args, results, sources, draw) -> None:
    """PNGs (atomic) per image via draw(result) -> {suffix: PIL}, then the optional .npz."""
    import numpy as np

    from ..viz import atomic_save

    names = _names(sources)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, r in zip(names, results, strict=True):
        for suffix, im in draw(r).items():
            atomic_save(out / f"{name}_{suffix}.png", lambda tmp, im=im: im.save(tmp, format="PNG"))
            written += 1
    print(f"{len(results)} image(s), {written} PNG(s) written to {out}")
    if args.save:
        arrays = {"names": np.array(names)}
        for i, r in enumerate(results):
            for key, value in vars(r).items():
                arrays[f"{key}_{i}"] = np.asarray(value)
        path = atomic_save(args.save, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
        print(f"saved every array to {path}")


def _sources(images) -> list[str]:
    from ..apps.common import image_list

    out = [str(s) for s in image_list(images, name="IMG_OR_DIR")]
    for path in out:
        if not Path(path).is_file():
            raise DinofeatError(f"IMG_OR_DIR: file not found: {path!r}")
    return out


def pca_main(args) -> int:
    from ..apps.pca import pca
    from ..viz import pca_images

    _check_save(args)
    sources = _sources(args.images)
    res = pca(sources, load_size=args.load_size, layer=args.layer, facet=args.facet, bin=args.bin,
              n_components=args.n_components, all_together=args.all_together, extractor=_extractor(args),
              batch_size=args.batch_size, progress=not args.quiet)
    _write(args, res, sources, lambda r: {f"pca_{k}": v for k, v in pca_images(r).items()})
    return 0


def _clustering_kwargs(args) -> dict:
    """The keyword arguments `cosegment` and `part_cosegment` share (the flags of `_coseg_args`, the descriptor
    and model flags); loads the model."""
    return {"elbow": args.elbow, "load_size": args.load_size, "layer": args.layer, "facet": args.facet,
            "bin": args.bin, "thresh": args.thresh, "votes_percentage": args.votes_percentage,
            "sample_interval": args.sample_interval, "low_res_saliency_maps": args.low_res_saliency_maps,
            "extractor": _extractor(args), "kmeans": args.kmeans, "batch_size": args.batch_size,
            "progress": not args.quiet}


def coseg_main(args) -> int:
    from ..apps.coseg import cosegment
    from ..viz import draw_cosegmentation, draw_mask

    _check_save(args)
    sources = _sources(args.images)
    res = cosegment(sources, remove_outliers=args.remove_outliers, outliers_thresh=args.outliers_thresh,
                    **_clustering_kwargs(args))
    _write(args, res, sources, lambda r: {"coseg": draw_cosegmentation(r), "mask": draw_mask(r)})
    for name, r in zip(_names(sources), res, strict=True):
        print(f"{name}: {coverage_line(r.mask)}")
    return 0


def coverage_line(mask, low: float = 0.02, high: float = 0.98) -> str:
    """How much of the image a co-segmentation mask covers, saying so when that is (nearly) all or nothing."""
    import numpy as np

    cover = float(np.asarray(mask, dtype=bool).mean()) if np.asarray(mask).size else 0.0
    text = f"the mask covers {100 * cover:.1f}% of the image"
    if cover >= high:
        return (text + " (nearly all of it: no common foreground was separated from the background; try a higher "
                "--thresh or --votes-percentage)")
    if cover <= low:
        return (text + " (nearly nothing: no common foreground was found; try a lower --thresh or "
                "--votes-percentage, or check that the images share an object)")
    return text


def parts_main(args) -> int:
    from ..apps.parts import part_cosegment
    from ..viz import draw_parts

    _check_save(args)
    sources = _sources(args.images)
    res = part_cosegment(sources, num_parts=args.num_parts, num_crop_augmentations=args.num_crop_augmentations,
                         three_stages=args.three_stages, elbow_second_stage=args.elbow_second_stage, crf=args.crf,
                         **_clustering_kwargs(args))
    _write(args, res, sources, lambda r: {"parts": draw_parts(r)})
    return 0
