"""Checkpoint layouts -> StridedViT names: official, training wrappers, timm, Hugging Face; and the error messages.

timm layouts are produced by timm's own converter (`checkpoint_filter_fn`) from official tensors, so the mapping is
tested against timm in both directions. Hugging Face layouts come from `native_to_hf` below, whose names were
checked against transformers 5.24 (`save_pretrained` file keys, and forward outputs equal to StridedViT's to 1e-7);
`test_real_transformers_roundtrip` repeats that check wherever transformers is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import re
import sys

import pytest
import torch

from dinofeat.errors import WeightsError
from dinofeat.model.layouts import native_shapes, to_native
from dinofeat.model.vit import Request, StridedViT
from dinofeat.model.zoo import MODELS
from dinofeat.testing import deterministic_state_dict, deterministic_weights

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def small(name: str, depth: int = 2, **kw):
    """A zoo spec with fewer blocks (fast); same layout."""
    return dataclasses.replace(MODELS[name], depth=depth, **kw)


@functools.cache
def official(spec) -> dict[str, torch.Tensor]:
    """Golden-rule weights of `spec` in the official layout (cached: callers must not modify the tensors)."""
    return deterministic_state_dict(native_shapes(spec))


def to_timm(sd, timm_name: str, **kw) -> dict[str, torch.Tensor]:
    """Official -> timm with timm's converter; checked against the timm model's own keys and shapes."""
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kw)
    out = checkpoint_filter_fn({k: v.clone() for k, v in sd.items()}, model)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in out.items()} == want
    return out


def native_to_hf(sd, *, vit: bool, v5: bool = False, prefix: str = "") -> dict[str, torch.Tensor]:
    """Official state dict -> Hugging Face ViTModel (vit=True) / Dinov2Model names.

    v5=False: the names transformers writes to files (all versions); v5=True: transformers 5's in-memory names.
    """
    emb = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
           "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    out = {}
    for key, value in sd.items():
        if key in emb:
            out[emb[key]] = value
            continue
        i, rest = re.match(r"blocks\.(\d+)\.(.+)$", key).groups()
        layer = f"layers.{i}." if (v5 and vit) else f"encoder.layer.{i}."
        if rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{layer}layer_scale{rest[2]}.lambda1"] = value
            continue
        name, param = rest.rsplit(".", 1)
        if name == "attn.qkv":
            names = (("attention.q_proj", "attention.k_proj", "attention.v_proj") if v5 else
                     ("attention.attention.query", "attention.attention.key", "attention.attention.value"))
            for n, part in zip(names, value.chunk(3, dim=0), strict=True):
                out[f"{layer}{n}.{param}"] = part.clone()
        elif name == "mlp.w12" and v5:
            gate, up = value.chunk(2, dim=0)
            out[f"{layer}mlp.gate_proj.{param}"], out[f"{layer}mlp.up_proj.{param}"] = gate.clone(), up.clone()
        else:
            table = {"norm1": "layernorm_before" if vit else "norm1", "norm2": "layernorm_after" if vit else "norm2",
                     "attn.proj": "attention.o_proj" if v5 else "attention.output.dense",
                     "mlp.fc1": "intermediate.dense" if (vit and not v5) else "mlp.fc1",
                     "mlp.fc2": "output.dense" if (vit and not v5) else "mlp.fc2",
                     "mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.down_proj" if v5 else "mlp.weights_out"}
            out[f"{layer}{table[name]}.{param}"] = value
    return {prefix + k: v for k, v in out.items()}


def assert_same(a: dict, b: dict, skip=()):
    assert a.keys() == b.keys()
    for k in a:
        if k in skip:
            continue
        assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k


def zeros_like_shapes(spec) -> dict[str, torch.Tensor]:
    """Shape-only state dict (expanded zeros: no memory) for error-message tests."""
    return {k: torch.zeros(()).expand(s) for k, s in native_shapes(spec).items()}


@pytest.fixture(scope="module")
def vits8():
    return deterministic_weights("dino_vits8")


# ---------------------------------------------------------------------------------------------------------------
# official and wrapped
# ---------------------------------------------------------------------------------------------------------------
def test_official_dino_identity(vits8):
    spec = MODELS["dino_vits8"]
    out = to_native(spec, vits8)
    assert_same(out, vits8)
    assert list(out) == list(native_shapes(spec))


def test_official_dinov2_keeps_mask_token():
    spec = small("dinov2_vits14_reg")
    sd = official(spec)
    assert "mask_token" in sd and "register_tokens" in sd
    assert_same(to_native(spec, sd), sd)


def test_dino_training_checkpoint_prefers_teacher(vits8):
    spec = MODELS["dino_vits8"]
    head = {"head.mlp.0.weight": torch.zeros(2048, 384), "head.last_layer.weight_g": torch.ones(65536, 1)}
    ckpt = {
        "student": {**{f"module.backbone.{k}": v * 2 for k, v in vits8.items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in vits8.items()}, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=8),
        "dino_loss": {"center": torch.zeros(1, 65536)},
    }
    assert_same(to_native(spec, ckpt), vits8)
    only_student = {"student": ckpt["student"], "epoch": 1}
    out = to_native(spec, only_student)
    assert torch.equal(out["cls_token"], vits8["cls_token"] * 2)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "ddp", "compile"])
def test_common_wrappers(vits8, wrap):
    sd = {"state_dict": vits8, "model": dict(vits8)}.get(wrap)
    if wrap == "ddp":
        sd = {"module." + k: v for k, v in vits8.items()}
    if wrap == "compile":
        sd = {"model": {"_orig_mod." + k: v for k, v in vits8.items()}}
    assert_same(to_native(MODELS["dino_vits8"], sd), vits8)


def test_dinov2_training_checkpoint_chunked_blocks():
    spec = small("dinov2_vits14", depth=4)
    sd = official(spec)

    def chunked(prefix):
        out = {}
        for k, v in sd.items():
            m = re.match(r"blocks\.(\d+)\.(.+)", k)
            out[prefix + (f"blocks.{int(m.group(1)) // 2}.{m.group(1)}.{m.group(2)}" if m else k)] = v
        return out

    ckpt = {"model": {**chunked("teacher.backbone."), **{k: v + 1 for k, v in chunked("student.backbone.").items()},
                      "teacher.dino_head.mlp.0.weight": torch.zeros(8, 384),
                      "teacher.ibot_head.last_layer.weight": torch.zeros(8, 8)},
            "iteration": 1000}
    assert_same(to_native(spec, ckpt), sd)


def test_half_precision_is_cast_to_float32(vits8):
    half = {k: v.half() for k, v in vits8.items()}
    out = to_native(MODELS["dino_vits8"], half)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.equal(out["pos_embed"], vits8["pos_embed"].half().float())


def test_known_unused_keys_are_dropped(vits8):
    extra = {"head.weight": torch.zeros(1000, 384), "head.bias": torch.zeros(1000),
             "fc_norm.weight": torch.ones(384), "fc_norm.bias": torch.zeros(384)}
    assert_same(to_native(MODELS["dino_vits8"], {**vits8, **extra}), vits8)


# ---------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------
def test_timm_dino(vits8):
    t = to_timm(vits8, "vit_small_patch8_224.dino")
    assert_same(to_native(MODELS["dino_vits8"], t), vits8)


@pytest.mark.parametrize("zoo,timm_name", [
    ("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m"),
    ("dinov2_vitg14", "vit_giant_patch14_dinov2.lvd142m"),
])
def test_timm_dinov2(zoo, timm_name):
    depth = 1 if zoo == "dinov2_vitg14" else 2
    spec = small(zoo, depth=depth)
    sd = official(spec)
    t = to_timm(sd, timm_name, depth=depth)
    assert "mask_token" not in t
    if zoo == "dinov2_vitg14":
        assert t["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)  # packed SwiGLU
    out = to_native(spec, t)
    assert_same(out, sd, skip={"mask_token"})
    assert torch.equal(out["mask_token"], torch.zeros_like(sd["mask_token"]))


@pytest.mark.parametrize("zoo,timm_name", [
    ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2.lvd142m"),
    ("dinov2_vitg14_reg", "vit_giant_patch14_reg4_dinov2.lvd142m"),
])
def test_timm_dinov2_registers(zoo, timm_name):
    spec = small(zoo, depth=1)
    sd = official(spec)
    t = to_timm(sd, timm_name, depth=1)
    assert "reg_token" in t and t["pos_embed"].shape[1] == 37 * 37  # no CLS row in timm
    out = to_native(spec, t)
    assert_same(out, sd, skip={"mask_token", "cls_token", "pos_embed"})
    # timm folded the CLS position into the CLS token; the sum the model adds is the same float32 value
    assert torch.equal(out["cls_token"] + out["pos_embed"][:, :1], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(out["pos_embed"][:, 1:], sd["pos_embed"][:, 1:])
    assert not out["pos_embed"][:, 0].any()


def test_timm_registers_forward_is_bit_identical():
    """timm's reg4 model and StridedViT on the mapped weights compute the same tokens."""
    spec = small("dinov2_vits14_reg", depth=2, pos_grid=16)
    sd = official(spec)
    tm = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False, num_classes=0, depth=2,
                           img_size=224)
    tm.load_state_dict(checkpoint_filter_fn(dict(sd), tm), strict=True)
    vit = StridedViT(spec)
    vit.load_state_dict(to_native(spec, tm.state_dict()))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = tm.forward_features(x.clone())[:, spec.num_prefix_tokens:]
        got = vit.norm(vit.forward_features(x, Request(facets=((1, "token"),)))[0])
    assert (got - want).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zoo,vit,prefix", [
    ("dino_vits8", True, ""), ("dino_vits8", True, "vit."), ("dinov2_vits14", False, ""),
    ("dinov2_vits14_reg", False, "dinov2."), ("dinov2_vitg14", False, ""),
])
@pytest.mark.parametrize("v5", [False, True])
def test_hugging_face(zoo, vit, prefix, v5):
    spec = small(zoo, depth=1 if zoo == "dinov2_vitg14" else 2)
    sd = official(spec)
    hf = native_to_hf(sd, vit=vit, v5=v5, prefix=prefix)
    assert not set(hf) & set(sd)
    if vit:
        hf[prefix + "pooler.dense.weight"] = torch.zeros(384, 384)
        hf[prefix + "pooler.dense.bias"] = torch.zeros(384)
    if prefix:
        hf["classifier.weight"] = torch.zeros(1000, 768)
    assert_same(to_native(spec, hf), sd)


