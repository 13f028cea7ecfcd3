"""Position-embedding resampling for a strided patch grid, bit-for-bit as the original (SEMANTICS §3).

The original swaps DINO's `interpolate_pos_encoding` for a version that resamples the learned (G x G) table with
`F.interpolate(scale_factor=((rows + 0.1) / G, (cols + 0.1) / G), mode="bicubic", align_corners=False,
recompute_scale_factor=False)`. Because the scale factor is given (not the size), output index o samples the
source at (o + 0.5) * G / (n + 0.1) - 0.5, so a size-based resize does NOT reproduce it. DINOv2 without registers
uses the same +0.1 scheme (`interpolate_offset=0.1`, no antialias); the `_reg` models resize by size with
antialias (see `dinofeat.model.vit.resample_position_table`). The table is resampled once per input size, in float32 on the
CPU as the original does, and the result is a constant the graph adds (no Resize op in an exported graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_size(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Patch-grid rows and columns of an (height, width) image: 1 + (side - p) // s (floor; SEMANTICS §3)."""
    return 1 + (height - patch_size) // stride, 1 + (width - patch_size) // stride


def interpolate_pos_embed(
    pos_embed: torch.Tensor, num_prefix: int, height: int, width: int, patch_size: int, stride: int
) -> torch.Tensor:
    """Resample a learned position table for an image of (height, width) pixels at the given stride.

    Args:
        pos_embed: (1, num_prefix + G*G, D) table as stored in the checkpoint (prefix rows first).
        num_prefix: rows of the table that belong to prefix tokens (1: CLS) and are kept unchanged.
        height, width: preprocessed image size in pixels.

    Returns:
        (1, num_prefix + rows*cols, D) float32 table on the CPU.
    """
    table = pos_embed.detach().to(device="cpu", dtype=torch.float32)
    n = table.shape[1] - num_prefix
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"pos_embed has {n} patch rows, which is not a square grid")
    rows, cols = grid_size(height, width, patch_size, stride)
    # The original's early exit: token count equals the table's and the image is square (pixels, not grid).
    if rows * cols == n and height == width:
        return table.clone()
    dim = table.shape[-1]
    patch = table[:, num_prefix:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    resampled = F.interpolate(
        patch,
        scale_factor=((rows + 0.1) / g, (cols + 0.1) / g),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    )
    if resampled.shape[-2:] != (rows, cols):  # the original asserts the same
        raise RuntimeError(f"position-embedding resampling gave {tuple(resampled.shape[-2:])}, expected {(rows, cols)}")
    patch = resampled.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([table[:, :num_prefix], patch], dim=1)
