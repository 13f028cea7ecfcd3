"""`pos_interp`: the position-table resampling conventions (Meta's +0.1 offset, transformers' size, DINOv2 _reg's
antialias), chosen per Extractor / export / CLI; the zoo default and the export cache keys of defaults unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError
from dinofeat.export.onnx import graph_spec
from dinofeat.model.vit import POS_INTERP, Request, StridedViT, resample_position_table, with_pos_interp
from dinofeat.model.zoo import get_model_spec
from dinofeat.testing import deterministic_weights

SPEC = get_model_spec("dinov2_vits14")


def _table():
    return deterministic_weights("dinov2_vits14")["pos_embed"]


def test_size_is_transformers_formula_and_differs_from_offset():
    table = _table()
    size = resample_position_table(with_pos_interp(SPEC, "size"), table, 224, 308, 14)
    grid = table[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    # transformers' Dinov2Embeddings.interpolate_pos_encoding: bicubic to (H // p, W // p), no antialias
    expected = F.interpolate(grid, size=(16, 22), mode="bicubic", align_corners=False)
    assert torch.equal(size[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16 * 22, -1))
    assert torch.equal(size[:, :1], table[:, :1])
    offset = resample_position_table(SPEC, table, 224, 308, 14)
    anti = resample_position_table(with_pos_interp(SPEC, "antialias"), table, 224, 308, 14)
    assert not torch.allclose(size, offset, atol=1e-4) and not torch.allclose(size, anti, atol=1e-4)
    for interp in POS_INTERP:  # the 37 x 37 table at 518 x 518: no resampling under any convention
        same = resample_position_table(with_pos_interp(SPEC, interp), table, 518, 518, 14)
        assert torch.equal(same, table)


def test_with_pos_interp_checks():
    assert with_pos_interp(SPEC, None) is SPEC and SPEC.pos_interp == "offset"  # the zoo default is unchanged
    assert with_pos_interp(SPEC, "size").pos_interp == "size" and with_pos_interp(SPEC, "size").name == SPEC.name
    with pytest.raises(InputError, match="pos_interp='bicubic' is unknown; choose one of offset, size, antialias"):
        with_pos_interp(SPEC, "bicubic")
    with pytest.raises(InputError, match="dinov3_vits16 uses rope positions"):
        with_pos_interp(get_model_spec("dinov3_vits16"), "size")


def test_export_cache_key_names_a_non_default_convention():
    request = Request(facets=((11, "key"),))
    default = graph_spec(StridedViT(SPEC, 14), request, 224, 308)
    size = graph_spec(StridedViT(with_pos_interp(SPEC, "size"), 14), request, 224, 308)
    assert "pos_interp" not in default.cache_fields("plain")  # existing cache entries keep their keys
    assert size.cache_fields("plain")["pos_interp"] == "size"
    assert size.metadata()["dinofeat.pos_interp"] == "size"
    assert default != size


def test_extractor_and_cli_option(vits8_weights_file):
    import dinofeat
    from dinofeat.cli import build_parser

    ex = dinofeat.Extractor(model="dino_vits8", stride=8, weights=str(vits8_weights_file), backend="torch",
                            device="cpu", pos_interp="size", progress=False)
    assert ex.pos_interp == "size" and ex.backend.model.spec.pos_interp == "size"
    args = build_parser().parse_args(["extract", "a.png", "-o", "out", "--pos-interp", "size"])
    assert args.pos_interp == "size"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "a.png", "-o", "out", "--pos-interp", "bicubic"])


def test_derived_extractor_keeps_the_convention(vits8_weights_file):
    import dinofeat
    from dinofeat.apps.common import derived_extractor

    ex = dinofeat.Extractor(model="dino_vits8", stride=4, weights=str(vits8_weights_file), backend="torch",
                            device="cpu", pos_interp="size", progress=False)
    assert derived_extractor(ex, 8).pos_interp == "size"
