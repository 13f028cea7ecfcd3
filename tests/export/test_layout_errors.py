"""Cheap checks of the checkpoint-layout messages (deterministic weights, no transformers): the `WeightsWarning`
naming ignored / zero-filled tensors, the nearest known layout of an unknown one, a snapshot's config.json."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dinofeat.errors import WeightsError, WeightsWarning
from dinofeat.model.weights import load_weights
from dinofeat.testing import deterministic_weights

MODEL = "dinov2_vits14"


@pytest.fixture(scope="module")
def meta():
    return deterministic_weights(MODEL)


def _load(weights, model=MODEL):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = load_weights(model, weights).state_dict
    return state, [str(w.message) for w in caught if issubclass(w.category, WeightsWarning)]


def test_warnings_name_ignored_and_filled_tensors(meta):
    state, messages = _load(dict(meta))
    assert not messages and torch.equal(state["mask_token"], meta["mask_token"])
    state, messages = _load({k: v for k, v in meta.items() if k != "mask_token"})
    assert messages == ["weights in <state_dict>: missing mask_token (unused at inference): filled with zeros"]
    assert not state["mask_token"].any()
    task = {f"dinov2.{k}": v for k, v in meta.items()} | {"classifier.weight": torch.zeros(3, 768),
                                                         "classifier.bias": torch.zeros(3)}
    state, messages = _load(task)
    assert len(messages) == 1 and "under 'dinov2.'" in messages[0]
    assert "classifier.weight" in messages[0] and "classifier.bias" in messages[0]
    assert all(torch.equal(state[k], meta[k]) for k in meta)


def test_unknown_layout_names_the_nearest_known_one(meta):
    renamed = {k.replace(".mlp.fc1.", ".mlp.dense_in."): v for k, v in meta.items()}
    with pytest.raises(WeightsError) as err:
        load_weights(MODEL, renamed)
    text = str(err.value)
    assert "The nearest known layout is Meta's hub .pth" in text
    assert "'blocks.0.mlp.dense_in.bias'" in text and "'blocks.0.mlp.fc1.weight'" in text
    hf3 = {"embeddings.cls_token": torch.zeros(1, 1, 384), "embeddings.patch_embeddings.weight": torch.zeros(384, 3, 16, 16),
           "layer.0.attention.query.weight": torch.zeros(384, 384)}
    with pytest.raises(WeightsError, match=r"nearest known layout is Hugging Face DINOv3ViTModel \(save_pretrained"):
        load_weights("dinov3_vits16", hf3)


def _config(**over):
    base = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
            "patch_size": 14, "image_size": 518, "use_swiglu_ffn": False}
    return {k: v for k, v in (base | over).items() if v is not None}


def test_snapshot_config_is_checked(meta, tmp_path):
    from safetensors.torch import save_file

    save_file(meta, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    state, _ = _load(tmp_path)
    assert all(torch.equal(state[k], meta[k]) for k in meta)
    cases = [(_config(image_size=224), r"pos_grid 16 \(the model has 37\); no zoo model"),
             (_config(model_type="dinov2_with_registers"), r"num_register_tokens 4 .*describes dinov2_vits14_reg"),
             (_config(patch_size=16, model_type="vit", image_size=224), r"family 'dino' .*describes dino_vits16"),
             (_config(model_type="bert"), r"model_type='bert'"),
             ({"backbone_config": _config(hidden_size=768, num_attention_heads=12), "model_type": "dpt"},
              r"describes dinov2_vitb14")]
    for config, match in cases:
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(WeightsError, match=match):
            load_weights(MODEL, tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not a readable JSON config"):
        load_weights(MODEL, tmp_path)
