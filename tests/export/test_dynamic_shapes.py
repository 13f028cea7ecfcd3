"""Dynamic H, W graphs: in-graph position tables / RoPE equal the torch path's at any size (issue 25, slice 1).

The interpolation matrices are checked eagerly against `resample_position_table` / `rope_sincos` at many sizes
(cheap); one dynamic export per family (DINO +0.1 bicubic, DINOv2 _reg antialiased table with registers, DINOv3
RoPE) on a 2-block model is run on ONNX Runtime at 7 sizes against `forward_features`. The full 12-block ViT-S/8
dynamic CLI export is an integration test.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from testutil import rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dinofeat.export.dynamic import (  # noqa: E402
    antialias_matrix,
    dynamic_position_table,
    dynamic_rope,
    offset_matrix,
    size_matrix,
)
from dinofeat.export.onnx import check_graph, get_onnx, graph_spec, tensorrt_unsupported_ops  # noqa: E402
from dinofeat.model.posembed import grid_size  # noqa: E402
from dinofeat.model.vit import (  # noqa: E402
    Request,
    StridedViT,
    recomputed_periods,
    resample_position_table,
    rope_sincos,
    with_pos_interp,
)
from dinofeat.model.zoo import get_model_spec  # noqa: E402
from dinofeat.testing import deterministic_state_dict  # noqa: E402

REQ = Request(facets=((0, "key"), (1, "token")), saliency=True, cls=True)  # every kind of output, CLS rows too
# non-square, odd patch counts, the native grid (the models' early exit: 116 px = 28 windows of the 28x28 DINO
# table at stride 4, 266 px = 37 of DINOv2's 37x37 at stride 7), one patch, not patch multiples, the largest
# ~2-4k tokens (the 12-block CLI test goes to 448x336)
SIZES = {8: [(120, 180), (64, 96), (37, 101), (8, 8), (116, 116), (250, 70), (300, 212)],
         14: [(120, 180), (266, 266), (37, 101), (14, 14), (224, 224), (250, 70), (300, 412)],
         16: [(120, 180), (64, 96), (37, 101), (16, 16), (224, 224), (250, 70), (400, 312)]}


def _tiny(name: str, stride: int) -> StridedViT:
    m = StridedViT(replace(get_model_spec(name), depth=2), stride)
    m.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in m.state_dict().items()}))
    return m.eval()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dyn_cache")


@pytest.fixture(scope="module", params=[("dino_vits8", 4), ("dinov2_vits14_reg", 7), ("dinov3_vits16", 8)],
                ids=["dino", "dinov2reg", "dinov3"])
def exported(request, cache_root):
    name, stride = request.param
    vit = _tiny(name, stride)
    path = get_onnx(vit, REQ, 64, 96, cache_dir=cache_root, dynamic=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return vit, path, session


# ------------------------------------------------------------------------------------------------- eager kernels
@pytest.mark.parametrize("name, stride, interp", [("dino_vits8", 4, None), ("dinov2_vits14", 7, None),
                                                  ("dinov2_vits14_reg", 7, None), ("dinov2_vits14_reg", 14, None),
                                                  ("dinov2_vits14", 14, "size"), ("dinov2_vits14", 7, "size")])
def test_position_matrices_equal_the_torch_resampling(name, stride, interp):
    spec = with_pos_interp(get_model_spec(name), interp)
    g = spec.pos_grid
    table = torch.randn(1, 1 + g * g, 32, generator=torch.Generator().manual_seed(0))
    p = spec.patch_size
    for h, w in [(224, 224), (120, 180), (518, 518), (p, p), (p + 3, 5 * p), (300, 41), (600, 900), (224, 230)]:
        rows, cols = grid_size(h, w, p, stride)
        ref = resample_position_table(spec, table, h, w, stride)[0, 1:]
        got = dynamic_position_table(table[0, 1:].reshape(g, g, -1), rows, cols, h, w, spec.pos_interp)
        assert got.shape == ref.shape and rel_err(got, ref) < 2e-5, (h, w)


def test_matrices_are_interpolation_weights():
    """Rows sum to 1 (both kernels reproduce constants); antialias downsampling spreads over > 4 taps."""
    for n, g in [(5, 37), (37, 37), (80, 28), (1, 28)]:
        for m in (offset_matrix(n, g), size_matrix(n, g), antialias_matrix(n, g)):
            assert m.shape == (n, g) and torch.allclose(m.sum(dim=1), torch.ones(n), atol=1e-5)
    assert int((antialias_matrix(5, 37)[2] != 0).sum()) > 4 and int((offset_matrix(5, 37)[2] != 0).sum()) <= 4


def test_rope_tables_are_bit_equal():
    spec = get_model_spec("dinov3_vits16")
    periods = recomputed_periods(spec.head_dim, spec.rope_base)
    for h, w, s in [(224, 224, 16), (120, 180, 8), (64, 96, 4), (17, 33, 8)]:
        rows, cols = grid_size(h, w, 16, s)
        ref = rope_sincos(rows, cols, spec.head_dim, spec.rope_base, 16, s, h, w, periods=periods)
        got = dynamic_rope(rows, cols, h, w, 16, s, periods)
        assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))


# ------------------------------------------------------------------------------------------------- graphs
def test_dynamic_graph_contract(exported):
    vit, path, _ = exported
    model = onnx.load(str(path))
    spec = graph_spec(vit, REQ, 64, 96, dynamic=True)
    assert check_graph(model, spec=spec, vit=vit, for_tensorrt=True) == []
    assert tensorrt_unsupported_ops(model) == {}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    assert [o.name for o in model.graph.output] == ["key0", "token1", "cls_key0", "cls_token1", "saliency"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dinofeat.shape"] == "dynamic"
    assert "Resize" not in {n.op_type for n in model.graph.node}


def test_one_graph_matches_torch_at_every_size(exported):
    vit, _, session = exported
    rng = np.random.default_rng(3)
    for h, w in SIZES[vit.spec.patch_size]:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x}), strict=True))
        with torch.no_grad():
            ref = vit.forward_features(torch.from_numpy(x), REQ)
        rows, cols = vit.grid(h, w)
        for name, r in zip(REQ.output_names(), ref, strict=True):
            assert got[name].shape == tuple(r.shape), (h, w, name)
            if name.startswith("cls_"):  # the CLS rows: (B, C)
                assert got[name].shape == (2, vit.spec.embed_dim), (h, w, name)
            else:
                assert got[name].shape[1] == rows * cols, (h, w, name)
            if name == "saliency" and rows * cols == 1:
                continue  # min-max of one token is NaN on both paths (SEMANTICS §5)
            assert rel_err(got[name], r.numpy()) < 1e-4, (h, w, name)


def test_cache_key_tells_dynamic_from_fixed(cache_root):
    vit = _tiny("dino_vits8", 4)
    fixed, dyn = graph_spec(vit, REQ, 64, 96), graph_spec(vit, REQ, 64, 96, dynamic=True)
    assert fixed.cache_fields("plain")["shape"] == "fixed" and dyn.cache_fields("plain")["shape"] == "dynamic"
    assert fixed.cache_fields("plain") != dyn.cache_fields("plain")


def test_cli_dynamic_flag_is_documented(capsys):
    from dinofeat.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--dynamic" in capsys.readouterr().out


@pytest.mark.integration
def test_cli_dynamic_export_full_model(vits8_weights_file, tmp_path, capsys):
    """The issue's command on the 12-block ViT-S/8: `dinofeat export --dynamic`, parity at 6 sizes."""
    from dinofeat.cli import main
    from dinofeat.model.vit import build_vit
    from dinofeat.model.weights import load_weights

    out = tmp_path / "dyn.onnx"
    rc = main(["export", "--model", "dino_vits8", "--stride", "4", "--size", "224x224", "--layer", "9",
               "--saliency", "--dynamic", "--weights", str(vits8_weights_file), "-o", str(out), "--cache-dir",
               str(tmp_path / "cache"), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "output key9: (batch, tokens, 384)" in text and "all ops supported" in text
    spec = get_model_spec("dino_vits8")
    vit = build_vit(spec, 4, load_weights(spec, str(vits8_weights_file), progress=False))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    req = Request(facets=((9, "key"),), saliency=True)
    for h, w in [(224, 224), (120, 180), (64, 96), (37, 101), (448, 336), (8, 8)]:
        x = np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32)
        key, sal = session.run(None, {"images": x})
        with torch.no_grad():
            rk, rs = vit.forward_features(torch.from_numpy(x), req)
        assert rel_err(key, rk.numpy()) < 1e-4, (h, w)
        if h > 8:
            assert rel_err(sal, rs.numpy()) < 1e-4, (h, w)


def test_fp16_dinov3_graph_keeps_fp32_islands_and_runs_on_ort_cpu(cache_root):
    """The half-precision graph: LayerNorm, Softmax and the whole RoPE computation (Sin, Cos and the rotation)
    in float32, fp16 matmuls; ONNX Runtime's CPU EP runs it at two sizes without NaN, close to fp32."""
    from onnx import TensorProto

    vit = _tiny("dinov3_vits16", 8)
    path = get_onnx(vit, REQ, 64, 96, precision="fp16", cache_dir=cache_root, dynamic=True)
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type in ("LayerNormalization", "Softmax", "Sin", "Cos"):
            assert types[node.output[0]] == TensorProto.FLOAT, (node.op_type, node.name)
    sins = [n for n in nodes if n.op_type in ("Sin", "Cos")]
    assert len(sins) == 2
    # the rotation x * cos + rotate(x) * sin multiplies float32 q/k by the float32 tables
    table_outs = {n.output[0] for n in sins}
    consumers = [n for n in nodes if n.op_type == "Mul" and any(
        i in table_outs or types.get(i) == TensorProto.FLOAT for i in n.input)]
    assert consumers and all(types[n.output[0]] == TensorProto.FLOAT for n in consumers
                             if any(i in table_outs for i in n.input))
    matmul_types = {types.get(n.input[1]) for n in nodes if n.op_type == "MatMul"}
    assert TensorProto.FLOAT16 in matmul_types
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(64, 96), (120, 180)]:
        x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
        got = session.run(None, {"images": x})
        with torch.no_grad():
            ref = vit.forward_features(torch.from_numpy(x), REQ)
        for g, r in zip(got, ref, strict=True):
            assert np.isfinite(g).all() and rel_err(g, r.numpy()) < 5e-3, (h, w)
