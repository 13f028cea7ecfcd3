"""Position tables computed from the input size with plain tensor ops, for graphs with dynamic H and W.

A fixed-size export bakes the resampled position table (or DINOv3's RoPE sin/cos) as a constant. A dynamic-size
graph cannot: it computes them in the graph from the patch grid (rows, cols), which are symbolic under
``torch.export``. Resize is not used (opset 17 has no ``antialias`` attribute, and TensorRT's cubic Resize has
its own border rules); instead each axis gets an interpolation matrix built from ``arange`` with elementwise
ops, and the table is resampled as ``Wy @ table @ Wx^T`` (Range, Floor, Clip, Equal, Where, Abs, MatMul: all on
TensorRT 10's ONNX list). The matrices reproduce PyTorch's kernels exactly (up to float32 summation order):

* `offset_matrix` -- ``F.interpolate(mode="bicubic", align_corners=False, scale_factor=(n + 0.1) / G,
  recompute_scale_factor=False)`` (DINO, DINOv2 without registers; SEMANTICS §3): source coordinate
  ``(o + 0.5) * G / (n + 0.1) - 0.5``, Keys cubic with A = -0.75, taps clamped to the border;
* `size_matrix` -- ``F.interpolate(size=n, mode="bicubic", align_corners=False)`` (Hugging Face transformers'
  convention, ``pos_interp="size"``): the same kernel with source coordinate ``(o + 0.5) * G / n - 0.5``;
* `antialias_matrix` -- ``F.interpolate(size=n, mode="bicubic", antialias=True)`` (DINOv2 ``_reg``): PyTorch's
  separable antialiased kernel, cubic with a = -0.5, support 2 * max(G / n, 1), weights truncated at the border
  and renormalised per output.

Both keep the models' early exit (table unchanged when the grid has G*G tokens and the image is square) as a
``Where`` over the two results. Every function here takes ints or SymInts for the sizes and works eagerly too,
which is how the tests check it against `dinofeat.model.vit.resample_position_table` at many sizes.
"""

from __future__ import annotations

import math

import torch


def _as_float(n) -> torch.Tensor:
    """A 0-d float32 tensor holding the int or SymInt `n` (``arange(n)`` has n entries: its last + 1)."""
    return torch.arange(n, dtype=torch.float32)[-1:].sum() + 1.0


def _keys_cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys cubic convolution kernel with parameter `a` at |x| (zero for |x| >= 2), PyTorch's operation order."""
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def offset_matrix(n, g: int) -> torch.Tensor:
    """(n, g) float32 matrix M with ``M @ column == bicubic(scale_factor=(n + 0.1) / g)(column)`` (A = -0.75)."""
    return _cubic_matrix(n, g, 0.1)


def size_matrix(n, g: int) -> torch.Tensor:
    """(n, g) float32 matrix of ``F.interpolate(size=n, mode="bicubic", align_corners=False)`` (no antialias;
    Hugging Face transformers' ``interpolate_pos_encoding``, ``pos_interp="size"``)."""
    return _cubic_matrix(n, g, 0.0)


def _cubic_matrix(n, g: int, offset: float) -> torch.Tensor:
    """Keys cubic (A = -0.75) resampling of g samples to n, source ``(o + 0.5) * g / (n + offset) - 0.5``."""
    nf = _as_float(n)
    scale = float(g) / (nf + offset)  # torch: 1 / scale_factor (input / output size when the size is given)
    src = (torch.arange(n, dtype=torch.float32) + 0.5) * scale - 0.5
    base = torch.floor(src)
    t = src - base
    cols = torch.arange(g, dtype=torch.float32)[None, :]
    out = torch.zeros_like(src)[:, None] * cols
    for k, dist in ((-1, t + 1.0), (0, t), (1, 1.0 - t), (2, 2.0 - t)):
        idx = torch.clamp(base + float(k), 0.0, float(g - 1))
        w = _keys_cubic(dist, -0.75)
        out = out + torch.where(idx[:, None] == cols, w[:, None], torch.zeros_like(out))
    return out


def antialias_matrix(n, g: int) -> torch.Tensor:
    """(n, g) float32 matrix of ``F.interpolate(size=n, mode="bicubic", antialias=True)`` along one axis."""
    nf = _as_float(n)
    scale = float(g) / nf
    stretch = torch.clamp(scale, min=1.0)  # support 2 * stretch, kernel argument divided by stretch
    centre = scale * (torch.arange(n, dtype=torch.float32) + 0.5)
    src = torch.arange(g, dtype=torch.float32)[None, :]
    w = _keys_cubic((src - centre[:, None] + 0.5) / stretch, -0.5)
    return w / w.sum(dim=1, keepdim=True)


def dynamic_position_table(grid_table: torch.Tensor, rows, cols, height, width, pos_interp: str) -> torch.Tensor:
    """(rows * cols, D) patch positions for an (height, width) image whose strided grid is rows x cols.

    Args:
        grid_table: (G, G, D) float32 learned patch positions (the checkpoint's table without its CLS row).
        rows, cols, height, width: ints or SymInts.
        pos_interp: "offset", "size" or "antialias" (`ModelSpec.pos_interp`).
    """
    g, _, dim = grid_table.shape
    build = {"offset": offset_matrix, "size": size_matrix, "antialias": antialias_matrix}[pos_interp]
    wy, wx = build(rows, g), build(cols, g)
    # out[r, c, :] = sum_ij wy[r, i] wx[c, j] table[i, j, :]
    tmp = torch.matmul(wy, grid_table.reshape(g, g * dim)).reshape(-1, g, dim)  # (rows, G, D)
    out = torch.matmul(wx[None], tmp).reshape(-1, dim)  # (rows, cols, D) -> (T, D)
    # The models' early exit: keep the table when the grid has G*G tokens and the image is square.
    same = (_as_float(rows) * _as_float(cols) == float(g * g)) & (_as_float(height) == _as_float(width))
    # `table` where `same` else `out`; the shapes are only known at run time, and equal whenever `same` holds:
    # the first rows*cols rows of [table; out] are the table then, and never read otherwise.
    kept = torch.cat([grid_table.reshape(g * g, dim), out], dim=0)[: out.shape[0]]
    return torch.where(same, kept, out)


def dynamic_rope(rows, cols, height, width, patch_size: int, stride: int,
                 periods: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3 RoPE (sin, cos), each (rows * cols, head_dim) float32, as `dinofeat.model.vit.rope_sincos`
    computes them (same float32 operations), with sizes as ints or SymInts."""
    def axis(n, extent):
        n_ref = torch.floor(_as_float(extent) / float(patch_size))
        centres = (torch.arange(n, dtype=torch.float32) * float(stride)) / float(patch_size) + 0.5
        return 2.0 * (centres / n_ref) - 1.0

    ys, xs = axis(rows, height), axis(cols, width)
    ny, nx = ys.shape[0], xs.shape[0]
    coords = torch.stack([ys[:, None].expand(ny, nx), xs[None, :].expand(ny, nx)], dim=-1).reshape(-1, 2)
    periods = periods.to(torch.float32)
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1)
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([sin, sin], dim=-1), torch.cat([cos, cos], dim=-1)


__all__ = ["antialias_matrix", "dynamic_position_table", "dynamic_rope", "offset_matrix", "size_matrix"]
