"""Export layer: ONNX graphs, TensorRT engines and their cache, `write_engine`.

Owns: turning a `dinofeat.model` ViT into files (ONNX, TensorRT engine + JSON) and the on-disk engine cache.
May import: the base layer (errors, limits, io, config, progress, viz), `dinofeat.kernels`, `dinofeat.model`.
`Request` / `StridedViT` are re-exported here for old callers; their home is `dinofeat.model`.
"""

from ..model.vit import Request, StridedViT

__all__ = ["Request", "StridedViT"]
