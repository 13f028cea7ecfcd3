"""The export graph: one (model, stride, H, W, request, precision) as a trace-friendly `nn.Module`.

`ExportGraph` wraps a loaded `StridedViT` (it shares its parameters; the model is not modified) and computes the
same outputs as `StridedViT.forward_features`, written so that the exported ONNX is what TensorRT and ONNX Runtime
want:

* no preprocessing, input ``images`` (B, 3, H, W) float32, batch dynamic, H and W fixed (``dynamic=True``: H and
  W dynamic too, positions / RoPE computed in the graph from the input size by `dynamic.py`, reshapes read the
  token count at run time);
* the position embedding for (H, W) is resampled once here (`resample_position_table`: for DINO the original's
  +0.1 bicubic) and enters the graph as a constant: no Resize op; DINOv3's RoPE sin/cos tables likewise;
* attention is spelled out per block as separate Q, K, V projections, ``MatMul(q, k^T) / sqrt(hd)``, Softmax,
  ``MatMul(., v)`` with constant reshape targets ``[-1, N, heads, hd]``: the pattern ONNX Runtime's transformer
  optimizer fuses into its ``Attention`` op, and plain ops TensorRT's Myelin fuses into MHA kernels;
* a facet output (query/key/value of block L) is *recomputed* from ``norm1`` with its own Gemm on a flattened
  view, so the block's three projection MatMuls keep exactly three MatMul consumers of the norm output (ORT's
  fusion refuses a fourth) and the block still fuses; blocks past the deepest output are not emitted, and the
  last needed block computes only what is asked (its qkv facet, or the CLS query row for saliency);
* ``precision="fp16"``: weights and matmuls in float16, while the residual stream, every LayerNorm and every
  Softmax stay float32 (explicit Casts) and q is scaled by 1/sqrt(hd) before ``q k^T`` (the fp16 product stays
  in range; TensorRT's strongly typed builder fuses it into its attention kernels), RoPE tables and the q/k
  rotation stay float32 (DINOv3 in fp16 would lose the angles), so the graph is valid for
  strongly typed TensorRT networks, where precision must be in the ONNX itself; inputs and outputs stay float32.

Numerically the fp32 graph equals `forward_features` up to float32 summation order (checked in the tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model.vit import (
    Request,
    StridedViT,
    apply_rope,
    cls_output_name,
    output_name,
    recomputed_periods,
    resample_position_table,
)
from .dynamic import dynamic_position_table, dynamic_rope

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ExportGraph(nn.Module):
    """`StridedViT` outputs for one input size and request, as an export-clean module.

    Args:
        vit: the loaded model (fp32, eval); parameters are read, never changed.
        request: facets and saliency to output, in `request.output_names()` order.
        height, width: the fixed input size in pixels.
        precision: "fp32" or "fp16" (see the module docstring).
    """

    def __init__(self, vit: StridedViT, request: Request, height: int, width: int, precision: str = "fp32",
                 dynamic: bool = False):
        super().__init__()
        if precision not in DTYPES:
            raise ValueError(f"precision={precision!r}: the export graph supports {', '.join(DTYPES)}")
        spec = vit.spec
        self.spec = spec
        self.request = request
        self.height, self.width = int(height), int(width)
        self.dtype = DTYPES[precision]
        self.num_prefix = spec.num_prefix_tokens
        self.num_heads = spec.num_heads
        self.head_dim = spec.head_dim
        self.dim = spec.embed_dim
        rows, cols = vit.grid(self.height, self.width)
        if rows < 1 or cols < 1:
            raise ValueError(f"image {height}x{width} is smaller than the patch size {spec.patch_size}")
        self.num_patches = rows * cols
        self.num_tokens = self.num_prefix + self.num_patches
        self.dynamic = bool(dynamic)
        self.patch_size, self.stride = spec.patch_size, vit.stride
        self.saliency_heads = list(vit.saliency_heads)

        wanted: dict[int, list[str]] = {}
        for layer, facet in request.facets:
            wanted.setdefault(int(layer), []).append(facet)
        self.wanted = wanted
        last = max(wanted, default=-1)
        if request.saliency:
            last = spec.depth - 1
        if last < 0:
            raise ValueError("the request asks for no output")
        self.last = last

        dt = self.dtype
        self.patch_embed = _cast_copy(vit.patch_embed.proj, dt)
        # Prefix rows (CLS + position 0, registers) are constants; patch positions are added after the conv.
        cls = vit.cls_token.detach().float()
        self.use_rope = spec.pos != "learned"
        if self.dynamic:  # positions computed in the graph from the input size (see dynamic.py)
            self.pos_patch = None
            if spec.pos == "learned":
                g = spec.pos_grid
                cls = cls + vit.pos_embed.detach().float()[:, :1]
                table = vit.pos_embed.detach().float()[0, 1:].reshape(g, g, -1)
                self.register_buffer("pos_grid", table.clone(), persistent=False)
            else:
                periods = vit.rope_periods if vit.rope_periods is not None else recomputed_periods(
                    spec.head_dim, spec.rope_base)
                self.register_buffer("rope_period_table", periods.float().clone(), persistent=False)
        elif spec.pos == "learned":
            # The model's own per-size table (SEMANTICS §3 +0.1 bicubic for DINO), resampled here in fp32 on the CPU.
            table = resample_position_table(spec, vit.pos_embed, self.height, self.width, vit.stride)
            cls = cls + table[:, :1]
            self.register_buffer("pos_patch", table[:, 1:].to(dt).clone(), persistent=False)
            self.rope = None
        else:
            self.pos_patch = None
            sin, cos = vit.rope_embedding(self.height, self.width)
            # float32 in every precision: the rotation runs in float32 (apply_rope upcasts q/k to the table's dtype)
            self.register_buffer("rope_sin", sin.clone(), persistent=False)
            self.register_buffer("rope_cos", cos.clone(), persistent=False)
        prefix = [cls]
        if spec.num_register_tokens:
            prefix.append(vit.register_tokens.detach().float())
        self.register_buffer("prefix", torch.cat(prefix, dim=1).clone(), persistent=False)  # (1, npre, D) fp32

        self.blocks = nn.ModuleList(
            _ExportBlock(vit.blocks[i], self, dt, [f for f in wanted.get(i, []) if f != "token"])
            for i in range(last + 1)
        )

    # ------------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dt = self.dtype
        x = images.to(dt)
        grid = self.patch_embed(x)  # (B, D, rows, cols)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, T, D)
        rope = None
        if self.dynamic:
            rows, cols = grid.shape[-2], grid.shape[-1]
            height, width = images.shape[-2], images.shape[-1]
            if not self.use_rope:  # fp32 table, added in the compute dtype as the fixed graph does
                pos = dynamic_position_table(self.pos_grid, rows, cols, height, width, self.spec.pos_interp)
                tokens = tokens + pos.to(dt)
            else:  # RoPE tables stay float32 (the rotation runs in float32, see apply_rope)
                rope = dynamic_rope(rows, cols, height, width, self.patch_size, self.stride,
                                    self.rope_period_table)
        elif self.pos_patch is not None:
            tokens = tokens + self.pos_patch
        else:
            rope = (self.rope_sin, self.rope_cos)
        tokens = tokens.float()
        prefix = self.prefix.expand(tokens.shape[0], -1, -1)
        x = torch.cat([prefix, tokens], dim=1)  # (B, N, D) float32 residual stream

        results: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            facets = self.wanted.get(i, [])
            qkv_facets = [f for f in facets if f != "token"]
            h = None
            if qkv_facets or (self.request.saliency and i == self.spec.depth - 1):
                h = block.norm1(x)
            for facet in qkv_facets:
                t = block.facet_heads(h, facet)
                results[output_name(i, facet)] = block.facet(t)
                if self.request.cls:
                    results[cls_output_name(i, facet)] = block.cls_facet(t)
            if self.request.saliency and i == self.spec.depth - 1:
                results["saliency"] = block.cls_saliency(h, rope)
            if i < self.last or "token" in facets:
                x = block(x, rope)
                if "token" in facets:
                    results[output_name(i, "token")] = x[:, self.num_prefix:]
                    if self.request.cls:
                        results[cls_output_name(i, "token")] = x[:, 0]
        return tuple(results[name].float() for name in self.request.output_names())


class _ExportBlock(nn.Module):
    def __init__(self, block, graph: ExportGraph, dtype: torch.dtype, facets: list[str]):
        super().__init__()
        d = graph.dim
        self.n = -1 if graph.dynamic else graph.num_tokens  # -1: the token axis is read at run time
        self.num_prefix = graph.num_prefix
        self.heads = graph.num_heads
        self.hd = graph.head_dim
        self.dim = d
        self.dtype = dtype
        self.saliency_heads = graph.saliency_heads
        self.sqrt_hd = math.sqrt(self.hd)
        self.scale = self.hd**-0.5
        self.ln1 = block.norm1  # fp32 (shared)
        self.ln2 = block.norm2
        w = block.attn.qkv.weight.detach()
        b = block.attn.qkv.bias.detach() if block.attn.qkv.bias is not None else torch.zeros(3 * d)
        for j, name in enumerate(("q", "k", "v")):
            lin = nn.Linear(d, d)
            with torch.no_grad():
                lin.weight.copy_(w[j * d:(j + 1) * d])
                lin.bias.copy_(b[j * d:(j + 1) * d])
            setattr(self, name, lin.to(dtype).requires_grad_(False))
        # Facet outputs get their own copy of the projection: a weight shared between the attention MatMul and the
        # facet Gemm would keep its Transpose unfolded in the exported graph, and ORT's fusion needs initializers.
        for facet in facets:
            j = ("query", "key", "value").index(facet)
            self.register_buffer(f"{facet}_w", w[j * d:(j + 1) * d].to(dtype).clone(), persistent=False)
            self.register_buffer(f"{facet}_b", b[j * d:(j + 1) * d].to(dtype).clone(), persistent=False)
        self.proj = _cast_copy(block.attn.proj, dtype)
        self.ls1 = _cast_copy(block.ls1, dtype)
        self.mlp = _cast_copy(block.mlp, dtype)
        self.ls2 = _cast_copy(block.ls2, dtype)

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm in float32 (fp16 would overflow in the variance), result in the compute dtype."""
        return self.ln1(x).to(self.dtype)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        if self.n < 0:
            return t.reshape(t.shape[0], -1, self.heads, self.hd)
        return t.reshape(-1, self.n, self.heads, self.hd)

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        h = self.norm1(x)
        q = self._heads(self.q(h)).transpose(1, 2)  # (B, heads, N, hd)
        v = self._heads(self.v(h)).transpose(1, 2)
        if rope is None:
            k = self._heads(self.k(h)).permute(0, 2, 3, 1)  # (B, heads, hd, N)
        else:
            q = apply_rope(q, rope, self.num_prefix)
            k = apply_rope(self._heads(self.k(h)).transpose(1, 2), rope, self.num_prefix).transpose(-2, -1)
        if self.dtype == torch.float32:
            scores = torch.matmul(q, k) / self.sqrt_hd  # the pattern ORT's fusion matches
        else:  # fp16: scale q first, so q.k^T stays in range and TensorRT fuses the attention (MHA) kernels
            scores = torch.matmul(q * self.scale, k).float()
        attn = scores.softmax(dim=-1).to(self.dtype)
        out = torch.matmul(attn, v).transpose(1, 2)
        out = out.reshape(out.shape[0], -1, self.dim) if self.n < 0 else out.reshape(-1, self.n, self.dim)
        # Branch first, residual second (a + b == b + a exactly): ORT's fusion walks input 0 of the Add.
        x = self.ls1(self.proj(out)).float() + x
        h2 = self.ln2(x).to(self.dtype)
        return self.ls2(self.mlp(h2)).float() + x

    def facet_heads(self, h: torch.Tensor, facet: str) -> torch.Tensor:
        """query/key/value of every token (B, N, heads, hd), recomputed on a (B*N, D) view (Gemm)."""
        t = F.linear(h.reshape(-1, self.dim), getattr(self, f"{facet}_w"), getattr(self, f"{facet}_b"))
        if self.n < 0:
            return t.reshape(h.shape[0], -1, self.heads, self.hd)
        return t.reshape(-1, self.n, self.heads, self.hd)

    def facet(self, t: torch.Tensor) -> torch.Tensor:
        """`facet_heads` -> the patch tokens' facet (B, T, hd*heads), channel d*heads + h."""
        t = t[:, self.num_prefix:]
        if self.n < 0:
            return t.permute(0, 1, 3, 2).reshape(t.shape[0], -1, self.hd * self.heads)
        return t.permute(0, 1, 3, 2).reshape(-1, self.n - self.num_prefix, self.hd * self.heads)

    def cls_facet(self, t: torch.Tensor) -> torch.Tensor:
        """`facet_heads` -> the CLS token's facet (B, hd*heads), channel d*heads + h (the row `facet` drops)."""
        return t[:, 0].transpose(1, 2).reshape(-1, self.hd * self.heads)

    def cls_saliency(self, h: torch.Tensor, rope=None) -> torch.Tensor:
        """CLS query row of this block's attention over the patch keys, saliency heads averaged, min-max."""
        q = self.q(h[:, :1]).reshape(-1, 1, self.heads, self.hd).transpose(1, 2)  # (B, heads, 1, hd)
        k = self._heads(self.k(h)).transpose(1, 2)  # (B, heads, N, hd)
        if rope is not None:
            k = apply_rope(k, rope, self.num_prefix)  # the CLS query is a prefix token: never rotated
        if self.dtype == torch.float32:
            scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        else:  # fp16: q scaled before the product (as in forward)
            scores = torch.matmul(q * self.scale, k.transpose(-2, -1)).float()
        attn = scores.softmax(dim=-1)[:, :, 0, self.num_prefix:]  # (B, heads, T) float32
        a = attn.index_select(1, torch.tensor(self.saliency_heads)).mean(dim=1)  # Gather, not GatherND
        lo = a.min(dim=-1, keepdim=True).values
        hi = a.max(dim=-1, keepdim=True).values
        return (a - lo) / (hi - lo)


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module itself in fp32 (shared parameters), or a detached copy in `dtype`."""
    if dtype == torch.float32:
        return module
    import copy

    return copy.deepcopy(module).to(dtype).requires_grad_(False)
