"""The strided DINO-family ViT with facet and saliency outputs, as a plain export-clean `nn.Module`.

Parameter names follow the official DINO / DINOv2 checkpoints (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.{i}.norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2|ls1.gamma|ls2.gamma`, `register_tokens`, `norm`), so
an official state dict loads without renaming (DINOv3's official / timm layouts are renamed by
`dinofeat.model.dinov3.dinov3_to_native`). One forward computes exactly what a request needs:

* facet ``key|query|value`` of block L = the block's qkv Linear applied to norm1 of its input (the original's
  hook), laid out (B, T, C) with channel index ``d * num_heads + h`` (SEMANTICS §4), prefix tokens dropped;
* facet ``token`` of block L = the block's output (B, T, D), natural channel order;
* saliency = the CLS query's attention row over the patch keys in the last block, averaged over the model's
  saliency heads and min-max normalised per image (SEMANTICS §5); only that row is computed;
* ``Request.cls``: for each requested (layer, facet), the same facet of the CLS token (B, C) (output
  ``cls_output_name``), the row the facet drops, in the facet's channel order (the original's ``include_cls``).

Blocks past the deepest request are not run. Blocks that are run in full use fused attention (SDPA).

Family specifics (DINOv2 / DINOv3):

* prefix tokens are ``[CLS, registers..., patches...]`` (DINOv2 ``register_tokens``, DINOv3 storage tokens, named
  ``register_tokens`` here); every facet drops all of them like CLS, and saliency is the CLS row over the patch
  keys only (the softmax still runs over all keys, registers included, as the model's own attention does);
* DINOv2 learned positions are added before the registers are inserted (the registers carry no position), and
  are resampled as the model's own ``interpolate_pos_encoding`` does (``spec.pos_interp``; see
  `resample_position_table`);
* DINOv3 uses 2-D RoPE on the patch queries/keys (never on CLS or storage tokens). The ``key`` / ``query``
  facets are the qkv Linear output, i.e. **pre-RoPE**, exactly what the original method's hook reads: they carry
  no absolute position, which is what dense matching wants. Saliency uses the post-RoPE patch keys against the
  (unrotated) CLS query, i.e. the model's real attention row. Under a stride change, RoPE coordinates are those
  of each window's pixel centre in DINOv3's stride = patch normalisation (see `rope_axis_coords`), so a window at the
  same image location gets the same angles as the stride = patch patch there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import POS_INTERPS
from ..config import ROPE_PERIODS as _ROPE_PERIODS
from .posembed import grid_size, interpolate_pos_embed
from .zoo import FACETS, ModelSpec


@dataclass(frozen=True)
class Request:
    """What one forward must produce: facets as (layer, facet) pairs, whether to add each facet's CLS row
    (`cls`) and whether to add saliency.

    Outputs, in `output_names` order: the facets (B, T, C), then with `cls` the CLS row of each facet (B, C),
    then saliency (B, T)."""

    facets: tuple[tuple[int, str], ...] = ((9, "key"),)
    saliency: bool = False
    cls: bool = False

    def output_names(self) -> list[str]:
        names = [output_name(layer, facet) for layer, facet in self.facets]
        if self.cls:
            names += [cls_output_name(layer, facet) for layer, facet in self.facets]
        return names + (["saliency"] if self.saliency else [])


def output_name(layer: int, facet: str) -> str:
    return f"{facet}{layer}"


CLS_PREFIX = "cls_"


def cls_output_name(layer: int, facet: str) -> str:
    """Name of the output holding the CLS token's `facet` at `layer` (B, C)."""
    return f"{CLS_PREFIX}{facet}{layer}"


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, N, 3D) -> (3, B, heads, N, head_dim), as the original reshapes it."""
        b, n, _ = qkv.shape
        return qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                num_prefix: int = 1) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.split_qkv(self.qkv(x)).unbind(0)
        if rope is not None:
            q, k = apply_rope(q, rope, num_prefix), apply_rope(k, rope, num_prefix)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def cls_attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                      num_prefix: int = 1) -> torch.Tensor:
        """Post-softmax attention of the CLS query over all keys: (B, heads, N). Computes only q of token 0."""
        b, n, d = x.shape
        w_q, w_k = self.qkv.weight[:d], self.qkv.weight[d : 2 * d]
        b_q = self.qkv.bias[:d] if self.qkv.bias is not None else None
        b_k = self.qkv.bias[d : 2 * d] if self.qkv.bias is not None else None
        q = F.linear(x[:, :1], w_q, b_q).reshape(b, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k = F.linear(x, w_k, b_k).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            k = apply_rope(k, rope, num_prefix)  # the CLS query is a prefix token: never rotated
        attn = (q @ k.transpose(-2, -1)) * self.scale
        return attn.softmax(dim=-1)[:, :, 0]


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], num_prefix: int) -> torch.Tensor:
    """Rotate the patch tokens of (B, heads, N, hd) by (sin, cos) of shape (T, hd); prefix tokens untouched.

    DINOv3's ``rope_apply`` with ``rope_rotate_half``: x * cos + [-x2, x1] * sin, halves of the head dim. The
    rotation runs in the dtype of (sin, cos) (float32 tables: as DINOv3 and timm, which upcast q/k for it) and
    the result is cast back to x's dtype.
    """
    sin, cos = rope
    prefix, patches = x[:, :, :num_prefix], x[:, :, num_prefix:]
    patches = patches.to(sin.dtype)
    x1, x2 = patches.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    patches = patches * cos + rotated * sin
    return torch.cat([prefix, patches.to(x.dtype)], dim=2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf form, as DINO
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2's SwiGLUFFNFused: w12 (D -> 2H), silu(x1) * x2, w3 (H -> D); H rounded up to a multiple of 8."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class SwiGLUv3(nn.Module):
    """DINOv3's SwiGLU FFN: w1, w2 (D -> H), silu(w1 x) * w2 x, w3 (H -> D); H rounded up to a multiple of 8."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim = spec.embed_dim
        hidden = int(dim * spec.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.attn = Attention(dim, spec.num_heads, spec.qkv_bias)
        self.ls1 = LayerScale(dim) if spec.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=spec.norm_eps)
        ffn = {"mlp": Mlp, "swiglu": SwiGLU, "swiglu_dinov3": SwiGLUv3}[spec.ffn]
        self.mlp = ffn(dim, hidden)
        self.ls2 = LayerScale(dim) if spec.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor, rope=None, num_prefix: int = 1) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, num_prefix))
        return x + self.ls2(self.mlp(self.norm2(x)))