@pytest.mark.integration  # imports transformers (heavy): `pytest -m integration`
def test_real_transformers_roundtrip(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    spec = small("dinov2_vits14", depth=1)
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, patch_size=14,
                                       image_size=518, layer_norm_eps=1e-6)
    model = transformers.Dinov2Model(config)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(native_to_hf(official(spec), vit=False))
    out = to_native(spec, saved)
    assert torch.equal(out["blocks.0.attn.qkv.weight"][:384], saved["encoder.layer.0.attention.attention.query.weight"])


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_wrong_architecture_names_the_right_model():
    sd = zeros_like_shapes(MODELS["dino_vitb8"])
    with pytest.raises(WeightsError) as err:
        to_native(MODELS["dino_vits8"], sd, source="/x/ckpt.pth")
    msg = str(err.value)
    assert "model='dino_vits8'" in msg and "/x/ckpt.pth" in msg
    assert "looks like a dino_vitb8 checkpoint (embed dim 768, patch 8, 12 blocks)" in msg
    assert "pass model='dino_vitb8'" in msg
    assert "shape mismatch (150)" in msg and "cls_token (checkpoint (1, 1, 768), model (1, 1, 384))" in msg


def test_dinov2_checkpoint_for_dino_model():
    sd = zeros_like_shapes(MODELS["dinov2_vits14_reg"])
    with pytest.raises(WeightsError) as err:
        to_native(MODELS["dino_vits8"], sd)
    msg = str(err.value)
    assert "pass model='dinov2_vits14_reg'" in msg
    assert "unexpected (26): mask_token, register_tokens" not in msg  # mask_token is known-unused for DINO
    assert re.search(r"unexpected \(25\): register_tokens, blocks\.0\.ls1\.gamma", msg)
    assert ", ... (15 more)" in msg


