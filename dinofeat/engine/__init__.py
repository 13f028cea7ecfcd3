"""Engine layer: running the strided ViT.

Owns: preprocessing, the backends (torch, ONNX Runtime, TensorRT), the `Extractor` with `extract` /
`extract_many` (the one place that groups images by size, batches and forwards) and the public access applications
need on every backend (the CLS output, the patch grid, `with_stride`).

May import: model, export, kernels and the base layer (errors, io, limits, progress, config); never matching,
pipeline, applications or anything above them."""

from .extractor import Extractor, Features

__all__ = ["Extractor", "Features"]
