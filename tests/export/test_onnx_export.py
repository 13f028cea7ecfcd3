"""ONNX export: graph contract, TensorRT-clean op set, ORT-fused variant, fp16 graph, cache, CLI.

Small sizes (64x96: a non-square 15x23 grid, so the position table is resampled) keep this fast; the 224 graphs of
the golden tests are exported in tests/engine/test_onnxruntime_backend.py and here once for the CLI.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from testutil import rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402

from dinofeat.errors import InputError  # noqa: E402
from dinofeat.export import cache  # noqa: E402
from dinofeat.export.onnx import (  # noqa: E402
    GraphCheckError,
    check_graph,
    export_onnx,
    get_onnx,
    graph_spec,
    lower_to_opset17,
    optimize_for_onnxruntime,
    require_clean_graph,
    tensorrt_op_table,
    tensorrt_unsupported_ops,
)
from dinofeat.model.vit import Request, StridedViT, cls_output_name  # noqa: E402
from dinofeat.model.zoo import get_model_spec  # noqa: E402
from dinofeat.testing import deterministic_weights  # noqa: E402

H, W = 64, 96
KEY_SAL = Request(facets=((9, "key"),), saliency=True)
MULTI = Request(facets=((3, "query"), (5, "value"), (7, "token"), (9, "key")), saliency=True)
CLS_REQ = Request(facets=((0, "query"), (1, "value"), (2, "token"), (3, "key")), saliency=True, cls=True)


@pytest.fixture(scope="module")
def vit():
    m = StridedViT(get_model_spec("dino_vits8"), 4)
    m.load_state_dict(deterministic_weights("dino_vits8"))
    return m.eval()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One export cache per test session, shared with the backend tests (same path)."""
    path = tmp_path_factory.getbasetemp() / "dinofeat_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def plain_path(vit, cache_root):
    return get_onnx(vit, KEY_SAL, H, W, cache_dir=cache_root)


@pytest.fixture(scope="module")
def plain(plain_path):
    return onnx.load(str(plain_path))


@pytest.fixture(scope="module")
def multi(vit, cache_root):
    return onnx.load(str(get_onnx(vit, MULTI, H, W, cache_dir=cache_root)))  # shared with the backend tests


def _small(name: str, stride: int, depth: int = 4, rope_periods=None) -> StridedViT:
    """A zoo architecture cut to `depth` blocks (saliency then reads block depth-1): same graph code, faster."""
    from dataclasses import replace

    from dinofeat.testing import deterministic_state_dict

    m = StridedViT(replace(get_model_spec(name), depth=depth), stride, rope_periods=rope_periods)
    m.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in m.state_dict().items()}))
    return m.eval()


def _run(model, x: np.ndarray) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {"images": x}), strict=True))


