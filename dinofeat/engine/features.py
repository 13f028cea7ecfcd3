"""`Features`: what `Extractor.extract` returns for a batch, and `extract_many` for each image."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """What `Extractor.extract` returns.

    descriptors: (B, T, C) float32 — facet channels in the original order (d * heads + h for key/query/value);
        C * (1 + 8 * hierarchy) when binned; several layers are concatenated along C in the order asked.
    saliency: (B, T) float32 in [0, 1] (CLS attention of the last block, min-max normalised) or None.
    num_patches: (Hp, Wp) patch grid; T = Hp * Wp, tokens row-major.
    load_size: (H, W) of the preprocessed batch.
    per_layer: {layer: (B, T, C)} unbinned-or-binned descriptors of each requested layer.
    image: the resized PIL image (B = 1) when known (`extract_many` and `Matcher.features` set it), else None.
    cls: (B, C) float32 — the CLS token's facet at the requested layer(s) (concatenated like `descriptors`, never
        log-binned), when asked for with ``cls=True``; else None.
    """

    descriptors: torch.Tensor
    saliency: torch.Tensor | None
    num_patches: tuple[int, int]
    load_size: tuple[int, int]
    per_layer: dict[int, torch.Tensor]
    image: object = None
    cls: torch.Tensor | None = None


__all__ = ["Features"]
