"""Map DINOv3 checkpoints (official `.pth` or timm `.safetensors`) onto `StridedViT`'s parameter names.

Native names (what `StridedViT(spec).state_dict()` holds for a DINOv3 row): ``cls_token``, ``register_tokens``,
``patch_embed.proj.{weight,bias}``, ``blocks.{i}.norm1|attn.qkv|attn.proj|ls1.gamma|norm2|mlp.*|ls2.gamma`` and
``norm``, where ``mlp.*`` is ``fc1/fc2`` (GELU MLP) or ``w1/w2/w3`` (SwiGLU, ``spec.ffn == "swiglu_dinov3"``).

Official layout (facebookresearch/dinov3 ``DinoVisionTransformer``), mapped as follows:

* ``storage_tokens`` -> ``register_tokens``; ``mask_token`` (pretraining only) is dropped;
* ``blocks.{i}.attn.qkv.bias`` is multiplied by ``blocks.{i}.attn.qkv.bias_mask`` (the official
  ``LinearKMaskedBias`` adds ``bias * bias_mask``; the mask is meant to zero the K third, and in the released
  checkpoints both tensors are all zeros), so the native qkv Linear adds exactly what the official one adds;
* ``rope_embed.periods`` is not a parameter of ours: it is checked against the spec (length ``head_dim // 4``
  and values within bfloat16 rounding, so a checkpoint of another RoPE configuration is refused instead of
  mis-positioned) and returned by `checkpoint_periods`, which the model uses by default (``rope_periods=
  "checkpoint"``, as Meta's ``RopePositionEmbedding`` does); ``rope_periods="recompute"`` recomputes them from
  ``spec.rope_base`` in float32 instead, as timm and transformers do;
* ``cls_norm`` / ``local_cls_norm`` (untied CLS norms of ViT-7B / SAT ViT-L) and EUPE ``projectors.*`` are dropped:
  no facet or saliency output reads the final norms.

timm layout (``timm.models.eva`` ``vit_*_patch16_dinov3[_qkvb]``, its ``checkpoint_filter_fn`` run backwards):

* ``reg_token`` -> ``register_tokens``; ``blocks.{i}.gamma_1|gamma_2`` -> ``ls1.gamma|ls2.gamma``;
* ``attn.q_bias`` / ``attn.v_bias`` (``_qkvb`` models) -> ``attn.qkv.bias = [q_bias, 0, v_bias]`` (timm keeps the
  K bias at zero); models without them get an all-zero qkv bias;
* ``mlp.fc1_g|fc1_x|fc2`` (SwiGLU) -> ``mlp.w1|w2|w3``; ``mlp.fc1|fc2`` stay;
* ``head.*`` / ``fc_norm.*`` (classifier parts) and any ``rope.*`` buffers are dropped.

Hugging Face layout (transformers ``DINOv3ViTModel``: ``save_pretrained`` files have ``layer.{i}.*``, the in-memory
state dict ``model.layer.{i}.*``):

* ``embeddings.cls_token|register_tokens|patch_embeddings.*`` -> ``cls_token|register_tokens|patch_embed.proj.*``;
  ``embeddings.mask_token`` (pretraining only) and ``rope_embeddings.*`` buffers are dropped;
* ``attention.q_proj|k_proj|v_proj`` -> ``attn.qkv`` (q, k, v concatenated; the K projection has no bias: zeros, as
  the model adds), ``attention.o_proj`` -> ``attn.proj``; ``layer_scale{1,2}.lambda1`` -> ``ls{1,2}.gamma``;
* ``mlp.up_proj|down_proj`` -> ``mlp.fc1|fc2`` (GELU MLP), ``mlp.gate_proj|up_proj|down_proj`` -> ``mlp.w1|w2|w3``
  (SwiGLU: down(silu(gate x) * up x)); ``norm`` stays. transformers recomputes the RoPE periods in float32
  (``rope_periods="recompute"`` reproduces it).

A state dict already in the native layout (``register_tokens``) is checked and returned as is.
"""

from __future__ import annotations

import re

import torch

from ..errors import WeightsError
from .vit import native_shapes
from .zoo import ModelSpec

# Official keys that are not inference parameters of the strided ViT.
_OFFICIAL_DROP = re.compile(r"^(mask_token|rope_embed\.periods|cls_norm\..*|local_cls_norm\..*|projectors\..*)$")
_TIMM_DROP = re.compile(r"^(head\..*|fc_norm\..*|rope\..*|norm_pre\..*)$")
_WRAPPERS = ("model", "state_dict", "module", "teacher")


