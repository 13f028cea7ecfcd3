"""DINOv3 RoPE periods: the checkpoint's stored values by default, recomputed float32 ones on request (issue 14).

The checkpoint is written by the test in the official layout with ``rope_embed.periods`` rounded to bfloat16, as
the released files store them. The RoPE tables are checked against an independent few-line transcription of
Meta's ``RopePositionEmbedding`` (stride = patch, ``normalize_coords="separate"``, ``rotate_half`` layout).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import dinofeat
from dinofeat.errors import InputError
from dinofeat.model.dinov3 import official_bias_mask, official_dinov3_shapes, official_periods
from dinofeat.model.vit import Request, build_vit
from dinofeat.model.weights import load_weights
from dinofeat.model.zoo import get_model_spec
from dinofeat.testing import deterministic_state_dict

SPEC = get_model_spec("dinov3_vits16")
BF16 = official_periods(SPEC).to(torch.bfloat16).float()


def _checkpoint(spec, peaked: bool = False) -> dict[str, torch.Tensor]:
    sd = deterministic_state_dict(official_dinov3_shapes(spec), 0)
    sd["rope_embed.periods"] = official_periods(spec).to(torch.bfloat16).float()
    for key in list(sd):
        if key.endswith("attn.qkv.bias_mask"):
            sd[key] = official_bias_mask(spec)
        elif key.endswith("attn.qkv.weight") and peaked:
            sd[key] = sd[key] * 4  # peaked attention, so that positions move the outputs visibly
    return sd


def _meta_rope(periods: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's RopePositionEmbedding.forward (dinov3/layers/rope_position_encoding.py), float32, no augmentation."""
    coords_h = torch.arange(0.5, rows, dtype=torch.float32) / rows
    coords_w = torch.arange(0.5, cols, dtype=torch.float32) / cols
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_vits16_bf16_periods.pth"
    torch.save(_checkpoint(SPEC), path)
    return path


def test_default_follows_the_checkpoint(checkpoint_file):
    """Extractor's default uses exactly the stored (bf16-rounded) periods; "recompute" uses float32 ones; the tables
    differ by exactly the rotation the period change implies."""
    assert not torch.equal(BF16, official_periods(SPEC))
    ex = dinofeat.Extractor("dinov3_vits16", stride=16, weights=str(checkpoint_file), backend="torch",
                            device="cpu", progress=False)
    assert ex.rope_periods == "checkpoint"
    assert torch.equal(ex.backend.model.rope_periods, BF16)
    rows, cols = 14, 20
    sin, cos = ex.backend.model.rope_embedding(16 * rows, 16 * cols)
    ref_sin, ref_cos = _meta_rope(BF16, rows, cols)
    assert torch.equal(sin, ref_sin) and torch.equal(cos, ref_cos)

    loaded = load_weights(SPEC, str(checkpoint_file))
    recomputed = build_vit(SPEC, 16, loaded, "recompute")
    assert recomputed.rope_periods is None
    sin2, cos2 = recomputed.rope_embedding(16 * rows, 16 * cols)
    fp_sin, fp_cos = _meta_rope(official_periods(SPEC), rows, cols)
    assert torch.equal(sin2, fp_sin) and torch.equal(cos2, fp_cos)
    # Each (sin, cos) pair turns by the angle difference 2 pi c (1/p_bf16 - 1/p_fp32): |moved| = 2 |sin(d / 2)|.
    rel = ((BF16 - official_periods(SPEC)).abs() / official_periods(SPEC)).max()
    assert 0 < rel <= 2**-9  # bf16 rounding (8 significant bits); here 1.9e-3
    c = torch.cat([2 * (torch.arange(0.5, n, dtype=torch.float64) / n) - 1 for n in (rows, cols)])
    d_angle = float((2 * math.pi * c[:, None] * (1 / BF16.double() - 1 / official_periods(SPEC).double())).abs().max())
    moved = float(torch.hypot(sin - sin2, cos - cos2).max())
    assert 5e-3 < d_angle < 1e-2
    assert abs(moved - 2 * math.sin(d_angle / 2)) < 1e-5, (moved, d_angle)


def test_option_is_checked_and_timm_layout_recomputes():
    spec = replace(SPEC, depth=1)
    sd = _checkpoint(spec)
    loaded = load_weights(spec, sd)
    with pytest.raises(InputError, match=r"rope_periods='stored'.*checkpoint, recompute"):
        build_vit(spec, 16, loaded, "stored")
    assert load_weights(spec, {k: v for k, v in sd.items() if k != "rope_embed.periods"}).rope_periods is None


def test_export_cache_keys_tell_the_choices_apart():
    """The same weights file gives two graphs (checkpoint / recomputed periods): two cache keys. That the graph bakes
    the model's own tables is `test_onnx_export.py::test_other_families_export_and_match`."""
    from dinofeat.export.onnx import graph_spec

    spec = replace(SPEC, depth=1)
    loaded = load_weights(spec, _checkpoint(spec))
    request = Request(facets=((0, "key"),), saliency=True)
    fields = [graph_spec(build_vit(spec, 8, loaded, mode), request, 64, 80, weights_id=loaded.sha256)
              .cache_fields("plain") for mode in ("checkpoint", "recompute")]
    assert fields[0]["rope_periods"] == ",".join(repr(v) for v in BF16.tolist())
    assert "rope_periods" not in fields[1] and fields[0]["weights"] == fields[1]["weights"]
