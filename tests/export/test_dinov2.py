"""DINOv2 in the strided ViT: parity with timm's `vit_*_patch14[_reg4]_dinov2` on the same deterministic weights.

The weights are the golden rule's (official DINOv2 layout = our parameter names), mapped into timm by timm's own
`checkpoint_filter_fn`, so the tests also check that we read the official layout the way timm does. The qkv
weights are scaled by 4 and the position table by 25 so that attention is peaked and positions matter: with the
plain rule (std 0.02) attention is nearly uniform and a wrong position or token order would move the outputs by
less than the 1e-4 tolerance.

Position resampling: the official non-register models resample with ``scale_factor=(n + 0.1) / 37`` (no
antialias), which timm's ``dynamic_img_size`` (size-based, antialiased) does not reproduce, so those are compared at
timm's native grid (518 px -> 37 x 37, no resampling) and, for a non-square grid, with our resampled table loaded
into a fixed-size timm model. The ``_reg`` models resample with ``size=(rows, cols), antialias=True`` (official hub:
``interpolate_offset=0.0, interpolate_antialias=True``), which is exactly timm's dynamic resampling: compared at
non-native sizes directly.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from testutil import rel_err

from dinofeat.model.vit import Request, StridedViT, resample_position_table
from dinofeat.model.zoo import get_model_spec
from dinofeat.testing import deterministic_state_dict

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

TOL = 1e-4


def _shapes(spec) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in StridedViT(spec).state_dict().items()}


def _weights(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(_cached_weights(spec, seed))


@functools.lru_cache(maxsize=4)
def _cached_weights(spec, seed: int) -> dict[str, torch.Tensor]:
    sd = deterministic_state_dict(_shapes(spec), seed)
    for key in sd:
        if key.endswith("attn.qkv.weight"):
            sd[key] = sd[key] * 4
    sd["pos_embed"] = sd["pos_embed"] * 25
    return sd


def _ours(spec, sd, stride=None) -> StridedViT:
    model = StridedViT(spec, stride=stride).eval()
    model.load_state_dict(sd, strict=True)
    return model


def _timm(name: str, spec, sd, **kwargs):
    # Built on the meta device (skips timm's random init: timm ViTs have no non-persistent buffers) then assigned.
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, depth=spec.depth, **kwargs).eval()
    mapped = checkpoint_filter_fn({k: v.clone() for k, v in sd.items()}, model)
    model.load_state_dict(mapped, strict=True, assign=True)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model


def _timm_reference(model, x: torch.Tensor, layers, num_prefix: int, num_heads: int) -> dict[str, torch.Tensor]:
    """Facets in SEMANTICS §4 layout and saliency (§5, all heads) computed from timm's blocks and qkv Linears."""
    qkv = {}
    hooks = [model.blocks[i].attn.qkv.register_forward_hook(lambda m, a, o, i=i: qkv.__setitem__(i, o))
             for i in set(layers) | {len(model.blocks) - 1}]
    out = {}
    with torch.no_grad():
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for i, blk in enumerate(model.blocks):
            t = blk(t)
            out[f"token{i}"] = t[:, num_prefix:]
    for h in hooks:
        h.remove()
    for i, o in qkv.items():
        b, n, _ = o.shape
        q, k, _v = o.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        out[f"key{i}"] = k[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(b, n - num_prefix, -1)
        out[f"query{i}"] = q[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(b, n - num_prefix, -1)
        if i == len(model.blocks) - 1:
            attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)  # full (B, heads, N, N)
            a = attn[:, :, 0, num_prefix:].mean(1)
            lo, hi = a.min(-1, keepdim=True).values, a.max(-1, keepdim=True).values
            out["saliency"] = (a - lo) / (hi - lo)
    return out


def _check(ours: StridedViT, ref: dict, x: torch.Tensor, request: Request) -> dict[str, float]:
    with torch.no_grad():
        outs = ours.forward_features(x, request)
    errs = {}
    for name, o in zip(request.output_names(), outs, strict=True):
        assert o.shape == ref[name].shape, name
        errs[name] = rel_err(o, ref[name])
    assert max(errs.values()) < TOL, errs
    return errs


# ---- zoo rows --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,timm_size", [("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")])
@pytest.mark.parametrize("reg", [False, True])
def test_zoo_rows_match_timm_architecture(size, timm_size, reg):
    """Every DINOv2 row builds the parameter set timm builds for that model (dims, depth, FFN widths, registers)."""
    spec = get_model_spec(f"dinov2_vit{size}14" + ("_reg" if reg else ""))
    name = f"vit_{timm_size}_patch14_{'reg4_' if reg else ''}dinov2"
    with torch.device("meta"):
        tm = timm.create_model(name, pretrained=False, num_classes=0, img_size=518)
        ours = {k: torch.empty(s) for k, s in _shapes(spec).items()}
    mapped = {k: tuple(v.shape) for k, v in checkpoint_filter_fn(ours, tm).items()}
    assert mapped == {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    assert tm.blocks[0].attn.num_heads == spec.num_heads
    assert tm.blocks[0].norm1.eps == spec.norm_eps
    assert spec.num_register_tokens == (4 if reg else 0) and spec.saliency_heads is None
    assert spec.pos_interp == ("antialias" if reg else "offset")


# ---- parity with timm ------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~9 s alone on 2 cores (two full ViT-S forwards over 1370 tokens); runs by default
def test_vits14_matches_timm_at_native_size():
    """Full dinov2_vits14 at 518 x 518 (timm's 37 x 37 grid: no resampling): keys of block 9, queries and tokens of
    block 11, saliency."""
    spec = get_model_spec("dinov2_vits14")
    sd = _weights(spec)
    ours, tm = _ours(spec, sd), _timm("vit_small_patch14_dinov2", spec, sd, img_size=518)
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    request = Request(facets=((9, "key"), (11, "query"), (11, "token")), saliency=True)
    ref = _timm_reference(tm, x, [9, 11], 1, spec.num_heads)
    _check(ours, ref, x, request)


def test_vits14_non_square_grid_matches_timm_with_our_table():
    """A non-square grid: our (+0.1 offset) resampled table loaded into a fixed-size timm model gives the same
    outputs, i.e. rows/columns and token order agree; and the table is DINOv2's own interpolate_pos_encoding."""
    spec = replace(get_model_spec("dinov2_vits14"), depth=2)
    sd = _weights(spec)
    height, width = 140, 196  # 10 x 14 patches
    ours = _ours(spec, sd)
    table = resample_position_table(spec, ours.pos_embed, height, width, spec.patch_size)
    # DINOv2's interpolate_pos_encoding (interpolate_offset=0.1, no antialias), written out:
    patch = sd["pos_embed"][:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    official = F.interpolate(patch, scale_factor=((10 + 0.1) / 37, (14 + 0.1) / 37), mode="bicubic",
                             antialias=False)
    official = torch.cat([sd["pos_embed"][:, :1], official.permute(0, 2, 3, 1).reshape(1, 140, -1)], dim=1)
    assert torch.equal(table, official)
    tm = _timm("vit_small_patch14_dinov2", spec, {**sd, "pos_embed": table}, img_size=(height, width))
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    request = Request(facets=((0, "key"), (1, "token")), saliency=True)
    _check(ours, _timm_reference(tm, x, [0, 1], 1, spec.num_heads), x, request)


@pytest.fixture(scope="module")
def reg_models():
    spec = get_model_spec("dinov2_vits14_reg")
    sd = _weights(spec)
    return spec, _ours(spec, sd), _timm("vit_small_patch14_reg4_dinov2", spec, sd, img_size=518, dynamic_img_size=True)


@pytest.mark.parametrize("height,width", [(224, 224), (140, 196), (98, 70)])
def test_vits14_reg_matches_timm_dynamic_size(reg_models, height, width):
    """dinov2_vits14_reg, all 12 blocks, at sizes that resample the table (up and down, non-square): registers
    inserted after CLS without positions, antialiased size-based resampling, registers dropped from every output."""
    spec, ours, tm = reg_models
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    request = Request(facets=((9, "key"), (11, "token")), saliency=True)
    errs = _check(ours, _timm_reference(tm, x, [9, 11], 5, spec.num_heads), x, request)
    assert errs["saliency"] < TOL


def test_vits14_reg_native_size_keeps_table():
    spec = replace(get_model_spec("dinov2_vits14_reg"), depth=2)
    sd = _weights(spec)
    ours = _ours(spec, sd)
    assert torch.equal(ours.position_embedding(518, 518), sd["pos_embed"])
    tm = _timm("vit_small_patch14_reg4_dinov2", spec, sd, img_size=518)
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(3))
    request = Request(facets=((1, "key"), (1, "token")), saliency=True)
    _check(ours, _timm_reference(tm, x, [1], 5, spec.num_heads), x, request)


def test_giant_swiglu_ffn_matches_timm():
    """The ViT-g SwiGLU FFN (w12 -> silu(x1) * x2 -> w3, hidden 4096) on a 2-block ViT-g with a 16 x 16 table."""
    spec = replace(get_model_spec("dinov2_vitg14"), depth=2, pos_grid=16)
    assert spec.ffn == "swiglu"
    sd = _weights(spec)
    assert sd["blocks.0.mlp.w12.weight"].shape == (2 * 4096, 1536)
    ours = _ours(spec, sd)
    tm = _timm("vit_giant_patch14_dinov2", spec, sd, img_size=224)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    request = Request(facets=((1, "key"), (1, "token")), saliency=True)
    _check(ours, _timm_reference(tm, x, [1], 1, spec.num_heads), x, request)


# ---- registers under a stride change -----------------------------------------------------------------------------
def test_registers_dropped_like_cls_at_stride():
    """At stride 7 every facet has exactly rows*cols tokens, the key facet is the qkv output of tokens 5.. (CLS and
    4 registers dropped), and saliency is the CLS row over the patch keys of the full softmax (which also spans the
    registers), min-max normalised over the patches only."""
    spec = replace(get_model_spec("dinov2_vits14_reg"), depth=2)
    ours = _ours(spec, _weights(spec), stride=7)
    height, width = 126, 140
    rows, cols = ours.grid(height, width)
    assert (rows, cols) == (17, 19)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(5))
    request = Request(facets=((1, "key"), (1, "value"), (1, "token")), saliency=True)
    captured = {}
    hook = ours.blocks[1].attn.qkv.register_forward_hook(lambda m, a, o: captured.__setitem__("qkv", o))
    with torch.no_grad():
        key, value, token, sal = ours.forward_features(x, request)
    hook.remove()
    t = rows * cols
    assert key.shape == value.shape == token.shape == (1, t, spec.embed_dim) and sal.shape == (1, t)
    qkv = captured["qkv"]  # the block's own forward: (1, 5 + T, 3D)
    assert qkv.shape[1] == 5 + t
    q, k, v = qkv.reshape(1, 5 + t, 3, spec.num_heads, spec.head_dim).permute(2, 0, 3, 1, 4)
    assert torch.equal(key, k[:, :, 5:].permute(0, 2, 3, 1).reshape(1, t, -1))
    assert torch.equal(value, v[:, :, 5:].permute(0, 2, 3, 1).reshape(1, t, -1))
    a = (q[:, :, :1] @ k.transpose(-2, -1) * spec.head_dim**-0.5).softmax(-1)[:, :, 0, 5:].mean(1)
    assert rel_err(sal, (a - a.min()) / (a.max() - a.min())) < TOL
    assert float(sal.min()) == 0.0 and float(sal.max()) == 1.0


def test_reg_position_table_under_stride():
    """_reg positions at a strided grid are the model's own size-based antialiased resampling to (rows, cols); the
    stored 37 x 37 table is used as is when the strided grid is 37 x 37 on a square image."""
    spec = get_model_spec("dinov2_vits14_reg")
    pos = _weights(spec)["pos_embed"]
    table = resample_position_table(spec, pos, 126, 140, 7)
    patch = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, size=(17, 19), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    assert torch.equal(table, torch.cat([pos[:, :1], expected.reshape(1, 17 * 19, -1)], dim=1))
    side = 14 + 36 * 7  # 37 windows at stride 7
    assert torch.equal(resample_position_table(spec, pos, side, side, 7), pos)
    # the non-register model resamples the same grid with the +0.1 offset scheme: a different table
    other = resample_position_table(get_model_spec("dinov2_vits14"), pos, 126, 140, 7)
    assert other.shape == table.shape and rel_err(other, table) > 0.05
