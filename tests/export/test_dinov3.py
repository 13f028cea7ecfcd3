"""DINOv3 in the strided ViT: checkpoint mapping, parity with timm's Eva `vit_*_patch16_dinov3`, RoPE under stride.

The weights are the golden rule's drawn in the **official** DINOv3 layout (`official_dinov3_shapes`), with real
RoPE periods (bfloat16-rounded, as the released files store them) and the intended K-masking ``qkv.bias_mask``.
They are mapped into our model by `dinov3_to_native` and into timm by timm's own `checkpoint_filter_fn`, so the
parity also checks our reading of the official layout against timm's. The qkv weights are scaled by 4 so that
attention is peaked: with the plain rule attention is nearly uniform and dropping RoPE altogether would move the
tokens by only ~2e-4.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
from testutil import rel_err

from dinofeat.errors import WeightsError
from dinofeat.model.dinov3 import (
    detect_layout,
    dinov3_to_native,
    native_shapes,
    official_bias_mask,
    official_dinov3_shapes,
    official_periods,
)
from dinofeat.model.vit import Request, StridedViT, build_vit, rope_axis_coords, rope_sincos
from dinofeat.model.weights import load_weights
from dinofeat.model.zoo import get_model_spec
from dinofeat.testing import deterministic_state_dict, deterministic_weights

timm = pytest.importorskip("timm")
from timm.layers import apply_rot_embed_cat  # noqa: E402
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3  # noqa: E402
from timm.models._manipulate import reinit_non_persistent_buffers  # noqa: E402
from timm.models.eva import checkpoint_filter_fn  # noqa: E402

TOL = 1e-4
TIMM = {"dinov3_vits16": "vit_small_patch16_dinov3", "dinov3_vits16plus": "vit_small_plus_patch16_dinov3",
        "dinov3_vitb16": "vit_base_patch16_dinov3", "dinov3_vitl16": "vit_large_patch16_dinov3"}


@functools.lru_cache(maxsize=4)
def _cached_official(spec, seed: int, zero_bias: bool) -> dict[str, torch.Tensor]:
    sd = deterministic_state_dict(official_dinov3_shapes(spec), seed)
    sd["rope_embed.periods"] = official_periods(spec).to(torch.bfloat16).float()
    for key in list(sd):
        if key.endswith("attn.qkv.weight"):
            sd[key] = sd[key] * 4
        elif key.endswith("attn.qkv.bias_mask"):
            sd[key] = official_bias_mask(spec)
        elif key.endswith("attn.qkv.bias") and zero_bias:
            sd[key] = torch.zeros_like(sd[key])
    return sd


def _official(spec, seed: int = 0, zero_bias: bool = False) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _cached_official(spec, seed, zero_bias).items()}


def _ours(spec, sd, stride=None, rope_periods="recompute") -> StridedViT:
    """Our model on `sd`; timm recomputes the RoPE periods in float32, so the parity runs under "recompute"."""
    return build_vit(spec, stride or spec.patch_size, load_weights(spec, sd), rope_periods)


def _timm(name: str, spec, official: dict):
    # Built on the meta device (skips timm's random init), materialised, loaded, then the computed non-persistent
    # buffers (RoPE periods, the zero K bias) are rebuilt as timm does after loading a checkpoint.
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, depth=spec.depth)
    model = model.to_empty(device="cpu").eval()
    model.load_state_dict(checkpoint_filter_fn({k: v.clone() for k, v in official.items()}, model), strict=True)
    reinit_non_persistent_buffers(model)
    return model


def _timm_reference(model, x, layers, num_prefix: int, num_heads: int) -> tuple[dict, torch.Tensor]:
    """Facets (SEMANTICS §4 layout, pre-RoPE q/k as the qkv Linear gives them), tokens, and saliency from the
    timm model's full attention with its own RoPE; also returns timm's (sin | cos) table."""
    normed = {}
    hooks = [model.blocks[i].norm1.register_forward_hook(lambda m, a, o, i=i: normed.__setitem__(i, o))
             for i in set(layers) | {len(model.blocks) - 1}]
    out = {}
    with torch.no_grad():
        t, rope = model._pos_embed(model.patch_embed(x))
        for i, blk in enumerate(model.blocks):
            t = blk(t, rope=rope)
            out[f"token{i}"] = t[:, num_prefix:]
        for h in hooks:
            h.remove()
        for i, n1 in normed.items():
            attn = model.blocks[i].attn
            bias = torch.cat([attn.q_bias, attn.k_bias, attn.v_bias]) if attn.q_bias is not None else None
            qkv = torch.nn.functional.linear(n1, attn.qkv.weight, bias)
            b, n, _ = qkv.shape
            q, k, _v = qkv.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
            out[f"key{i}"] = k[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(b, n - num_prefix, -1)
            out[f"query{i}"] = q[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(b, n - num_prefix, -1)
            if i == len(model.blocks) - 1:
                rot = lambda z: torch.cat(  # noqa: E731
                    [z[:, :, :num_prefix], apply_rot_embed_cat(z[:, :, num_prefix:], rope, half=True)], dim=2)
                a = (rot(q) @ rot(k).transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)[:, :, 0, num_prefix:]
                a = a.mean(1)
                lo, hi = a.min(-1, keepdim=True).values, a.max(-1, keepdim=True).values
                out["saliency"] = (a - lo) / (hi - lo)
    return out, rope


# ---- zoo rows --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TIMM))
def test_zoo_rows_match_timm_architecture(name):
    """Each DINOv3 row maps (official layout -> timm's filter) onto exactly the parameters timm's model has, and
    heads / eps / RoPE base / storage tokens agree."""
    spec = get_model_spec(name)
    with torch.device("meta"):
        tm = timm.create_model(TIMM[name] + "_qkvb", pretrained=False, num_classes=0)
        official = {k: torch.empty(s) for k, s in official_dinov3_shapes(spec).items()}
    mapped = {k: tuple(v.shape) for k, v in checkpoint_filter_fn(official, tm).items()}
    assert mapped == {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    assert tm.blocks[0].attn.num_heads == spec.num_heads
    assert tm.blocks[0].norm1.eps == spec.norm_eps == 1e-5
    assert tm.rope.temperature == spec.rope_base == 100.0
    assert tm.num_prefix_tokens == spec.num_prefix_tokens == 5
    assert spec.layerscale and spec.qkv_bias and spec.pos == "rope" and spec.saliency_heads is None


# ---- parity with timm ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,depth", [("dinov3_vits16", 12), ("dinov3_vits16plus", 4), ("dinov3_vitb16", 2)])
def test_matches_timm(name, depth):
    """Keys / queries (pre-RoPE), tokens and saliency (post-RoPE) equal timm's at a square and a non-square size;
    the RoPE tables are bit-identical; timm's own state dict maps to the same native weights."""
    spec = replace(get_model_spec(name), depth=depth)
    official = _official(spec)
    ours = _ours(spec, official)
    tm = _timm(TIMM[name] + "_qkvb", spec, official)
    native = ours.state_dict()
    from_timm = dinov3_to_native(spec, tm.state_dict())
    assert all(torch.equal(native[k], from_timm[k]) for k in native)
    last, early = depth - 1, max(0, depth - 3)
    request = Request(facets=((early, "key"), (last, "query"), (last, "key"), (last, "token")), saliency=True)
    gen = torch.Generator().manual_seed(0)
    for height, width in [(224, 224), (224, 320)]:
        x = torch.randn(1, 3, height, width, generator=gen)
        ref, rope = _timm_reference(tm, x, [early, last], spec.num_prefix_tokens, spec.num_heads)
        sin, cos = ours.rope_embedding(height, width)
        assert torch.equal(torch.cat([sin, cos], dim=-1), rope)
        if height == width:  # the default (checkpoint's bf16 periods) is Meta's choice, not timm's
            stored = _ours(spec, official, rope_periods="checkpoint").rope_embedding(height, width)
            assert not torch.equal(torch.cat(stored, dim=-1), rope)
        with torch.no_grad():
            outs = ours.forward_features(x, request)
        errs = {n: rel_err(o, ref[n]) for n, o in zip(request.output_names(), outs, strict=True)}
        assert max(errs.values()) < TOL, (height, width, errs)


def test_timm_model_without_qkv_bias():
    """timm's plain (non-_qkvb) DINOv3 has no qkv bias: it maps to an all-zero native bias and, on weights whose
    official bias is zero (as in every released checkpoint), gives the same outputs."""
    spec = replace(get_model_spec("dinov3_vits16"), depth=2)
    official = _official(spec, zero_bias=True)
    ours = _ours(spec, official)
    tm = _timm("vit_small_patch16_dinov3", spec, official)
    assert "blocks.0.attn.q_bias" not in tm.state_dict()
    native = dinov3_to_native(spec, tm.state_dict())
    assert not native["blocks.0.attn.qkv.bias"].any()
    x = torch.randn(1, 3, 160, 192, generator=torch.Generator().manual_seed(1))
    ref, _ = _timm_reference(tm, x, [1], 5, spec.num_heads)
    request = Request(facets=((1, "key"), (1, "token")), saliency=True)
    with torch.no_grad():
        outs = ours.forward_features(x, request)
    for n, o in zip(request.output_names(), outs, strict=True):
        assert rel_err(o, ref[n]) < TOL, n


# ---- checkpoint mapping ------------------------------------------------------------------------------------------
def test_official_mapping_details():
    spec = replace(get_model_spec("dinov3_vits16plus"), depth=2)
    official = _official(spec)
    d = spec.embed_dim
    native = dinov3_to_native(spec, official)
    assert set(native) == set(native_shapes(spec))
    assert torch.equal(native["register_tokens"], official["storage_tokens"])
    assert torch.equal(native["blocks.1.ls2.gamma"], official["blocks.1.ls2.gamma"])
    assert torch.equal(native["blocks.0.mlp.w2.weight"], official["blocks.0.mlp.w2.weight"])
    bias = native["blocks.0.attn.qkv.bias"]
    assert torch.equal(bias[:d], official["blocks.0.attn.qkv.bias"][:d]) and not bias[d : 2 * d].any()
    # released checkpoints: bias_mask all zeros -> no bias at all
    released = {**official, "blocks.0.attn.qkv.bias_mask": torch.zeros(3 * d)}
    assert not dinov3_to_native(spec, released)["blocks.0.attn.qkv.bias"].any()
    # an uninitialised (NaN) mask is refused rather than producing NaN descriptors
    with pytest.raises(WeightsError, match="bias_mask"):
        dinov3_to_native(spec, {**official, "blocks.0.attn.qkv.bias_mask": torch.full((3 * d,), float("nan"))})
    # no mask (mask_k_bias=False): the bias is used as stored
    no_mask = {k: v for k, v in official.items() if not k.endswith("bias_mask")}
    assert torch.equal(dinov3_to_native(spec, no_mask)["blocks.0.attn.qkv.bias"], official["blocks.0.attn.qkv.bias"])
    # no bias (official qkv_bias=False): zeros
    no_bias = {k: v for k, v in no_mask.items() if not k.endswith("attn.qkv.bias")}
    assert not dinov3_to_native(spec, no_bias)["blocks.1.attn.qkv.bias"].any()
    # wrapped / prefixed checkpoints, and an already-native dict
    wrapped = {"model": {f"backbone.{k}": v for k, v in official.items()}}
    assert all(torch.equal(native[k], v) for k, v in dinov3_to_native(spec, wrapped).items())
    assert detect_layout(native) == "native"
    assert all(torch.equal(native[k], v) for k, v in dinov3_to_native(spec, native).items())


def test_periods_are_checked():
    spec = replace(get_model_spec("dinov3_vits16"), depth=1)
    official = _official(spec)
    assert official["rope_embed.periods"].shape == (16,)
    dinov3_to_native(spec, {**official, "rope_embed.periods": official_periods(spec)})  # exact float32: fine
    with pytest.raises(WeightsError, match="RoPE base"):
        dinov3_to_native(spec, {**official, "rope_embed.periods": official_periods(replace(spec, rope_base=1e4))})
    with pytest.raises(WeightsError, match="another architecture"):
        dinov3_to_native(spec, {**official, "rope_embed.periods": torch.ones(8)})


def test_mapping_errors_name_the_problem():
    small = get_model_spec("dinov3_vits16")
    plus = _official(replace(get_model_spec("dinov3_vits16plus"), depth=2))
    with pytest.raises(WeightsError, match=r"dinov3_vits16.*missing .*mlp\.fc1"):
        dinov3_to_native(replace(small, depth=2), plus)
    with pytest.raises(WeightsError, match="missing blocks.2"):
        dinov3_to_native(replace(get_model_spec("dinov3_vits16plus"), depth=3), plus)
    with pytest.raises(WeightsError, match="not a DINOv3"):
        dinov3_to_native(small, deterministic_weights("dino_vits16"))
    with pytest.raises(WeightsError, match="DINOv3 only"):
        dinov3_to_native(get_model_spec("dinov2_vits14"), plus)


def test_deterministic_weights_load_for_every_row():
    for name in TIMM:
        spec = get_model_spec(name)
        with torch.device("meta"):
            model = StridedViT(spec)
        assert set(model.state_dict()) == set(native_shapes(spec))
        assert "mask_token" not in model.state_dict() and "register_tokens" in model.state_dict()


# ---- RoPE under a stride change ----------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(224, 320), (230, 250), (64, 48)])
def test_rope_at_stride_equal_patch_is_timm(height, width):
    """At stride = patch our tables are bit-identical to timm's DINOv3 RoPE on the same grid, including sizes that
    are not multiples of 16 (the last partial patch is dropped by the conv, as in DINOv3)."""
    spec = get_model_spec("dinov3_vits16")
    rope = RotaryEmbeddingDinoV3(spec.head_dim, temperature=spec.rope_base, rotate_half=True)
    grid = (height // 16, width // 16)
    sin, cos = rope_sincos(*grid, spec.head_dim, spec.rope_base, 16, 16, height, width)
    assert torch.equal(torch.cat([sin, cos], dim=-1), rope.get_embed(shape=grid))
    # and the plain-grid form (no pixel sizes) is the same thing
    assert all(torch.equal(a, b) for a, b in zip(rope_sincos(*grid, spec.head_dim, spec.rope_base), (sin, cos), strict=True))


@pytest.mark.parametrize("stride", [8, 4, 2])
@pytest.mark.parametrize("height,width", [(224, 320), (230, 250)])
def test_rope_is_location_preserving_under_stride(stride, height, width):
    """A strided window whose pixel centre coincides with a stride-16 patch centre gets exactly that patch's angles;
    coordinates are an affine function of the window's pixel centre: c = 2 (j s + p / 2) / (n_p p) - 1."""
    spec = get_model_spec("dinov3_vits16")
    coarse = StridedViT(replace(spec, depth=0)).rope_embedding(height, width)
    fine_model = StridedViT(replace(spec, depth=0), stride=stride)
    fine = fine_model.rope_embedding(height, width)
    rows, cols = fine_model.grid(height, width)
    k = 16 // stride
    for t_coarse, t_fine in zip(coarse, fine, strict=True):
        grid_c = t_coarse.reshape(height // 16, width // 16, -1)
        grid_f = t_fine.reshape(rows, cols, -1)
        assert torch.equal(grid_f[::k, ::k][: height // 16, : width // 16], grid_c)
    for n, extent in [(rows, height), (cols, width)]:
        centres = torch.arange(n, dtype=torch.float64) * stride + 8
        expected = 2 * centres / ((extent // 16) * 16) - 1
        assert torch.allclose(rope_axis_coords(n, extent, 16, stride).double(), expected, atol=1e-6)


def test_strided_dinov3_outputs():
    """Stride 4: facets have rows*cols tokens (CLS + 4 storage tokens dropped); the key facet is the pre-RoPE qkv
    output; saliency is the CLS row of the real (post-RoPE) attention over the patches."""
    spec = replace(get_model_spec("dinov3_vits16"), depth=2)
    model = _ours(spec, _official(spec), stride=4)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    rows, cols = model.grid(64, 80)
    assert (rows, cols) == (13, 17)
    t = rows * cols
    captured = {}
    model.blocks[1].norm1.register_forward_hook(lambda m, a, o: captured.__setitem__("n1", o))
    with torch.no_grad():
        key, token, sal = model.forward_features(x, Request(facets=((1, "key"), (1, "token")), saliency=True))
    assert key.shape == token.shape == (1, t, 384) and sal.shape == (1, t)
    sin, cos = model.rope_embedding(64, 80)

    def rotate(z):  # DINOv3 rope_apply on the patch tokens (rotate_half layout), prefix untouched
        p = z[:, :, 5:]
        return torch.cat([z[:, :, :5], p * cos + torch.cat([-p[..., 32:], p[..., :32]], dim=-1) * sin], dim=2)

    with torch.no_grad():
        qkv = model.blocks[1].attn.qkv(captured["n1"]).reshape(1, 5 + t, 3, 6, 64).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        assert torch.equal(key, k[:, :, 5:].permute(0, 2, 3, 1).reshape(1, t, -1))  # pre-RoPE
        for keys, expect_match in [(rotate(k), True), (k, False)]:
            a = (q[:, :, :1] @ keys.transpose(-2, -1) * 0.125).softmax(-1)[:, :, 0, 5:].mean(1)
            ref = (a - a.min()) / (a.max() - a.min())
            assert (rel_err(sal, ref) < TOL) == expect_match