def _reference(vit, request, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = vit.forward_features(torch.from_numpy(x), request)
    return {n: o.numpy() for n, o in zip(request.output_names(), outs, strict=True)}


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


# ------------------------------------------------------------------------------------------------- contract
def test_graph_contract(vit, plain):
    spec = graph_spec(vit, KEY_SAL, H, W)
    assert check_graph(plain, spec=spec, vit=vit, for_tensorrt=True) == []
    onnx.checker.check_model(plain, full_check=True)
    onnx.shape_inference.infer_shapes(plain, check_type=True, strict_mode=True)
    assert [o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = [n.op_type for n in plain.graph.node]
    assert ops.count("LayerNormalization") == 2 * 11 + 1  # blocks 0..10 full, block 11 only norm1 (saliency)
    assert "Resize" not in ops and "Upsample" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    (inp,) = plain.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = _dims(inp)
    assert isinstance(dims[0], str) and dims[1:] == [3, H, W]
    assert [o.name for o in plain.graph.output] == ["key9", "saliency"]
    t = 15 * 23
    assert _dims(plain.graph.output[0])[1:] == [t, 384] and _dims(plain.graph.output[1])[1:] == [t]
    meta = {p.key: p.value for p in plain.metadata_props}
    assert meta["dinofeat.model"] == "dino_vits8" and meta["dinofeat.outputs"] == "key9,saliency"
    assert meta["dinofeat.num_patches"] == "15x23"


def test_position_table_is_a_constant(vit, plain):
    """The resampled (+0.1 bicubic) table for this size is an initializer, bit-equal to the model's own."""
    expected = vit.position_embedding(H, W)[0, 1:].numpy()
    tables = [onnx.numpy_helper.to_array(t) for t in plain.graph.initializer if tuple(t.dims) == (1, 345, 384)]
    assert any(np.array_equal(tab[0], expected) for tab in tables)


@pytest.mark.parametrize("name, stride, h, w", [("dinov2_vits14_reg", 7, 56, 84), ("dinov3_vits16", 8, 64, 96)])
def test_other_families_export_and_match(name, stride, h, w):
    """Registers + LayerScale + antialiased table (DINOv2 _reg) and RoPE (DINOv3) through the same graph. DINOv3
    runs with bfloat16-rounded checkpoint periods: the graph bakes exactly the torch model's RoPE tables."""
    from dinofeat.model.dinov3 import official_periods

    spec = get_model_spec(name)
    periods = official_periods(spec).to(torch.bfloat16).float() if spec.pos == "rope" else None
    m = _small(name, stride, rope_periods=periods)
    req = Request(facets=((1, "key"), (2, "token")), saliency=True, cls=True)  # every kind of output
    model = export_onnx(m, req, h, w)
    assert check_graph(model, spec=graph_spec(m, req, h, w), vit=m, for_tensorrt=True) == []
    assert tensorrt_unsupported_ops(model) == {}
    assert [o.name for o in model.graph.output] == req.output_names()
    if periods is not None:
        baked = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
        ours = m.rope_embedding(h, w)
        recomputed = StridedViT(m.spec, stride).rope_embedding(h, w)
        assert not torch.equal(ours[0], recomputed[0])
        for table, other in zip(ours, recomputed, strict=True):
            assert any(b.shape == table.shape and np.array_equal(b, table.numpy()) for b in baked)
            assert not any(b.shape == other.shape and np.array_equal(b, other.numpy()) for b in baked)
    x = np.random.default_rng(5).standard_normal((2, 3, h, w)).astype(np.float32)
    got, ref = _run(model, x), _reference(m, req, x)
    for out in req.output_names():
        assert got[out].shape == ref[out].shape, out
        assert rel_err(got[out], ref[out]) < 1e-4, out


def test_tensorrt_op_list_is_data_with_source():
    table = tensorrt_op_table()
    assert "onnx/onnx-tensorrt" in table["source"]["repository"]
    assert "docs/operators.md" in table["source"]["operators"]
    assert table["tensorrt_floor"] == "10.3"
    ok = set(table["supported"])
    assert {"LayerNormalization", "MatMul", "Softmax", "Conv", "Erf", "Gemm", "ReduceMax"} <= ok
    assert "Attention" not in ok and "RMSNormalization" not in ok  # added after 10.3 (10.14 / 10.15)
    assert "Resize" in table["forbidden_by_dinofeat"]


def test_tensorrt_graph_uses_only_supported_ops(plain, multi):
    assert tensorrt_unsupported_ops(plain) == {} and tensorrt_unsupported_ops(multi) == {}


def test_stops_at_the_last_block_needed(vit):
    m = export_onnx(vit, Request(facets=((3, "key"),)), H, W)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("LayerNormalization") == 2 * 3 + 1  # blocks 0..2 full, block 3: norm1 + key projection
    assert ops.count("Softmax") == 3
    assert [o.name for o in m.graph.output] == ["key3"]


# ------------------------------------------------------------------------------------------------- numerics
def test_outputs_match_torch_with_dynamic_batch(vit, multi):
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32)
    got, ref = _run(multi, x), _reference(vit, MULTI, x)
    assert list(got) == MULTI.output_names()
    for name in MULTI.output_names():
        assert got[name].shape == ref[name].shape
        assert rel_err(got[name], ref[name]) < 1e-4, name
    one = _run(multi, x[:1])  # batch 1 through the same graph
    assert rel_err(one["key9"], ref["key9"][:1]) < 1e-4


def test_ort_variant_fuses_attention_and_keeps_outputs(vit, plain_path, cache_root):
    path = get_onnx(vit, KEY_SAL, H, W, cache_dir=cache_root, variant="ort")
    fused = onnx.load(str(path))
    report = json.loads((path.parent / (path.stem.rsplit("_", 1)[1] + ".json")).read_text())["meta"]["fusion"]
    # Every full block (0..10) fuses, including block 9 whose keys are an output (recomputed projection).
    assert report["fused_ops"]["Attention"] == 11
    assert report["fused_ops"]["SkipLayerNormalization"] >= 20
    assert max(report["max_rel_diff"].values()) < 1e-4
    assert tensorrt_unsupported_ops(fused)  # contrib ops: never for TensorRT
    x = np.random.default_rng(1).standard_normal((2, 3, H, W)).astype(np.float32)
    got, ref = _run(fused, x), _reference(vit, KEY_SAL, x)
    for name in KEY_SAL.output_names():
        assert rel_err(got[name], ref[name]) < 1e-4, name
    with pytest.raises(InputError, match="fp32"):
        optimize_for_onnxruntime(fused, graph_spec(vit, KEY_SAL, H, W, "fp16"), vit)


def test_fp16_graph_keeps_layernorm_and_softmax_in_fp32():
    """The graph TensorRT 11 (strongly typed) parses for fp16: fp16 matmuls, fp32 LayerNorm/Softmax, fp32 I/O."""
    vit = _small("dino_vits8", 4)
    req = Request(facets=((2, "key"),), saliency=True)
    m = export_onnx(vit, req, H, W, precision="fp16")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in m.graph.initializer})
    for node in m.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
            assert types[node.output[0]] == TensorProto.FLOAT, node.name
    matmul_types = {types[n.input[1]] for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in types}
    assert TensorProto.FLOAT16 in matmul_types
    # q is scaled before q.k^T (fp16 range; TensorRT's attention fusion): Softmax <- [Cast] <- MatMul(Mul(q), k)
    producer = {o: n for n in m.graph.node for o in n.output}
    softmaxes = [n for n in m.graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for sm in softmaxes:
        n = producer[sm.input[0]]
        while n.op_type == "Cast":
            n = producer[n.input[0]]
        assert n.op_type == "MatMul" and producer[n.input[0]].op_type == "Mul", sm.name
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in m.graph.output)
    assert tensorrt_unsupported_ops(m) == {}
    x = np.random.default_rng(2).standard_normal((1, 3, H, W)).astype(np.float32)
    got, ref = _run(m, x), _reference(vit, req, x)  # ORT CPU runs the fp16 graph (casting where it must)
    assert rel_err(got["key2"], ref["key2"]) < 3e-3
    assert rel_err(got["saliency"], ref["saliency"]) < 3e-3


