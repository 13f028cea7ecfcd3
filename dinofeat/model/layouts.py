"""Map checkpoints of the supported layouts onto StridedViT's parameter names (the official DINO/DINOv2 layout).

`to_native(spec, obj)` accepts a state dict (or a training-checkpoint wrapper around one) in any of these layouts
and returns ``{name: float32 tensor}`` with exactly StridedViT's keys and shapes, or raises `WeightsError`:

* official DINO / DINOv2 ``*_pretrain.pth``: identity (DINOv2's ``mask_token`` is kept);
* DINO training checkpoints ``{"teacher"|"student": {"module.backbone.*": ...}, "args": Namespace, ...}`` and
  DINOv2 ones (``{"model": {"teacher.backbone.*": ...}}``, ``{"teacher": {"backbone.*": ...}}``, chunked blocks
  ``blocks.{chunk}.{i}.*``); the teacher is preferred when both are present, heads are dropped;
* ``{"state_dict" | "model" | "module" | "teacher" | ...: state_dict}`` wrappers;
* timm ``vit_*_patch*_224.dino``: identity (timm uses the official names);
* timm ``vit_*_patch14_dinov2.lvd142m``: no ``mask_token`` (filled with zeros: it is unused at inference); giant's
  packed SwiGLU ``mlp.fc1/fc2`` -> ``mlp.w12/w3`` (same packing and gate order, timm's ``SwiGLUPacked``);
* timm ``vit_*_patch14_reg4_dinov2.lvd142m``: ``reg_token`` -> ``register_tokens``; timm folds the CLS position
  into the CLS token (``cls_token = cls + pos_embed[:, 0]``) and drops that row (``no_embed_class``), so the native
  table gets a zero CLS row back. ``cls_token + 0`` is the same float32 value the official model adds, so the
  forward pass is bit-identical although the two tensors differ from the official file's;
* Hugging Face ``ViTModel`` (``facebook/dino-vit*``) and ``Dinov2Model`` / ``Dinov2WithRegistersModel``
  (``facebook/dinov2-*``) files as transformers saves them (``encoder.layer.{i}.attention.attention.query`` ...,
  giant ``mlp.weights_in/weights_out``), optionally under a ``vit.`` / ``dinov2.`` prefix, and the in-memory
  names of transformers 5 (``attention.q_proj`` ..., ``mlp.gate_proj/up_proj/down_proj``, ViT ``layers.{i}``);
  separate query/key/value projections are concatenated into the fused ``attn.qkv`` (q, k, v order);
* family ``dinov3``: delegated to ``dinofeat.model.dinov3.dinov3_to_native(spec, state_dict)``.

Known-unused keys (``head.*``, ``fc_norm.*``, ``pooler.*``, DINO/iBOT heads, anything outside the backbone prefix)
are dropped silently; anything else unexpected, missing or of the wrong shape raises an error that lists the keys
and names the zoo model the checkpoint looks like.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch

from ..errors import WeightsError, WeightsWarning
from .layout_names import describe_nearest
from .vit import native_shapes
from .zoo import MODELS, ModelSpec

# Wrapper keys that hold a (sub-)state dict, most specific first. "teacher" before "student": DINO evaluates the
# teacher (the EMA network) and its released weights are the teacher backbone.
_CONTAINER_KEYS = ("teacher", "state_dict", "model", "module", "model_ema", "ema", "student", "backbone", "net",
                   "network", "weights")
# Prefixes that wrap the whole network (DistributedDataParallel, torch.compile, Lightning).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Top-level keys of the backbone that never appear in StridedViT (dropped silently when it lacks them).
_UNUSED_PREFIXES = ("head.", "head_drop.", "fc_norm.", "pooler.", "norm_pre.", "classifier.", "dino_head.",
                    "ibot_head.", "attn_pool.")
_UNUSED_KEYS = ("mask_token",)  # only dropped when the model has none (DINOv2's is kept)




# ---------------------------------------------------------------------------------------------------------------
# Unwrapping
# ---------------------------------------------------------------------------------------------------------------
def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _flatten(obj, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict[str, torch.Tensor]:
    """All tensors of a nested mapping as {"a.b.c": tensor} (non-tensor leaves ignored)."""
    out = {} if out is None else out
    if depth > 6:
        return out
    for key, value in obj.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{prefix}{key}.", out, depth + 1)
    return out


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} dict from a state dict or a training checkpoint wrapping one."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"the checkpoint holds a {type(obj).__name__}, not a state dict (a mapping of parameter "
                           "names to tensors)")
    node = obj
    for _ in range(4):  # {"model": {"state_dict": ...}} and similar nestings
        if _is_tensor_dict(node):
            break
        for key in _CONTAINER_KEYS:
            if isinstance(node.get(key), Mapping) and _flatten(node[key]):
                node = node[key]
                break
        else:
            break
    flat = _flatten(node)
    if not flat:
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise WeightsError(f"the checkpoint contains no tensors (top-level keys: {keys or 'none'}); expected a state "
                           "dict or a training checkpoint with a 'teacher', 'student', 'model' or 'state_dict' entry")
    return flat


_CLS_SUFFIXES = ("embeddings.cls_token", "cls_token")


def _backbone_prefixes(keys) -> list[str]:
    prefixes = set()
    for key in keys:
        for suffix in _CLS_SUFFIXES:
            if key == suffix or key.endswith("." + suffix):
                prefixes.add(key[: len(key) - len(suffix)])
                break
    return sorted(prefixes, key=len)


def select_backbone(flat: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone's tensors with its prefix stripped (e.g. "module.backbone."), and that prefix."""
    prefixes = _backbone_prefixes(flat)
    if not prefixes:
        return dict(flat), ""
    if len(prefixes) > 1:
        teacher = [p for p in prefixes if "teacher" in p]
        chosen = teacher[0] if len(teacher) == 1 else None
        if chosen is None:
            # "backbone." inside a larger model: the shortest prefix that ends in a backbone-ish name
            named = [p for p in prefixes if re.search(r"(^|\.)(backbone|encoder|vit|dinov2|model)\.$", p)]
            chosen = named[0] if len(named) == 1 else None
        if chosen is None:
            raise WeightsError("the checkpoint holds several networks (prefixes " + ", ".join(
                repr(p) for p in prefixes) + "); extract the backbone's state dict and pass that")
    else:
        chosen = prefixes[0]
    sub = {k[len(chosen):]: v for k, v in flat.items() if k.startswith(chosen)}
    return sub, chosen


