"""The strided ViT with facet/saliency heads, and its export to ONNX / TensorRT."""

from .model import Request, StridedViT

__all__ = ["Request", "StridedViT"]
