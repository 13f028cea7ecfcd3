"""``dinofeat export``: write the strided ViT of one (model, stride, H, W, outputs) as ONNX (and a TensorRT engine).

Example::

    dinofeat export --model dino_vits8 --stride 4 --size 224x224 --layer 9 --facet key --saliency \\
        --weights dino_deitsmall8_pretrain.pth -o vits8_s4_224.onnx

The file comes from the export cache (``<cache>/onnx``, see `dinofeat.export.onnx.get_onnx`) and is copied to
``-o``. ``--variant ort`` writes the ONNX Runtime transformer-fused graph instead of the portable one;
``--tensorrt-engine E`` also builds a TensorRT engine (needs an NVIDIA GPU and the tensorrt package) and writes its
manifest to ``E.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ExtractorConfig, MatchConfig, add_arguments
from ..errors import InputError, OutputError
from .common import EXPORT_CHOICES, parse_size


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Export the preprocessing-free strided ViT for one input size to ONNX (opset 17, dynamic "
                     "batch, named outputs), optionally ORT-optimised, optionally as a TensorRT engine.")
    model = ExtractorConfig  # the model settings: declared once, with export's defaults and words
    add_arguments(p, model, only=("model", "stride"), defaults={"stride": 4},
                  help={"model": "zoo name (default dino_vits8)",
                        "stride": "patch-embedding stride, must divide the patch size"})
    p.add_argument("--size", default="224x224", help="input H x W in pixels of the preprocessed image "
                   "(e.g. 224x224, 224x336); fixed per graph, default 224x224; with --dynamic only the size "
                   "traced and TensorRT's opt shape")
    p.add_argument("--dynamic", action="store_true", help="one graph for every input H, W >= the patch size "
                   "(position table / RoPE computed in the graph from the input size)")
    add_arguments(p, MatchConfig, only=("layer", "facet"), nargs={"layer": "+"},
                  help={"layer": "block(s) whose facet to output (default 9)"})
    p.add_argument("--saliency", action="store_true", help="also output the saliency row (last block CLS attention)")
    add_arguments(p, model, only=("weights", "precision"), choices=EXPORT_CHOICES, metavars={"weights": None},
                  help={"weights": "checkpoint file (.pth / .safetensors); default: the cached official file, "
                                   "downloaded if missing",
                        "precision": "fp16: fp16 weights/matmuls with fp32 LayerNorm/Softmax (for TensorRT 11 / "
                                     "ORT CUDA)"})
    p.add_argument("--variant", default="plain", choices=["plain", "ort"],
                   help="plain: portable, plain ONNX ops only (TensorRT); ort: ONNX Runtime transformer-fused "
                   "(contrib ops, CPU/CUDA providers), verified against plain")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--tensorrt-engine", default=None, metavar="ENGINE",
                   help="also build a TensorRT engine to this file (NVIDIA GPU + tensorrt package needed)")
    p.add_argument("--max-batch", type=int, default=8, help="TensorRT profile: largest batch (default 8)")
    p.add_argument("--opt-batch", type=int, default=1, help="TensorRT profile: batch to tune for (default 1)")
    shapes = p.add_argument_group("TensorRT shape profiles (dynamic H, W; imply --dynamic)")
    shapes.add_argument("--min-shape", metavar="BxHxW", help="one wide profile: smallest input (default "
                        "1 x patch x patch)")
    shapes.add_argument("--opt-shape", metavar="BxHxW", help="one wide profile: shape to tune for (default "
                        "opt-batch x --size)")
    shapes.add_argument("--max-shape", metavar="BxHxW", help="one wide profile: largest input (default "
                        "max-batch x max(--size, 1024) per side)")
    shapes.add_argument("--size-buckets", metavar="HxW[,HxW...]", help="one profile per bucket (smallest area "
                        "first; a call uses the first bucket holding its H and W, from the patch size up)")
    typing = p.add_mutually_exclusive_group()
    typing.add_argument("--strongly-typed", dest="strongly_typed", action="store_true", default=None,
                        help="TensorRT: strongly typed network (default on 11.x)")
    typing.add_argument("--weakly-typed", dest="strongly_typed", action="store_false",
                        help="TensorRT 10.x: builder precision flags (default on 10.x)")
    add_arguments(p, model, only=("rope_periods", "pos_interp"), help={
        "pos_interp": "learned position tables: resample as Meta's DINOv2 (offset), Hugging Face transformers "
                      "(size) or Meta's DINOv2 _reg (antialias) code; default: the zoo model's (docs/checkpoints.md)"})
    p.add_argument("--cache-dir", default=None, help="cache root (default: $DINOFEAT_CACHE or ~/.cache/dinofeat)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def export_main(args) -> int:
    import torch

    from ..export import cache
    from ..export.onnx import copy_onnx, get_onnx, output_shapes, tensorrt_op_table, tensorrt_unsupported_ops
    from ..model.vit import Request, build_vit, check_request
    from ..model.weights import load_weights
    from ..model.zoo import get_model_spec
    from ..viz import check_output_path

    quiet = bool(getattr(args, "quiet", False))
    ranged = any(getattr(args, k, None) for k in ("min_shape", "opt_shape", "max_shape", "size_buckets"))
    if ranged and not args.tensorrt_engine:
        raise InputError("--min-shape/--opt-shape/--max-shape/--size-buckets shape a TensorRT engine; add "
                         "--tensorrt-engine ENGINE")
    if getattr(args, "size_buckets", None) and any(getattr(args, k, None) for k in ("min_shape", "opt_shape",
                                                                                   "max_shape")):
        raise InputError("use either --size-buckets or --min-shape/--opt-shape/--max-shape, not both")
    dynamic = bool(getattr(args, "dynamic", False)) or ranged
    height, width = parse_size(args.size)
    spec = get_model_spec(args.model)
    p = spec.patch_size
    if isinstance(args.stride, bool) or args.stride < 1 or p % args.stride:
        raise InputError(f"--stride {args.stride} must divide the patch size {p} of {spec.name}")
    layers = check_request(spec, list(args.layer), args.facet)
    request = Request(facets=tuple((lyr, args.facet) for lyr in dict.fromkeys(layers)), saliency=args.saliency)
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"-o/--output {str(out)!r}: expected a .onnx file name")
    check_output_path(out, "-o/--output")
    if args.variant == "ort" and args.precision != "fp32":
        raise InputError("--variant ort is made from the fp32 graph; use --precision fp32")

    loaded = load_weights(spec, args.weights, progress=not quiet)
    vit = build_vit(spec, args.stride, loaded, getattr(args, "rope_periods", "checkpoint"),
                    getattr(args, "pos_interp", None))
    with torch.no_grad():
        path = get_onnx(vit, request, height, width, precision=args.precision, weights_id=loaded.sha256,
                        variant=args.variant, cache_dir=args.cache_dir, progress=not quiet, dynamic=dynamic)
    import onnx

    try:
        copy_onnx(path, out)
    except OSError as e:
        raise OutputError(f"-o/--output {str(out)!r}: writing failed ({e}); nothing was written") from None
    model = onnx.load(str(out), load_external_data=False)
    rows, cols = vit.grid(height, width)
    shapes = output_shapes(vit, request, height, width)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ops[name] = ops.get(name, 0) + 1
    bad = tensorrt_unsupported_ops(model)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {cache.sha256_file(out)[:16]}...)")
    hw, tokens = ("height, width", "tokens") if dynamic else (f"{height}, {width}", str(rows * cols))
    grid = f"any H, W >= {p} (traced at {height}x{width}: grid {rows}x{cols})" if dynamic else \
        f"grid {rows}x{cols} = {rows * cols} tokens"
    print(f"  {spec.name} stride {args.stride}, input images (batch, 3, {hw}) float32, {grid}, opset "
          f"{next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}, variant {args.variant}")
    for name, shape in shapes.items():
        dims = (tokens,) + tuple(map(str, shape[1:]))
        print(f"  output {name}: (batch, {', '.join(dims)}) float32")
    print(f"  ops: {', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}")
    if args.variant == "plain":
        floor = tensorrt_op_table()["tensorrt_floor"]
        print(f"  TensorRT {floor}+ ONNX op support: " + ("all ops supported" if not bad else f"UNSUPPORTED {bad}"))
    if args.tensorrt_engine:
        profiles = shape_profiles(args, p, height, width) if dynamic else None
        from ..export.engine_file import write_engine

        dest, what = write_engine(vit, request, height, width, args.tensorrt_engine, weights_id=loaded.sha256,
                                  precision=args.precision, strongly_typed=args.strongly_typed,
                                  opt_batch=args.opt_batch, max_batch=args.max_batch, shape_profiles=profiles,
                                  cache_dir=args.cache_dir, progress=not quiet)
        print(f"wrote TensorRT engine {dest} ({what})", file=sys.stdout)
    return 0


def shape_profiles(args, patch_size: int, height: int, width: int):
    """The engine's `ShapeProfile`s from --size-buckets, or one wide profile from --min/--opt/--max-shape
    (defaults: 1 x patch x patch, opt-batch x --size, max-batch x max(--size, 1024) per side)."""
    from ..export.tensorrt import ShapeProfile, bucket_profiles, parse_shape

    if args.size_buckets:
        sizes = [parse_size(t) for t in str(args.size_buckets).split(",") if t.strip()]
        return bucket_profiles(sizes, patch_size, opt_batch=args.opt_batch, max_batch=args.max_batch)
    lo = parse_shape(args.min_shape, "--min-shape") if args.min_shape else (1, patch_size, patch_size)
    opt = parse_shape(args.opt_shape, "--opt-shape") if args.opt_shape else (args.opt_batch, height, width)
    hi = parse_shape(args.max_shape, "--max-shape") if args.max_shape else \
        (args.max_batch, max(height, 1024), max(width, 1024))
    if min(lo[1:]) < patch_size:
        raise InputError(f"--min-shape {'x'.join(map(str, lo))}: H and W must be >= the patch size {patch_size}")
    return (ShapeProfile(lo, opt, hi),)


__all__ = ["add_export_arguments", "export_main", "parse_size", "shape_profiles"]
