"""The parameter names of every checkpoint layout dinofeat loads, and the nearest one to an unknown checkpoint.

`layout_keys(spec)` lists, per known layout, the backbone's key names that layout uses for `spec` (derived from
StridedViT's native names); `nearest_layout(spec, keys)` picks the layout whose names agree most with a
checkpoint's (block indices ignored, so a checkpoint of another depth still finds its layout) and the first keys
that differ, for the one error an unloadable checkpoint gets (docs/checkpoints.md).
"""

from __future__ import annotations

import re

from .vit import native_shapes
from .zoo import ModelSpec

_IDX = re.compile(r"(?<=\.)\d+(?=\.)")


def _hf_block(rest: str, v5: bool, dinov3: bool) -> list[str]:
    """Hugging Face names of one native block suffix (after ``blocks.{i}.``)."""
    name, _, param = rest.rpartition(".")
    if name == "attn.qkv":
        if v5 or dinov3:
            return [f"attention.{n}_proj.{param}" for n in "qkv" if not (dinov3 and n == "k" and param == "bias")]
        return [f"attention.attention.{n}.{param}" for n in ("query", "key", "value")]
    ffn = {"mlp.fc1": "mlp.up_proj", "mlp.fc2": "mlp.down_proj", "mlp.w1": "mlp.gate_proj", "mlp.w2": "mlp.up_proj",
           "mlp.w3": "mlp.down_proj"} if dinov3 else {"mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.weights_out"}
    table = {"attn.proj": "attention.o_proj" if (v5 or dinov3) else "attention.output.dense",
             "ls1": "layer_scale1", "ls2": "layer_scale2", **ffn}
    if name in ("ls1", "ls2"):
        return [f"{table[name]}.lambda1"]
    return [f"{table.get(name, name)}.{param}"]


_VIT = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "mlp.fc1.": "intermediate.dense.",
        "mlp.fc2.": "output.dense."}


def _hf(spec: ModelSpec, native: list[str], v5: bool) -> list[str]:
    dinov3 = spec.family == "dinov3"
    if spec.family == "dino":  # ViTModel (transformers 4 names)
        native = [next((k.replace(a, b) for a, b in _VIT.items() if a in k), k) for k in native]
    block_prefix = ("model.layer" if v5 else "layer") if dinov3 else "encoder.layer"
    embed = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
             "register_tokens": "embeddings.register_tokens", "mask_token": "embeddings.mask_token",
             "patch_embed.proj.weight": "embeddings.patch_embeddings" + ("" if dinov3 else ".projection") + ".weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings" + ("" if dinov3 else ".projection") + ".bias",
             "norm.weight": "norm.weight" if dinov3 else "layernorm.weight",
             "norm.bias": "norm.bias" if dinov3 else "layernorm.bias"}
    out = ["embeddings.mask_token"] if dinov3 or spec.family == "dinov2" else []
    for key in native:
        m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if m:
            out += [f"{block_prefix}.{m.group(1)}.{n}" for n in _hf_block(m.group(2), v5, dinov3)]
        elif key in embed and key != "mask_token":
            out.append(embed[key])
    return out


def layout_keys(spec: ModelSpec) -> dict[str, list[str]]:
    """{layout name: the backbone key names a checkpoint of `spec` has in that layout}."""
    native = list(native_shapes(spec))
    plain = [k for k in native if k != "mask_token"]
    if spec.family == "dinov3":
        official = [k.replace("register_tokens", "storage_tokens") for k in native]
        official += [k + "_mask" for k in native if k.endswith("attn.qkv.bias")] + ["mask_token", "rope_embed.periods"]
        timm = [re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k.replace("register_tokens", "reg_token"))
                for k in native]
        timm = [k.replace("mlp.w1.", "mlp.fc1_g.").replace("mlp.w2.", "mlp.fc1_x.").replace("mlp.w3.", "mlp.fc2.")
                for k in timm]
        return {"Meta's DINOv3 .pth": official, "timm DINOv3": timm,
                "Hugging Face DINOv3ViTModel (save_pretrained)": _hf(spec, native, v5=False),
                "Hugging Face DINOv3ViTModel (transformers 5 state_dict)": _hf(spec, native, v5=True)}
    timm = [k.replace("register_tokens", "reg_token") for k in plain]
    if spec.ffn == "swiglu":
        timm = [k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.") for k in timm]
    if spec.family == "dino":
        return {"Meta's hub .pth": native, "timm": timm,
                "Hugging Face ViTModel (transformers 4 / save_pretrained)": _hf(spec, native, v5=False)}
    return {"Meta's hub .pth": native, "timm": timm,
            "Hugging Face Dinov2Model (transformers 4 / save_pretrained)": _hf(spec, native, v5=False),
            "Hugging Face Dinov2Model (transformers 5 state_dict)": _hf(spec, native, v5=True)}


def _pattern(key: str) -> str:
    return _IDX.sub("N", key)


def nearest_layout(spec: ModelSpec, keys) -> tuple[str, int, int, list[str], list[str]]:
    """(layout name, patterns in common, patterns of that layout, checkpoint keys it lacks, its keys the checkpoint
    lacks): the known layout of `spec` closest to the key names `keys` (block indices ignored; first 3 each)."""
    keys = list(keys)
    got = {_pattern(k) for k in keys}
    best = None
    for name, names in layout_keys(spec).items():
        want = {_pattern(k) for k in names}
        score = len(got & want) / max(1, len(got | want))
        if best is None or score > best[0]:
            best = (score, name, names, want)
    _, name, names, want = best
    extra = [k for k in keys if _pattern(k) not in want]
    absent, seen = [], set()
    for k in names:
        p = _pattern(k)
        if p not in got and p not in seen:
            seen.add(p)
            absent.append(k)
    return name, len(got & want), len(want), extra[:3], absent[:3]


def describe_nearest(spec: ModelSpec, keys) -> str:
    """One sentence naming the nearest known layout and the first keys that differ from it ("" when the names are
    exactly that layout's, block indices aside: the checkpoint's problem is then its depth or shapes)."""
    name, common, total, extra, absent = nearest_layout(spec, keys)
    if not extra and not absent:
        return ""
    parts = [f"The nearest known layout is {name} ({common} of its {total} names agree, block indices aside)"]
    if extra:
        parts.append("the checkpoint has " + ", ".join(repr(k) for k in extra))
    if absent:
        parts.append("where that layout has " + ", ".join(repr(k) for k in absent))
    return "; ".join(parts) + ". See docs/checkpoints.md for the layouts dinofeat loads."