def official_dinov3_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the official DINOv3 checkpoint layout for `spec` (what `torch.load` of the .pth holds).

    Useful to build deterministic official-layout checkpoints for tests; ``rope_embed.periods`` and
    ``blocks.{i}.attn.qkv.bias_mask`` must then be given real values (see `official_periods`, `official_bias_mask`).
    """
    out = {}
    for key, shape in native_shapes(spec).items():
        if key == "register_tokens":
            key = "storage_tokens"
        out[key] = shape
        if key.endswith("attn.qkv.bias"):
            out[key + "_mask"] = shape
    out["mask_token"] = (1, spec.embed_dim)
    out["rope_embed.periods"] = (spec.head_dim // 4,)
    return out


def official_periods(spec: ModelSpec) -> torch.Tensor:
    """The RoPE periods DINOv3 computes for `spec`: base ** (2 i / (head_dim / 2)), i < head_dim / 4 (float32)."""
    from .vit import recomputed_periods

    return recomputed_periods(spec.head_dim, spec.rope_base)


def checkpoint_periods(spec: ModelSpec, state_dict: dict) -> torch.Tensor | None:
    """The checkpoint's ``rope_embed.periods`` as a (head_dim // 4,) float32 CPU tensor (checked against `spec`),
    or None when the (DINOv3) checkpoint stores none (timm / Hugging Face layouts recompute them)."""
    periods = _unwrap(dict(state_dict)).get("rope_embed.periods")
    if periods is None:
        return None
    _check_periods(spec, periods)
    return periods.detach().to("cpu", torch.float32).flatten().clone()


def official_bias_mask(spec: ModelSpec) -> torch.Tensor:
    """The intended qkv bias mask of DINOv3's LinearKMaskedBias: 1 on Q and V, 0 on the K third."""
    d = spec.embed_dim
    mask = torch.ones(3 * d)
    mask[d : 2 * d] = 0
    return mask


def _unwrap(state_dict: dict) -> dict:
    for name in _WRAPPERS:
        inner = state_dict.get(name)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            state_dict = inner
    for prefix in ("module.", "backbone.", "model."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def detect_layout(state_dict: dict) -> str:
    """"official" | "timm" | "hf" | "native" for a DINOv3 state dict (after unwrapping), else raise WeightsError."""
    keys = set(state_dict)
    if any(k.startswith("embeddings.patch_embeddings.") for k in keys):
        return "hf"
    if "storage_tokens" in keys or "rope_embed.periods" in keys or any(k.endswith("qkv.bias_mask") for k in keys):
        return "official"
    if "reg_token" in keys or any(k.endswith(".gamma_1") or k.endswith("mlp.fc1_g.weight") for k in keys):
        return "timm"
    if "register_tokens" in keys:
        return "native"
    raise WeightsError(
        "the checkpoint is not a DINOv3 ViT: expected official keys (storage_tokens, rope_embed.periods, "
        "blocks.N.attn.qkv.bias_mask), timm keys (reg_token, blocks.N.gamma_1) or Hugging Face keys "
        f"(embeddings.patch_embeddings.weight, layer.N.attention.q_proj.weight); found e.g. {sorted(keys)[:6]}"
    )


def _check_periods(spec: ModelSpec, periods: torch.Tensor) -> None:
    expected = official_periods(spec)
    periods = periods.detach().to("cpu", torch.float32).flatten()
    if periods.shape != expected.shape:
        raise WeightsError(
            f"rope_embed.periods has {periods.numel()} entries but {spec.name} (head_dim {spec.head_dim}) needs "
            f"{expected.numel()}: the checkpoint is for another architecture; pick the matching model= name"
        )
    # The released checkpoints store periods rounded to bfloat16 (relative error <= 2**-8).
    if not torch.allclose(periods, expected, rtol=1e-2, atol=0.0):
        raise WeightsError(
            f"rope_embed.periods {periods.tolist()} do not match RoPE base {spec.rope_base} of {spec.name} "
            f"(expected {expected.tolist()}); this checkpoint uses another RoPE configuration"
        )


def _from_official(spec: ModelSpec, sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key == "rope_embed.periods":
            _check_periods(spec, value)
            continue
        if _OFFICIAL_DROP.match(key) or key.endswith("qkv.bias_mask"):
            continue
        if key == "storage_tokens":
            key = "register_tokens"
        elif key.endswith("attn.qkv.bias"):
            mask = sd.get(key + "_mask")
            if mask is not None:
                value = value * mask.to(value.dtype)
                if not torch.isfinite(value).all():
                    raise WeightsError(
                        f"{key} * {key}_mask is not finite: the checkpoint's bias_mask was never initialised "
                        "(the official model would output NaN too); re-export the checkpoint"
                    )
        out[key] = value
    return out


def _from_timm(spec: ModelSpec, sd: dict) -> dict:
    out = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if _TIMM_DROP.match(key):
            continue
        m = re.match(r"^(blocks\.\d+\.attn)\.(q_bias|v_bias|k_bias)$", key)
        if m:
            biases.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        if key == "reg_token":
            key = "register_tokens"
        key = re.sub(r"\.gamma_1$", ".ls1.gamma", key)
        key = re.sub(r"\.gamma_2$", ".ls2.gamma", key)
        key = key.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.")
        if spec.ffn == "swiglu_dinov3":
            key = key.replace("mlp.fc2.", "mlp.w3.")
        out[key] = value
    for attn, parts in biases.items():
        if "q_bias" not in parts or "v_bias" not in parts:
            raise WeightsError(f"{attn} has {sorted(parts)} but timm's DINOv3 layout needs both q_bias and v_bias")
        q, v = parts["q_bias"], parts["v_bias"]
        k = parts.get("k_bias", torch.zeros_like(q))
        out[f"{attn}.qkv.bias"] = torch.cat([q, k.to(q.dtype), v])
    return out


_HF_EMBED = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "register_tokens",
             "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.bias": "patch_embed.proj.bias"}
_HF_DROP = re.compile(r"^(embeddings\.mask_token|rope_embeddings\..*|pooler\..*|head\..*)$")
_HF_BLOCK_RE = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_MLP = {"mlp": {"up_proj": "fc1", "down_proj": "fc2"}, "swiglu_dinov3": {"gate_proj": "w1", "up_proj": "w2",
                                                                               "down_proj": "w3"}}


def _from_hf(spec: ModelSpec, sd: dict) -> dict:
    out = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    mlp = _HF_MLP.get(spec.ffn, {})
    for key, value in sd.items():
        if _HF_DROP.match(key):
            continue
        if key in _HF_EMBED:
            out[_HF_EMBED[key]] = value
            continue
        m = _HF_BLOCK_RE.match(key)
        if m is None:
            out[key] = value  # norm.* stays; anything else is reported as unexpected
            continue
        i, rest = int(m.group(1)), m.group(2)
        a = re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)
        f = re.match(r"^mlp\.(\w+)\.(weight|bias)$", rest)
        if a:
            qkv.setdefault(i, {})[a.group(1) + a.group(2)[0]] = value
        elif rest.startswith("attention.o_proj."):
            out[f"blocks.{i}.attn.proj.{rest.rsplit('.', 1)[1]}"] = value
        elif rest in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            out[f"blocks.{i}.ls{rest[11]}.gamma"] = value
        elif f and f.group(1) in mlp:
            out[f"blocks.{i}.mlp.{mlp[f.group(1)]}.{f.group(2)}"] = value
        else:
            out[f"blocks.{i}.{rest}"] = value
    for i, parts in qkv.items():
        if not all(f"{n}w" in parts for n in "qkv"):
            raise WeightsError(f"layer.{i}.attention has {sorted(parts)} but the Hugging Face DINOv3 layout needs "
                               "q_proj, k_proj and v_proj weights")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["qw"], parts["kw"], parts["vw"]])
        if any(f"{n}b" in parts for n in "qkv"):
            dim = parts["qw"].shape[0]
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([parts.get(f"{n}b", parts["qw"].new_zeros(dim))
                                                          for n in "qkv"])
    return out


