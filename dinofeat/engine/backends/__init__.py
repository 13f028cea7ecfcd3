"""The backends of the engine layer (torch, ONNX Runtime, TensorRT) and their registry.

Owns: the `Backend` protocol (base.py: `run(batch, request) -> {name: tensor}`) and one module per backend; heavy
imports (onnxruntime, tensorrt) happen only inside the backend that needs them.
May import: export, model, kernels and the base layer (as the engine).
"""

from __future__ import annotations

import torch

from ...config import BACKEND_NAMES
from ...errors import InputError
from ...model.vit import StridedViT
from .base import Backend

BACKENDS = tuple(b for b in BACKEND_NAMES if b != "auto")  # declared in dinofeat.config


def resolve_backend_name(backend: str, device: torch.device) -> str:
    """`auto` -> torch (eager, exact, no export step); named backends are checked by their constructors."""
    if backend == "auto":
        return "torch"
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r} is unknown; choose one of: auto, {', '.join(BACKENDS)}")
    return backend


def create_backend(name: str, model: StridedViT, device: torch.device, precision: str, weights_id: str,
                   options: dict | None = None) -> Backend:
    """Build backend `name` around `model` (weights loaded, fp32, CPU).

    `weights_id` identifies the weights (SHA-256 of the file or of the tensors) for export/engine cache keys.
    `options`: keyword arguments of the backend's constructor (e.g. ``{"shape_profiles": ...}`` for tensorrt).
    """
    options = dict(options or {})
    if options and name != "tensorrt":
        raise InputError(f"backend_options {sorted(options)} apply to backend='tensorrt' only (got {name!r})")
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend(model, device, precision)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device, precision, weights_id)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(model, device, precision, weights_id, **options)
    raise InputError(f"backend={name!r} is unknown; choose one of: auto, {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "create_backend", "resolve_backend_name"]