class StridedViT(nn.Module):
    """A DINO / DINOv2 / DINOv3 ViT whose patch embedding runs at `stride` (any divisor of the patch size)."""

    def __init__(self, spec: ModelSpec, stride: int | None = None, rope_periods: torch.Tensor | None = None):
        """`rope_periods`: (head_dim // 4,) RoPE periods to use (RoPE models; float32, e.g. a checkpoint's
        ``rope_embed.periods``); None computes them from ``spec.rope_base`` (see `rope_sincos`)."""
        super().__init__()
        self.spec = spec
        self.stride = spec.patch_size if stride is None else int(stride)
        # A plain attribute, not a buffer: `.to(bfloat16)` of the model must not round the periods.
        self.rope_periods = None if rope_periods is None else rope_periods.detach().to("cpu", torch.float32).clone()
        if self.rope_periods is not None and tuple(self.rope_periods.shape) != (spec.head_dim // 4,):
            raise ValueError(f"rope_periods has shape {tuple(self.rope_periods.shape)}; {spec.name} needs "
                             f"({spec.head_dim // 4},)")
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, dim, self.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if spec.pos == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid**2, dim))
        if spec.family == "dinov2":
            self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the official layout; unused at inference
        if spec.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_register_tokens, dim))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=spec.norm_eps)
        heads = spec.saliency_heads if spec.saliency_heads is not None else tuple(range(spec.num_heads))
        self.saliency_heads = list(heads)  # Python ints: for exporters and reports, never indexed with in forward
        # The forward selects the heads from a tensor that lives with the model (a list index would make a
        # pageable host-to-device copy per call: a host sync in eager mode, an error under CUDA-graph capture);
        # a contiguous run of heads (all of them, by default) is a plain slice.
        contiguous = list(heads) == list(range(heads[0], heads[0] + len(heads))) if heads else False
        self._saliency_slice = slice(heads[0], heads[0] + len(heads)) if contiguous else None
        self.register_buffer("saliency_index", torch.tensor(heads, dtype=torch.long), persistent=False)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    # ---- positions -------------------------------------------------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        return grid_size(height, width, self.spec.patch_size, self.stride)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """(1, 1 + T, D) learned positions for this size, resampled once and cached (SEMANTICS §3)."""
        key = (height, width)
        if key not in self._pos_cache:
            self._pos_cache[key] = resample_position_table(self.spec, self.pos_embed, height, width, self.stride)
        return self._pos_cache[key]

    def rope_embedding(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos) of shape (T, head_dim), float32, for DINOv3's 2-D RoPE on this size's (strided) grid."""
        rows, cols = self.grid(height, width)
        return rope_sincos(rows, cols, self.spec.head_dim, self.spec.rope_base, self.spec.patch_size,
                           self.stride, height, width, periods=self.rope_periods)

    def clear_caches(self) -> None:
        self._pos_cache.clear()

    # ---- forward ---------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, request: Request, pos: torch.Tensor | None = None,
                         rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Run blocks up to the deepest request and return the requested outputs in `request` order.

        Args:
            x: (B, 3, H, W) normalised images.
            pos: (1, 1 + T, D) position table for (H, W) (learned positions); looked up when None.
            rope: (sin, cos) for (H, W) (RoPE models); computed when None.
        """
        spec = self.spec
        height, width = x.shape[-2:]
        npre = spec.num_prefix_tokens
        tokens = self.patch_embed(x)
        b = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        if spec.pos == "learned":
            if pos is None:
                pos = self.position_embedding(int(height), int(width)).to(tokens.device)
            tokens = tokens + pos.to(tokens.dtype)
        elif rope is None:
            rope = tuple(t.to(tokens.device) for t in self.rope_embedding(int(height), int(width)))
        if spec.num_register_tokens:
            regs = self.register_tokens.expand(b, -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)

        wanted: dict[int, list[str]] = {}
        for layer, facet in request.facets:
            wanted.setdefault(layer, []).append(facet)
        last = max(wanted, default=-1)
        if request.saliency:
            last = spec.depth - 1
        results: dict[str, torch.Tensor] = {}
        for i in range(last + 1):
            block = self.blocks[i]
            facets = wanted.get(i, [])
            qkv_facets = [f for f in facets if f != "token"]
            full = i < last or "token" in facets
            if qkv_facets:
                qkv = block.attn.split_qkv(block.attn.qkv(block.norm1(tokens)))
                for facet in qkv_facets:
                    part = qkv[("query", "key", "value").index(facet)]
                    results[output_name(i, facet)] = self._layout(part, npre)
                    if request.cls:
                        results[cls_output_name(i, facet)] = self._cls_layout(part)
            if request.saliency and i == spec.depth - 1:
                attn = block.attn.cls_attention(block.norm1(tokens), rope, npre)  # (B, heads, N)
                results["saliency"] = _minmax(self._saliency_heads_of(attn)[:, :, npre:].mean(dim=1))
            if full:
                tokens = block(tokens, rope, npre)
                if "token" in facets:
                    results[output_name(i, "token")] = tokens[:, npre:]
                    if request.cls:
                        results[cls_output_name(i, "token")] = tokens[:, 0]
        return [results[name] for name in request.output_names()]

    def _saliency_heads_of(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, heads, N) -> (B, len(saliency_heads), N), without creating a tensor from Python data."""
        if self._saliency_slice is not None:
            return attn[:, self._saliency_slice]
        return attn.index_select(1, self.saliency_index)

    @staticmethod
    def _layout(t: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """(B, heads, N, hd) -> (B, T, hd * heads) with channel d * heads + h, prefix tokens dropped."""
        b, h, _, d = t.shape
        return t[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(b, -1, d * h)

    @staticmethod
    def _cls_layout(t: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, hd) -> the CLS token's (B, hd * heads), channel d * heads + h (as `_layout`)."""
        b, h, _, d = t.shape
        return t[:, :, 0].permute(0, 2, 1).reshape(b, d * h)