# ---------------------------------------------------------------------------------------------------------------
# Renaming to native names (layout-agnostic)
# ---------------------------------------------------------------------------------------------------------------
_HF_EMBED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Per-block suffixes (after "encoder.layer.{i}." or transformers-5 ViT "layers.{i}.") -> native suffix.
_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
# Parts that are concatenated along dim 0 into one native tensor: native suffix -> ordered source suffixes.
_HF_FUSED = {
    "attn.qkv": (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                 ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    "mlp.w12": (("mlp.gate_proj", "mlp.up_proj"),),
}
_HF_BLOCK_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_CHUNKED_RE = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")


def _is_hf(sd: Mapping[str, torch.Tensor]) -> bool:
    return "embeddings.cls_token" in sd or any(k.startswith("embeddings.patch_embeddings.") for k in sd)


def _rename_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}  # (block, native suffix, param) -> {src: t}
    fused_src = {src: native for native, groups in _HF_FUSED.items() for group in groups for src in group}
    for key, value in sd.items():
        if key in _HF_EMBED:
            out[_HF_EMBED[key]] = value
            continue
        m = _HF_BLOCK_RE.match(key)
        if m is None:
            out[key] = value  # reported as unexpected unless known-unused (pooler.*)
            continue
        i, mid, param = int(m.group(1)), m.group(2), m.group(3)
        if param == "lambda1":  # LayerScale: layer_scale{1,2}.lambda1 -> ls{1,2}.gamma
            if f"{mid}.lambda1" in _HF_BLOCK:
                out[f"blocks.{i}.{_HF_BLOCK[mid + '.lambda1']}"] = value
                continue
        elif mid in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[mid]}.{param}"] = value
            continue
        elif mid in fused_src:
            parts.setdefault((i, fused_src[mid], param), {})[mid] = value
            continue
        out[key] = value
    for (i, native, param), got in parts.items():
        for group in _HF_FUSED[native]:
            if all(src in got for src in group):
                out[f"blocks.{i}.{native}.{param}"] = torch.cat([got[src] for src in group], dim=0)
                break
        else:  # an incomplete set: keep the pieces under their own names so they are reported
            for src, value in got.items():
                out[f"blocks.{i}.{src}.{param}"] = value
    return out