def dinov3_to_native(spec: ModelSpec, state_dict: dict) -> dict[str, torch.Tensor]:
    """Return `state_dict` (official DINOv3 .pth, timm or Hugging Face DINOv3 layout) renamed to StridedViT's names.

    The result loads into `StridedViT(spec)` with ``strict=True``: every native key is present with the native
    shape. A qkv bias absent from the checkpoint (timm models without ``_qkvb``, official ``qkv_bias=False``) is
    filled with zeros, which is what those models add.

    Raises:
        WeightsError: the checkpoint is not a DINOv3 ViT, or it does not fit `spec` (names the offending keys).
    """
    if spec.family != "dinov3":
        raise WeightsError(f"dinov3_to_native got {spec.name} of family {spec.family!r}; it maps DINOv3 only")
    sd = _unwrap(dict(state_dict))
    layout = detect_layout(sd)
    if layout == "official":
        out = _from_official(spec, sd)
    elif layout == "timm":
        out = _from_timm(spec, sd)
    elif layout == "hf":
        out = _from_hf(spec, sd)
    else:
        out = dict(sd)

    expected = native_shapes(spec)
    ref_dtype = next((v.dtype for v in out.values() if torch.is_floating_point(v)), torch.float32)
    for key, shape in expected.items():
        if key.endswith("attn.qkv.bias") and key not in out and key.replace(".bias", ".weight") in out:
            out[key] = torch.zeros(shape, dtype=ref_dtype)
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    wrong = sorted(k for k in set(expected) & set(out) if tuple(out[k].shape) != expected[k])
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected {_few(unexpected)}")
        if wrong:
            problems.append("wrong shape " + _few([f"{k} {tuple(out[k].shape)} != {expected[k]}" for k in wrong]))
        raise WeightsError(
            f"the {layout} DINOv3 checkpoint does not fit {spec.name} (dim {spec.embed_dim}, depth {spec.depth}, "
            f"ffn {spec.ffn}): {'; '.join(problems)}. Check that model= names the checkpoint's architecture"
        )
    return {k: out[k] for k in expected}


def _few(items: list[str], n: int = 4) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


__all__ = [
    "checkpoint_periods",
    "detect_layout",
    "dinov3_to_native",
    "native_shapes",
    "official_bias_mask",
    "official_dinov3_shapes",
    "official_periods",
]
