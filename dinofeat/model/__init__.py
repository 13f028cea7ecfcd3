"""Model layer: the strided ViT and everything about checkpoints.

Owns: `StridedViT` / `Request` / `build_vit` (the one forward definition every backend runs or exports), position
tables (`posembed`), the model table (`zoo`), checkpoint layouts (`layouts`, `layout_names`, `dinov3`,
`hf_config`), resolving and verifying weights (`weights`) and converting other sources (`weight_sources`).
May import: the base layer (errors, limits, io, config, progress) and `dinofeat.kernels`; nothing above.
"""

from .vit import Request, StridedViT, build_vit
from .zoo import MODELS, ModelSpec, get_model_spec, list_models

__all__ = ["MODELS", "ModelSpec", "Request", "StridedViT", "build_vit", "get_model_spec", "list_models"]