def resample_position_table(spec: ModelSpec, pos_embed: torch.Tensor, height: int, width: int,
                            stride: int) -> torch.Tensor:
    """(1, 1 + rows*cols, D) float32 CPU position table of `spec` for an (height, width) image at `stride`.

    Dispatches on ``spec.pos_interp`` (`POS_INTERP`), i.e. on what the model's own ``interpolate_pos_encoding``
    does, with its grid replaced by the strided grid (rows, cols) = `grid_size`:

    * ``"offset"`` (DINO, DINOv2 without registers, Meta's code): `interpolate_pos_embed`, bicubic with
      ``scale_factor=(n + 0.1) / G`` (SEMANTICS §3);
    * ``"size"`` (Hugging Face transformers' ``Dinov2Model`` / ``ViTModel``):
      ``F.interpolate(size=(rows, cols), mode="bicubic", align_corners=False)``, no antialias;
    * ``"antialias"`` (DINOv2 ``_reg``, whose hub entries set ``interpolate_offset=0.0,
      interpolate_antialias=True``): the same with ``antialias=True``.

    All keep the table as is when the grid has G*G tokens and the image is square (the models' early exit).
    """
    if spec.pos_interp == "offset":
        return interpolate_pos_embed(pos_embed, 1, height, width, spec.patch_size, stride)
    if spec.pos_interp not in POS_INTERP:
        raise ValueError(f"unknown pos_interp {spec.pos_interp!r} for {spec.name}")
    table = pos_embed.detach().to(device="cpu", dtype=torch.float32)
    n = table.shape[1] - 1
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"pos_embed has {n} patch rows, which is not a square grid")
    rows, cols = grid_size(height, width, spec.patch_size, stride)
    if rows * cols == n and height == width:
        return table.clone()
    dim = table.shape[-1]
    patch = table[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(rows, cols), mode="bicubic", align_corners=False,
                          antialias=spec.pos_interp == "antialias")
    patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([table[:, :1], patch], dim=1)