def test_lower_to_opset17_moves_reduce_axes_to_attributes():
    from onnx import helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])
    axes = onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")
    node = helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1)
    m18 = helper.make_model(helper.make_graph([node], "g", [x], [y], [axes]), opset_imports=[helper.make_opsetid("", 18)])
    m17 = lower_to_opset17(m18)
    onnx.checker.check_model(m17, full_check=True)
    (n,) = m17.graph.node
    assert list(n.input) == ["x"] and helper.get_attribute_value(n.attribute[-1]) == [-1]
    assert m17.opset_import[0].version == 17 and not m17.graph.initializer
    split = helper.make_node("Split", ["x"], ["a", "c"], axis=1, num_outputs=2)  # changed in 18: not lowered
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "c")]
    kept = helper.make_model(helper.make_graph([split], "g", [x], outs), opset_imports=[helper.make_opsetid("", 18)])
    assert lower_to_opset17(kept).opset_import[0].version == 18


def test_check_graph_reports_problems(vit, plain):
    spec = graph_spec(vit, KEY_SAL, H, W)
    bad = onnx.ModelProto()
    bad.CopyFrom(plain)
    bad.graph.output[0].name = "keys"  # a dangling, misnamed output
    problems = check_graph(bad, spec=spec, vit=vit)
    assert any("outputs" in p for p in problems)
    with pytest.raises(GraphCheckError, match="failed its checks:(.|\n)*outputs"):
        require_clean_graph(bad, spec=spec, vit=vit)
    assert require_clean_graph(plain, spec=spec, vit=vit) is None  # the real export passes the same check


# ------------------------------------------------------------------------------------------------- cache
def test_cache_reuses_verifies_and_rebuilds(vit, cache_root):
    req = Request(facets=((1, "value"),))
    p1 = get_onnx(vit, req, H, W, cache_dir=cache_root, weights_id="w-test")
    p2 = get_onnx(vit, req, H, W, cache_dir=cache_root, weights_id="w-test")
    assert p1 == p2 and p1.is_file() and p1.parent == cache_root / "onnx"
    key = p1.stem.rsplit("_", 1)[1]
    manifest = json.loads((p1.parent / f"{key}.json").read_text())
    assert manifest["meta"]["outputs"] == ["value1"] and manifest["meta"]["weights"] == "w-test"
    for field in ("model", "stride", "height", "width", "precision", "exporter", "opset", "variant"):
        assert field in manifest["meta"]
    assert manifest["files"][p1.name] == cache.sha256_file(p1)
    # Other weights, size or outputs -> another entry.
    assert get_onnx(vit, Request(facets=((1, "key"),)), H, W, cache_dir=cache_root, weights_id="w-test") != p1
    # A corrupted file fails its hash: never used, rebuilt.
    data = bytearray(p1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p1.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="fails its SHA-256"):
        p3 = get_onnx(vit, req, H, W, cache_dir=cache_root, weights_id="w-test")
    assert cache.sha256_file(p3) == manifest["files"][p1.name]
    onnx.checker.check_model(str(p3))