def test_patch_size_mismatch():
    sd = zeros_like_shapes(MODELS["dino_vits16"])
    with pytest.raises(WeightsError, match=r"(?s)shape mismatch \(2\).*pass model='dino_vits16'"):
        to_native(MODELS["dino_vits8"], sd)


def test_missing_and_unexpected_keys(vits8):
    sd = {k: v for k, v in vits8.items() if not k.startswith("blocks.11.")}
    sd["blocks.0.attn.qkv_extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as err:
        to_native(MODELS["dino_vits8"], sd)
    msg = str(err.value)
    assert "12 missing, 1 unexpected and 0 shape-mismatched" in msg
    assert "missing (12): blocks.11.norm1.weight" in msg and "(2 more)" in msg
    assert "unexpected (1): blocks.0.attn.qkv_extra.weight" in msg
    assert "no zoo model matches it exactly" in msg


def test_single_shape_mismatch(vits8):
    sd = dict(vits8)
    sd["blocks.3.mlp.fc1.bias"] = torch.zeros(1535)
    with pytest.raises(WeightsError, match=r"blocks\.3\.mlp\.fc1\.bias \(checkpoint \(1535,\), model \(1536,\)\)"):
        to_native(MODELS["dino_vits8"], sd)


def test_not_a_state_dict():
    with pytest.raises(WeightsError, match="no tensors"):
        to_native(MODELS["dino_vits8"], {"epoch": 3, "args": {"lr": 0.1}})
    with pytest.raises(WeightsError, match="not a state dict"):
        to_native(MODELS["dino_vits8"], [torch.zeros(3)])


def test_integer_tensors_rejected(vits8):
    sd = dict(vits8)
    sd["norm.bias"] = torch.zeros(384, dtype=torch.int64)
    with pytest.raises(WeightsError, match="norm.bias.*int64"):
        to_native(MODELS["dino_vits8"], sd)


def test_dinov3_without_its_mapping_module(vits8, monkeypatch):
    monkeypatch.setitem(sys.modules, "dinofeat.model.dinov3", None)  # as if dinov3.py were absent
    with pytest.raises(WeightsError, match=r"dinov3\.py.*looks like dino_vits8; pass model='dino_vits8'"):
        to_native(MODELS["dinov3_vits16"], vits8)


@pytest.mark.skipif(importlib.util.find_spec("dinofeat.model.dinov3") is None, reason="no dinofeat/model/dinov3.py")
def test_dinov3_is_delegated():
    spec = small("dinov3_vits16", depth=1)
    sd = official(spec)  # native names: dinov3_to_native passes them through; then validated here
    assert_same(to_native(spec, {"model": {"module." + k: v for k, v in sd.items()}}), sd)
    with pytest.raises(WeightsError):
        to_native(spec, official(small("dino_vits8", depth=1)))