def _minmax(a: torch.Tensor) -> torch.Tensor:
    """Per-image (a - min) / (max - min), no epsilon, as the original (a constant map gives NaN)."""
    lo = a.min(dim=-1, keepdim=True).values
    hi = a.max(dim=-1, keepdim=True).values
    return (a - lo) / (hi - lo)


def rope_axis_coords(n: int, extent: int, patch_size: int, stride: int) -> torch.Tensor:
    """DINOv3 RoPE coordinate in [-1, 1] of each of the `n` windows along one image axis of `extent` pixels.

    DINOv3 (stride = patch p, ``normalize_coords="separate"``) gives patch i of an n_p-patch axis the coordinate
    ``c_i = (i + 0.5) / n_p * 2 - 1`` with n_p = extent // p. Patch i spans pixels [i p, (i + 1) p), so this is
    ``c = 2 x / (n_p p) - 1`` with x = i p + p / 2 its pixel centre: the centre's position in the span the
    stride = p grid covers. A strided window j (stride s) spans [j s, j s + p), centre x_j = j s + p / 2, and gets
    the same affine map of its centre::

        c_j = (j s / p + 0.5) / n_p * 2 - 1,        n_p = extent // p

    so a window at the same image location as a stride = p patch gets exactly its coordinate (and angles), the
    windows in between interpolate linearly, and the last windows of a grid that reaches past n_p p (extent not
    a multiple of p) extend the same line slightly past the stride = p range. At s = p this is DINOv3's formula,
    computed in the same float32 operation order (bit-identical to timm's ``RotaryEmbeddingDinoV3``).
    (Normalising by the strided grid's own size instead, (j + 0.5) / n * 2 - 1, would squeeze or stretch the
    positions: a 224-px axis at s = 4 has 53 windows whose centres span [8, 216] px like the 14 patches', yet
    would be mapped to +-0.981 instead of +-0.929.)
    """
    n_ref = extent // patch_size
    if n_ref < 1:
        raise ValueError(f"image side {extent} px is smaller than the patch size {patch_size}")
    centres = (torch.arange(n, dtype=torch.float32) * stride) / patch_size + 0.5  # window centre, patch units
    return 2.0 * (centres / float(n_ref)) - 1.0