def test_atomic_store_leaves_no_partial_entry(tmp_path):
    d = tmp_path / "c"
    m = cache.store(d, "k1", {"a.bin": b"x" * 10}, {"note": 1})
    assert cache.lookup(d, "k1")["meta"] == {"note": 1} and m["files"]["a.bin"] == cache.sha256_file(d / "a.bin")
    (d / "a.bin").unlink()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cache.lookup(d, "k1") is None
    assert any("missing" in str(x.message) for x in w)
    assert not (d / "k1.json").exists()
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]
    assert cache.make_key({"a": 1, "b": [1, 2]}) == cache.make_key({"b": [1, 2], "a": 1})


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_export_writes_a_checked_onnx(vits8_weights_file, cache_root, tmp_path, capsys):
    """The issue's command, with a weights file: dinofeat export ... --saliency --weights W.pth -o m.onnx."""
    from dinofeat.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["export", "--model", "dino_vits8", "--stride", "4", "--size", "224x224", "--layer", "9", "--facet",
               "key", "--saliency", "--weights", str(vits8_weights_file), "-o", str(out), "--cache-dir",
               str(cache_root), "-q"])
    assert rc == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "output key9: (batch, 3025, 384)" in text and "output saliency: (batch, 3025)" in text
    assert "all ops supported" in text
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["key9", "saliency"]
    assert {p.key: p.value for p in m.metadata_props}["dinofeat.weights_sha256"] == cache.sha256_file(
        vits8_weights_file)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from dinofeat.cli import main
    from dinofeat.cli.export import parse_size

    assert parse_size("224x336") == (224, 336) and parse_size("224") == (224, 224)
    assert main(["export", "--size", "big", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "expected HxW" in capsys.readouterr().err
    assert main(["export", "--stride", "3", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "must divide the patch size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- CLS output
# `Request(cls=True)` / `Extractor.extract(cls=True)`: StridedViT gives the row each facet drops (what the original's
# hooks read), and the graph gives the same as StridedViT for every output, fixed and dynamic, for each family.
def test_output_names_and_default_request_unchanged():
    assert Request(facets=((9, "key"),), saliency=True).output_names() == ["key9", "saliency"]
    assert CLS_REQ.output_names() == ["query0", "value1", "token2", "key3", "cls_query0", "cls_value1",
                                      "cls_token2", "cls_key3", "saliency"]


@pytest.mark.parametrize("name, stride", [("dino_vits8", 4), ("dinov2_vits14_reg", 7), ("dinov3_vits16", 8)])
def test_cls_rows_are_what_the_hooks_read(name, stride):
    """The CLS row of each facet = the qkv Linear's (or the block output's) token 0, in the facet's channel order
    (d * heads + h), read by forward hooks as the original's `include_cls`; the other outputs are unchanged."""
    vit = _small(name, stride)
    heads = vit.spec.num_heads
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 48, 64)).astype(np.float32))
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, row):
        seen.setdefault(name, row.clone())  # the first call: the facet's own forward (a hook returns None)

    for layer, facet in CLS_REQ.facets:
        block = vit.blocks[layer]
        if facet == "token":
            handles.append(block.register_forward_hook(
                lambda _m, _i, out, k=layer: keep(f"cls_token{k}", out[:, 0])))
        else:
            j = ("query", "key", "value").index(facet)
            handles.append(block.attn.qkv.register_forward_hook(lambda _m, _i, out, k=layer, f=facet, j=j: keep(
                f"cls_{f}{k}", out[:, 0].reshape(out.shape[0], 3, heads, -1)[:, j].permute(0, 2, 1)
                .reshape(out.shape[0], -1))))
    with torch.no_grad():
        got = dict(zip(CLS_REQ.output_names(), vit.forward_features(x, CLS_REQ), strict=True))
    for h in handles:
        h.remove()
    with torch.no_grad():
        plain = Request(facets=CLS_REQ.facets, saliency=True)
        without = dict(zip(plain.output_names(), vit.forward_features(x, plain), strict=True))
    for layer, facet in CLS_REQ.facets:
        key = cls_output_name(layer, facet)
        assert got[key].shape == (2, vit.spec.embed_dim)
        assert torch.equal(got[key], seen[key]), key
    for out, t in without.items():
        assert torch.equal(got[out], t), out


@pytest.mark.parametrize("name, stride, h, w", [("dino_vits8", 4, 64, 96)])  # the other families: above
def test_fixed_graph_matches_torch_for_every_output(name, stride, h, w):
    vit = _small(name, stride)
    model = export_onnx(vit, CLS_REQ, h, w)
    assert check_graph(model, spec=graph_spec(vit, CLS_REQ, h, w), vit=vit, for_tensorrt=True) == []
    assert tensorrt_unsupported_ops(model) == {}
    assert [o.name for o in model.graph.output] == CLS_REQ.output_names()
    x = np.random.default_rng(2).standard_normal((2, 3, h, w)).astype(np.float32)
    got, ref = _run(model, x), _reference(vit, CLS_REQ, x)
    for out in CLS_REQ.output_names():
        assert got[out].shape == ref[out].shape, out
        assert rel_err(got[out], ref[out]) < 1e-4, out
