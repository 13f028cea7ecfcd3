"""Deterministic checkpoints for tests, `dinofeat doctor` and benchmarks (no download needed).

The rule is the one the golden outputs were made with (`shared/golden/README.md`): visit the official state-dict
keys in sorted order with one `numpy.random.default_rng(seed)`, draw a standard normal of each shape (float64),
set LayerNorm weights to 1 + 0.1 * draw and everything else to 0.02 * draw, cast to float32.
"""

from __future__ import annotations

import numpy as np
import torch


def is_norm_weight(key: str) -> bool:
    parts = key.split(".")
    return parts[-1] == "weight" and len(parts) >= 2 and parts[-2].startswith("norm")


def deterministic_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Apply the golden rule to a {key: shape} layout; returns float32 CPU tensors."""
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        draw = rng.standard_normal(shapes[key])
        value = 1 + 0.1 * draw if is_norm_weight(key) else 0.02 * draw
        out[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return out


def official_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the official checkpoint layout of a zoo model (DINO / DINOv2: our parameter names)."""
    from .model.vit import StridedViT
    from .model.zoo import get_model_spec

    with torch.device("meta"):
        model = StridedViT(get_model_spec(model_name))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def deterministic_weights(model_name: str = "dino_vits8", seed: int = 0) -> dict[str, torch.Tensor]:
    """The golden rule's weights for `model_name`, in the official layout."""
    return deterministic_state_dict(official_shapes(model_name), seed)