def rename_to_native(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spec-independent renaming of any supported layout to native names (no shape fix-ups that need a spec)."""
    sd = dict(sd)
    for wrapper in _WRAPPER_PREFIXES:  # DDP "module.", torch.compile "_orig_mod."
        if sd and all(k.startswith(wrapper) for k in sd):
            sd = {k[len(wrapper):]: v for k, v in sd.items()}
    if _is_hf(sd):
        sd = _rename_hf(sd)
    out = {}
    for key, value in sd.items():
        m = _CHUNKED_RE.match(key)  # DINOv2 block_chunks > 0: blocks.{chunk}.{global index}.*
        if m is not None:
            key = f"blocks.{m.group(1)}.{m.group(2)}"
        out[key] = value
    if "reg_token" in out:  # timm
        out["register_tokens"] = out.pop("reg_token")
    # timm's packed SwiGLU (DINOv2 giant): fc1 (2H, D) + fc2 (D, H) -> w12 / w3. Plain MLPs have fc1 (H, D) with
    # fc2 (D, H); a packed one has fc1's rows == 2 * fc2's columns.
    for key in [k for k in out if k.endswith(".mlp.fc1.weight")]:
        base = key[: -len("fc1.weight")]
        fc2 = out.get(base + "fc2.weight")
        if fc2 is not None and out[key].ndim == 2 and fc2.ndim == 2 and out[key].shape[0] == 2 * fc2.shape[1]:
            for param in ("weight", "bias"):
                if base + f"fc1.{param}" in out:
                    out[base + f"w12.{param}"] = out.pop(base + f"fc1.{param}")
                if base + f"fc2.{param}" in out:
                    out[base + f"w3.{param}"] = out.pop(base + f"fc2.{param}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Fitting to a spec and validating
# ---------------------------------------------------------------------------------------------------------------
def _is_square(n: int) -> bool:
    g = int(round(n**0.5))
    return g * g == n


def _fit(spec: ModelSpec, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list, list, list]:
    """Spec-specific fix-ups, then (state dict, missing, unexpected, shape mismatches)."""
    shapes = native_shapes(spec)
    sd = dict(sd)
    pos = sd.get("pos_embed")
    if (pos is not None and "pos_embed" in shapes and pos.ndim == 3 and _is_square(pos.shape[1])
            and shapes["pos_embed"][1] == pos.shape[1] + 1):
        # timm no_embed_class (DINOv2 + registers): the CLS position is folded into cls_token -> zero row.
        sd["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
    if "mask_token" in shapes and "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(shapes["mask_token"])  # timm drops it; unused at inference
    for key in list(sd):
        if key not in shapes and (key.startswith(_UNUSED_PREFIXES) or key in _UNUSED_KEYS):
            del sd[key]
    missing = [k for k in shapes if k not in sd]
    unexpected = [k for k in sd if k not in shapes]
    mismatched = [(k, tuple(sd[k].shape), shapes[k]) for k in shapes if k in sd and tuple(sd[k].shape) != shapes[k]]
    return sd, missing, unexpected, mismatched


def _as_float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if not (value.is_floating_point() or value.is_complex()):
            raise WeightsError(f"parameter {key!r} has dtype {value.dtype}; expected floating-point weights")
        if value.is_complex():
            raise WeightsError(f"parameter {key!r} is complex ({value.dtype}); expected real weights")
        if value.device.type == "meta":
            raise WeightsError(f"parameter {key!r} is on the meta device (it holds no data)")
        out[key] = value.detach().to(device="cpu", dtype=torch.float32)
    return out


def describe_checkpoint(sd: Mapping[str, torch.Tensor]) -> str:
    """'embed dim 384, patch 8, 12 blocks, 4 register tokens' from a native-named state dict ('' if unknown)."""
    bits = []
    for key in ("cls_token", "patch_embed.proj.weight", "norm.weight"):
        if key in sd and sd[key].ndim >= 1:
            bits.append(f"embed dim {sd[key].shape[0] if key == 'patch_embed.proj.weight' else sd[key].shape[-1]}")
            break
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        bits.append(f"patch {w.shape[-1]}")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        bits.append(f"{max(blocks) + 1} blocks")
    reg = sd.get("register_tokens", sd.get("storage_tokens"))
    if reg is not None and reg.ndim == 3:
        bits.append(f"{reg.shape[1]} register tokens")
    return ", ".join(bits)


def guess_models(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Zoo models (DINO / DINOv2) this native-named state dict maps onto exactly."""
    out = []
    for name, spec in MODELS.items():
        if spec.family == "dinov3":
            continue
        _, missing, unexpected, mismatched = _fit(spec, dict(sd))
        if not (missing or unexpected or mismatched):
            out.append(name)
    return out


def _guess_dinov3(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Rough DINOv3 match by embed dim and depth (its own layout is mapped by .dinov3)."""
    desc = describe_checkpoint(rename_to_native(sd))
    m_dim = re.search(r"embed dim (\d+)", desc)
    m_depth = re.search(r"(\d+) blocks", desc)
    return [name for name, spec in MODELS.items() if spec.family == "dinov3" and m_dim and m_depth
            and spec.embed_dim == int(m_dim.group(1)) and spec.depth == int(m_depth.group(1))]


def _looks_like_dinov3(sd: Mapping[str, torch.Tensor]) -> bool:
    return any("storage_tokens" in k or "rope_embed" in k or k.endswith("attn.qkv.bias_mask") for k in sd)


def _list(items: list, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def mismatch_error(spec: ModelSpec, missing, unexpected, mismatched, *, source: str | None,
                   looks_like: list[str], description: str, nearest: str = "") -> WeightsError:
    where = f" in {source}" if source else ""
    lines = [f"the weights{where} do not fit model={spec.name!r}: {len(missing)} missing, {len(unexpected)} "
             f"unexpected and {len(mismatched)} shape-mismatched parameters."]
    if missing:
        lines.append(f"  missing ({len(missing)}): {_list(missing)}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {_list(unexpected)}")
    if mismatched:
        rows = [f"{k} (checkpoint {tuple(got)}, model {tuple(want)})" for k, got, want in mismatched]
        lines.append(f"  shape mismatch ({len(mismatched)}): {_list(rows)}")
    info = f" ({description})" if description else ""
    others = [name for name in looks_like if name != spec.name]
    if others:
        choice = " or ".join(f"model={n!r}" for n in others)
        lines.append(f"This looks like a {others[0]} checkpoint{info}; pass {choice}.")
    elif description:
        lines.append(f"The checkpoint has {description}, while {spec.name} has embed dim {spec.embed_dim}, patch "
                     f"{spec.patch_size}, {spec.depth} blocks, {spec.num_register_tokens} register tokens; no zoo "
                     "model matches it exactly. Pass the matching model= or an unmodified official, timm or "
                     "Hugging Face checkpoint.")
    if nearest:
        lines.append(nearest)
    return WeightsError("\n".join(lines))


def validate_native(spec: ModelSpec, sd: Mapping[str, torch.Tensor], *, source: str | None = None,
                    original: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Check keys and shapes against StridedViT(spec); return a float32 copy, or raise a WeightsError."""
    fitted, missing, unexpected, mismatched = _fit(spec, dict(sd))
    if missing or unexpected or mismatched:
        looks = guess_models(sd)
        if not looks and original is not None and _looks_like_dinov3(original):
            looks = _guess_dinov3(original)
        nearest = describe_nearest(spec, original) if original is not None and not looks else ""
        raise mismatch_error(spec, missing, unexpected, mismatched, source=source, looks_like=looks,
                             description=describe_checkpoint(sd), nearest=nearest)
    shapes = native_shapes(spec)
    return _as_float32({k: fitted[k] for k in shapes})


def rope_periods_of(spec: ModelSpec, state_dict) -> torch.Tensor | None:
    """The checkpoint's stored RoPE periods ((head_dim // 4,) float32, checked against `spec`) when `spec` is a
    RoPE model and the checkpoint (official DINOv3 layout) carries ``rope_embed.periods``; else None."""
    if spec.pos != "rope":
        return None
    from .dinov3 import checkpoint_periods

    backbone, _ = select_backbone(unwrap_checkpoint(state_dict))
    return checkpoint_periods(spec, backbone)


def to_native(spec: ModelSpec, state_dict, *, source: str | None = None) -> dict[str, torch.Tensor]:
    """Detect the layout of `state_dict` (or a checkpoint wrapping one) and map it onto StridedViT(spec).

    Returns a new {key: float32 CPU tensor} dict with exactly StridedViT(spec).state_dict()'s keys and shapes.
    Tensors that need no conversion may share memory with the input. `source` names the file in messages.
    """
    flat = unwrap_checkpoint(state_dict)
    backbone, prefix = select_backbone(flat)
    outside = [k for k in flat if not k.startswith(prefix)]
    if spec.family == "dinov3":
        try:
            from .dinov3 import dinov3_to_native
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{__package__}.dinov3", "dinov3"):
                raise
            looks = guess_models(rename_to_native(backbone))
            hint = f" (this checkpoint looks like {looks[0]}; pass model={looks[0]!r})" if looks else ""
            raise WeightsError(f"loading DINOv3 weights for model={spec.name!r} needs dinofeat/model/dinov3.py "
                               f"(dinov3_to_native), which is not part of this installation{hint}") from None
        try:
            mapped = dinov3_to_native(spec, backbone)
        except WeightsError as exc:
            nearest = describe_nearest(spec, backbone)
            raise WeightsError(f"{exc}\n{nearest}" if nearest else str(exc)) from None
        out = validate_native(spec, mapped, source=source, original=backbone)
        _report_ignored(source, prefix, outside, [])
        return out
    mapped = rename_to_native(backbone)
    out = validate_native(spec, mapped, source=source, original=backbone)
    shapes = native_shapes(spec)
    dropped = [prefix + k for k in mapped if k not in shapes]  # known-unused parts (pooler, heads)
    filled = [k for k in shapes if k not in mapped]  # only mask_token gets here (validate_native checked the rest)
    _report_ignored(source, prefix, outside + dropped, filled)
    return out


def _report_ignored(source: str | None, prefix: str, ignored: list[str], filled: list[str]) -> None:
    """One `WeightsWarning` naming the tensors that were ignored and the unused ones that were filled in."""
    if not ignored and not filled:
        return
    where = f" in {source}" if source else ""
    parts = []
    if ignored:
        under = f" (the backbone is the part under {prefix!r})" if prefix else ""
        parts.append(f"ignored {len(ignored)} tensor(s) that are not part of the backbone{under}: {_list(ignored, 6)}")
    if filled:
        parts.append(f"missing {', '.join(filled)} (unused at inference): filled with zeros")
    warnings.warn(f"weights{where}: " + "; ".join(parts), WeightsWarning, stacklevel=4)
