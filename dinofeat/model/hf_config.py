"""A Hugging Face snapshot folder's ``config.json``, read and checked against the zoo row it is loaded as.

`--weights DIR` / ``weights=DIR`` with ``DIR/config.json`` + ``DIR/model.safetensors`` (what ``save_pretrained``
writes, or a Hub snapshot) reads the config before the tensors: its patch size, register tokens, layer scale,
image size (the learned position table's grid), width, depth, heads and FFN must be those of `spec`, else one
`WeightsError` names the differing fields and the zoo model the config describes. Task models (a classifier or a
depth head around the backbone, e.g. ``Dinov2ForImageClassification``, DPT's ``backbone_config``) are read through
their backbone's config.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import WeightsError
from .zoo import MODELS, ModelSpec

# model_type -> zoo family
_FAMILY = {"vit": "dino", "dinov2": "dinov2", "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3"}


def read_config(folder) -> dict | None:
    """The backbone's config in ``folder/config.json`` (a task model's ``backbone_config`` when it has one), or
    None when the folder has no config.json."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not a readable JSON config ({exc}); restore it from the snapshot") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} holds a {type(config).__name__}, not a JSON object")
    if config.get("model_type") not in _FAMILY and isinstance(config.get("backbone_config"), dict):
        config = config["backbone_config"]
    return config


def config_fields(config: dict) -> dict[str, object]:
    """What the config says about the backbone, in zoo terms (only the fields it has)."""
    kind = config.get("model_type")
    family = _FAMILY.get(kind)
    if family is None:
        raise WeightsError(f"config.json has model_type={kind!r}; dinofeat loads {', '.join(sorted(_FAMILY))} "
                           "(DINO ViTModel, Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel) snapshots")
    out: dict[str, object] = {"family": family}
    for ours, theirs in (("patch_size", "patch_size"), ("embed_dim", "hidden_size"), ("depth", "num_hidden_layers"),
                         ("num_heads", "num_attention_heads")):
        if theirs in config:
            out[ours] = config[theirs]
    regs_default = 4 if kind == "dinov2_with_registers" else 0
    out["num_register_tokens"] = int(config.get("num_register_tokens", regs_default))
    out["layerscale"] = family != "dino"  # Dinov2 / DINOv3 always have it, ViTModel never
    if family == "dinov3":
        out["ffn"] = "swiglu_dinov3" if config.get("use_gated_mlp") else "mlp"
        if "rope_theta" in config:
            out["rope_base"] = float(config["rope_theta"])
    else:
        out["ffn"] = "swiglu" if config.get("use_swiglu_ffn") else "mlp"
        if "image_size" in config and "patch_size" in config:
            size = config["image_size"]
            size = size[0] if isinstance(size, (list, tuple)) else size
            out["pos_grid"] = int(size) // int(config["patch_size"])
    return out


def _differences(spec: ModelSpec, fields: dict) -> list[str]:
    return [f"{k} {v!r} (the model has {getattr(spec, k)!r})" for k, v in fields.items() if getattr(spec, k) != v]


def check_config(spec: ModelSpec, folder) -> dict | None:
    """Check ``folder/config.json`` against `spec`; return its fields (None without a config).

    Raises:
        WeightsError: the config describes another architecture (names the fields and the matching zoo model).
    """
    config = read_config(folder)
    if config is None:
        return None
    fields = config_fields(config)
    diff = _differences(spec, fields)
    if diff:
        matches = [name for name, row in MODELS.items() if not _differences(row, fields)]
        hint = (f"; it describes {matches[0]}: pass model={matches[0]!r} (CLI: --model {matches[0]})"
                if matches else "; no zoo model has this architecture")
        raise WeightsError(f"the snapshot {str(folder)!r} does not fit model={spec.name!r}: its config.json has "
                           + ", ".join(diff) + hint)
    return fields