def rope_sincos(rows: int, cols: int, head_dim: int, base: float, patch_size: int = 1, stride: int = 1,
                height: int | None = None, width: int | None = None, *,
                periods: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3 2-D RoPE tables (sin, cos), each (rows * cols, head_dim), float32, tokens row-major.

    Per head: head_dim / 4 periods, `periods` when given (a checkpoint's stored values) else
    ``base ** (2 i / (head_dim / 2))`` recomputed in float32 (`recomputed_periods`); angle = 2 pi c / period for the y
    coordinate (first head_dim / 4 channels) then x, and the head_dim / 2 angles tiled twice (``rotate_half``
    layout). Coordinates come from `rope_axis_coords` (pixel-centre based, location-preserving under a stride
    change); with `height` / `width` omitted the axis is taken to be exactly `rows` / `cols` patches at
    stride = patch, i.e. plain DINOv3 ``(i + 0.5) / n * 2 - 1``.
    """
    if periods is None:
        periods = recomputed_periods(head_dim, base)
    periods = periods.to(torch.float32)
    if height is None or width is None:
        patch_size = stride = 1
        height, width = rows, cols
    ys = rope_axis_coords(rows, height, patch_size, stride)
    xs = rope_axis_coords(cols, width, patch_size, stride)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (T, 2): (y, x)
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # (T, 2, n_freq)
    angles = angles.flatten(1)  # (T, head_dim / 2)
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([sin, sin], dim=-1), torch.cat([cos, cos], dim=-1)


def recomputed_periods(head_dim: int, base: float) -> torch.Tensor:
    """(head_dim // 4,) float32 DINOv3 RoPE periods ``base ** (2 i / (head_dim / 2))``, as timm, transformers and
    DINOv3's own ``RopePositionEmbedding._init_weights`` compute them (in float32)."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


# Where a RoPE model's periods come from (Extractor / export / create_session ``rope_periods=``):
# "checkpoint" = the checkpoint's stored ``rope_embed.periods`` when it has them (what Meta's reference code
# uses; the released files store them rounded to bfloat16), else recomputed; "recompute" = always recomputed in
# float32 from the RoPE base (what timm and Hugging Face transformers do).
ROPE_PERIODS = _ROPE_PERIODS  # declared in dinofeat.config
# How a learned position table is resampled to another grid (Extractor / export / CLI ``pos_interp=``; None keeps
# the zoo row's convention): "offset" = Meta's DINO / DINOv2 code (scale factor (n + 0.1) / G); "size" = Hugging
# Face transformers (bicubic to the grid size, no antialias); "antialias" = Meta's DINOv2 _reg hub entries.
# See `resample_position_table` and docs/checkpoints.md.
POS_INTERP = POS_INTERPS  # declared in dinofeat.config


def with_pos_interp(spec: ModelSpec, pos_interp: str | None) -> ModelSpec:
    """`spec` with its position-table resampling replaced by `pos_interp` (None: `spec` unchanged)."""
    from ..errors import InputError

    if pos_interp is None or pos_interp == spec.pos_interp:
        return spec
    if pos_interp not in POS_INTERP:
        raise InputError(f"pos_interp={pos_interp!r} is unknown; choose one of {', '.join(POS_INTERP)}")
    if spec.pos != "learned":
        raise InputError(f"pos_interp={pos_interp!r} applies to learned position tables; {spec.name} uses "
                         f"{spec.pos} positions: leave it unset")
    return dataclasses.replace(spec, pos_interp=pos_interp)


def build_vit(spec: ModelSpec, stride: int, loaded, rope_periods: str = "checkpoint",
              pos_interp: str | None = None) -> StridedViT:
    """An eval-mode `StridedViT` with `loaded` (a `dinofeat.model.weights.LoadedWeights`) in it; `rope_periods` picks
    the RoPE periods (see `ROPE_PERIODS`), `pos_interp` the position-table resampling (see `POS_INTERP`; None:
    the zoo row's)."""
    from ..errors import InputError

    if rope_periods not in ROPE_PERIODS:
        raise InputError(f"rope_periods={rope_periods!r} is unknown; choose one of {', '.join(ROPE_PERIODS)}")
    spec = with_pos_interp(spec, pos_interp)
    periods = loaded.rope_periods if rope_periods == "checkpoint" else None
    vit = StridedViT(spec, stride, rope_periods=periods)
    vit.load_state_dict(loaded.state_dict)
    return vit.eval()


def check_request(spec: ModelSpec, layers, facet: str) -> tuple[int, ...]:
    """Validate layer(s)/facet for `spec`; return layers as non-negative ints."""
    from ..errors import InputError

    if facet not in FACETS:
        raise InputError(f"facet={facet!r} is not supported; choose one of {', '.join(FACETS)}")
    seq = tuple(layers) if isinstance(layers, (list, tuple, range)) else (layers,)
    out = []
    for layer in seq:
        if not isinstance(layer, int) or isinstance(layer, bool) or not -spec.depth <= layer < spec.depth:
            raise InputError(
                f"layer={layer!r} is out of range for {spec.name} ({spec.depth} blocks): use 0..{spec.depth - 1} "
                f"(or negative from the end)"
            )
        out.append(layer % spec.depth)
    if not out:
        raise InputError("layer=[] names no layer; pass an int such as 9 or a list of ints")
    return tuple(out)


def native_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """{key: shape} of StridedViT(spec) (built on the meta device: no memory, no init)."""
    return dict(_native_shapes(spec))


@functools.lru_cache(maxsize=32)
def _native_shapes(spec: ModelSpec) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = StridedViT(spec)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
