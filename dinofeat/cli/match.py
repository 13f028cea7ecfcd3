"""`dinofeat match` (two images; the batch forms are `cli.batch` and `cli.distributed`) and `dinofeat
extract`."""

from __future__ import annotations

from ..errors import DinofeatError
from .common import _check_images, _check_suffix, _extractor, _save, precheck, resolve_stride


def cmd_match(args) -> int:
    from ..correspondences import check_match_args, find_correspondences
    from ..viz import draw_correspondences
    from .batch import batch_main, is_batch

    resolve_stride(args)
    if getattr(args, "ray", False):
        from .distributed import ray_main

        return ray_main(args)
    if is_batch(args):
        return batch_main(args)
    if not (args.img1 and args.img2):
        raise DinofeatError("match: expected IMG1 IMG2, or --pairs PAIRS.csv / DIR --all-pairs / QUERY DIR "
                            "with --out RESULTS.parquet")
    if args.out or args.resume:
        raise DinofeatError("--out/--resume: only with --pairs PAIRS.csv, DIR --all-pairs or QUERY DIR")
    _check_suffix(args.output, (".png", ".jpg", ".jpeg"), "-o/--output")
    if args.save:
        _check_suffix(args.save, (".npz",), "--save")
    check_match_args(args.num_pairs, args.thresh)
    precheck(args, args.layer)
    _check_images((("IMG1", args.img1), ("IMG2", args.img2)))
    ex = _extractor(args)
    corr = find_correspondences(args.img1, args.img2, num_pairs=args.num_pairs, load_size=args.load_size,
                                layer=args.layer, facet=args.facet, bin=not args.no_bin, thresh=args.thresh,
                                extractor=ex)
    canvas = draw_correspondences(corr)
    out = _save(args.output, lambda tmp: canvas.save(tmp, format=_image_format(args.output)), "-o/--output")
    print(f"{len(corr)} pairs ({int(corr.bbs_mask.sum())} foreground best buddies); drawn to {out}")
    for k, (p1, p2) in enumerate(zip(corr.points1, corr.points2, strict=False)):
        print(f"  {k}: image1 (y={p1[0]}, x={p1[1]})  <->  image2 (y={p2[0]}, x={p2[1]})")
    if args.save:
        arrays = corr.to_numpy()
        path = _save(args.save, lambda tmp: _savez(tmp, arrays), "--save")
        print(f"saved every field to {path}")
    return 0


def cmd_extract(args) -> int:
    import numpy as np

    from .. import progress as status

    _check_suffix(args.output, (".npz", ".safetensors"), "-o/--output")
    precheck(args, list(args.layer))
    _check_images(("IMG", path) for path in args.images)
    ex = _extractor(args)
    tensors = {}
    for i, path in enumerate(args.images):
        batch, _ = ex.preprocess(path, args.load_size, name="IMG")
        with status.step(f"forward of image {i + 1}/{len(args.images)} {path} ({batch.shape[-2]}x{batch.shape[-1]})"):
            f = ex.extract(batch, layer=args.layer if len(args.layer) > 1 else args.layer[0], facet=args.facet,
                           bin=args.bin, saliency=args.saliency)
        tensors[f"descriptors_{i}"] = f.descriptors[0].cpu().contiguous()
        if f.saliency is not None:
            tensors[f"saliency_{i}"] = f.saliency[0].cpu().contiguous()
        import torch

        tensors[f"num_patches_{i}"] = torch.tensor(f.num_patches, dtype=torch.int64)
        tensors[f"load_size_{i}"] = torch.tensor(f.load_size, dtype=torch.int64)
    meta = {"model": args.model, "stride": str(args.stride), "layer": " ".join(map(str, args.layer)),
            "facet": args.facet, "bin": str(args.bin), "images": "\n".join(args.images)}
    if args.output.endswith(".safetensors"):
        from safetensors.torch import save_file

        out = _atomic(args.output, lambda tmp: save_file(tensors, tmp, metadata=meta))
    else:
        arrays = {k: v.numpy() for k, v in tensors.items()}
        arrays.update({f"meta_{k}": np.array(v) for k, v in meta.items()})
        out = _atomic(args.output, lambda tmp: _savez(tmp, arrays))
    shapes = ", ".join(f"{tuple(v.shape)}" for k, v in tensors.items() if k.startswith("descriptors"))
    print(f"{len(args.images)} image(s), descriptors {shapes}; saved to {out}")
    return 0


def _savez(tmp: str, arrays: dict) -> None:
    import numpy as np

    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _image_format(path: str) -> str:
    return "PNG" if str(path).lower().endswith(".png") else "JPEG"


def _atomic(path, write):
    return _save(path, write, "-o/--output")


