"""`write_engine`: a TensorRT engine file for a strided ViT, built from its ONNX graph through the engine cache.

The one public way to write an engine file: `dinofeat export --tensorrt-engine` and the Triton model repository
(`dinofeat.serve.repository`) both call it.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_engine(vit, request, height: int, width: int, dest, *, weights_id: str, precision: str = "fp32",
                 strongly_typed: bool | None = None, opt_batch: int = 1, max_batch: int = 8, shape_profiles=None,
                 cache_dir=None, progress: bool = True) -> tuple[Path, str]:
    """Build (or take from the engine cache) the engine of `vit` for `request` and copy it to `dest`.

    Args:
        vit, request: the model (`dinofeat.model.vit.StridedViT`) and its outputs (`Request`).
        height, width: the input size traced (fixed graph) or the opt shape (with `shape_profiles`).
        dest: the engine file; its metadata goes beside it as ``dest + ".json"`` (both written atomically).
        weights_id: SHA-256 of the weights (the cache key of the graph).
        shape_profiles: None (fixed H, W; a batch profile 1..max_batch) or `ShapeProfile`s over (B, H, W) of a
            dynamic graph (`dinofeat.export.tensorrt.bucket_profiles`).
    Returns:
        (dest, a one-line description: TensorRT version, typing, GPU, profiles).
    """
    from ..io import atomic_write_bytes
    from . import tensorrt as trt_export
    from .onnx import get_onnx

    trt = trt_export.import_tensorrt()
    plan = trt_export.build_plan(trt, precision, strongly_typed)
    onnx_path = get_onnx(vit, request, height, width, precision=plan["onnx_precision"], weights_id=weights_id,
                         variant="plain", cache_dir=cache_dir, progress=progress, dynamic=bool(shape_profiles))
    profile = trt_export.Profile(1, opt_batch, max_batch)
    _, _, manifest = trt_export.get_engine(onnx_path, precision=precision, profile=profile, height=height,
                                           width=width, strongly_typed=strongly_typed, cache_dir=cache_dir,
                                           progress=progress, trt=trt, shape_profiles=shape_profiles)
    src = Path(manifest["paths"][manifest["meta"]["engine"]])
    dest = Path(dest)
    atomic_write_bytes(dest, src.read_bytes())
    meta = dict(manifest["meta"], engine=dest.name)
    atomic_write_bytes(dest.with_suffix(dest.suffix + ".json"), json.dumps(meta, indent=1).encode())
    ranges = ("; ".join(f"profile {i}: {p.describe()}" for i, p in enumerate(shape_profiles)) if shape_profiles
              else f"batch 1..{max_batch}")
    return dest, (f"TensorRT {plan['version']}, {plan['typing']} typing, {meta['gpu']} "
                  f"sm{meta['compute_capability']}, {ranges}")


__all__ = ["write_engine"]
