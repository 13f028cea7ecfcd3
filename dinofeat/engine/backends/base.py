"""The one small protocol every backend implements, and the registry `Extractor(backend=...)` reads."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ...model.vit import Request


@runtime_checkable
class Backend(Protocol):
    """Runs the strided ViT for a request and returns named outputs.

    `run(batch, request)` takes a (B, 3, H, W) float32 tensor (already on `device`) and returns
    {name: tensor} with names from `request.output_names()` ("key9", "saliency", ...): facets (B, T, C) in the
    original channel order, their CLS rows (B, C) when `request.cls`, saliency (B, T); float32 torch tensors on the
    backend's device. Nothing above a backend knows which one ran. Backends that keep the model also offer
    `model_state_dict()` (fp32 CPU weights, for `Extractor.with_stride`). A backend whose `run` may be called from
    several threads at once sets the class attribute `thread_safe = True`; otherwise the Extractor serialises its
    calls.
    """

    name: str
    device: torch.device

    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]: ...


def fp32_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copy of a backend's model weights: what `model_state_dict()` returns (`Extractor.with_stride`)."""
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
