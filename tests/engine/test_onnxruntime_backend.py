"""ONNX Runtime backend: golden parity on CPU, parity with the torch backend, Best Buddies, providers, sessions."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from testutil import EXAMPLES, rel_err

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import dinofeat  # noqa: E402
from dinofeat.engine.backends import onnxruntime as ortb  # noqa: E402
from dinofeat.engine.backends.torch import TorchBackend  # noqa: E402
from dinofeat.errors import InputError  # noqa: E402
from dinofeat.model.vit import Request, StridedViT  # noqa: E402
from dinofeat.model.zoo import get_model_spec  # noqa: E402
from dinofeat.testing import deterministic_weights  # noqa: E402

MULTI = Request(facets=((3, "query"), (5, "value"), (7, "token"), (9, "key")), saliency=True)


pytestmark = pytest.mark.usefixtures("ort_cache")  # the session's export cache as $DINOFEAT_CACHE (conftest)


@pytest.fixture(scope="module")
def ort_extractor(vits8_weights_file, ort_cache):
    return dinofeat.Extractor(model="dino_vits8", stride=4, weights=str(vits8_weights_file), backend="onnxruntime",
                              device="cpu", progress=False)


def _vit():
    m = StridedViT(get_model_spec("dino_vits8"), 4)
    m.load_state_dict(deterministic_weights("dino_vits8"))
    return m.eval()


def _wid() -> str:
    """The weights id `get_onnx` derives for these weights, so graphs are shared with tests/export via the cache."""
    from dinofeat.export.onnx import weights_sha256

    return weights_sha256(_vit())


# ------------------------------------------------------------------------------------------------- golden parity
@pytest.mark.parametrize("img", ["b"])  # image a (224x336) runs end to end in test_same_best_buddies_as_torch
def test_keys_and_saliency_match_golden(ort_extractor, golden, img):
    """The foundation's parity test, on ORT CPU: golden keys/saliency within 1e-4 relative."""
    g = golden(f"golden_img_{img}_224")
    f = ort_extractor.extract(torch.from_numpy(g["input"]), layer=9, facet="key", bin=False, saliency=True)
    assert f.num_patches == tuple(g["num_patches"])
    ref = g["desc_unbinned"][:, 0]
    assert f.descriptors.shape == ref.shape and f.descriptors.dtype == torch.float32
    assert rel_err(f.descriptors, ref) < 1e-4
    assert rel_err(f.saliency, g["saliency"]) < 1e-4


def test_runs_the_verified_fused_graph_on_the_cpu_provider(ort_extractor, golden):
    g = golden("golden_img_b_224")
    ort_extractor.extract(torch.from_numpy(g["input"]), layer=9, facet="key", saliency=True)
    s = ort_extractor.backend.session_for(224, 224, Request(facets=((9, "key"),), saliency=True))
    assert s.session.get_providers() == ["CPUExecutionProvider"]
    assert "_ort_" in s.onnx_path  # the transformer-fused variant
    import onnx

    m = onnx.load(s.onnx_path, load_external_data=False)
    assert sum(n.op_type == "Attention" for n in m.graph.node) == 11


def test_every_output_matches_the_torch_backend():
    """Parity with the torch backend on ORT CPU: every output within 1e-4 relative in fp32 (batch 2, 64x96)."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32))
    be = ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), "fp32", _wid())
    ref = TorchBackend(_vit(), torch.device("cpu"), "fp32").run(x, MULTI)
    got = be.run(x, MULTI)
    assert list(got) == MULTI.output_names()
    for name in MULTI.output_names():
        assert got[name].shape == ref[name].shape and got[name].device == torch.device("cpu")
        assert rel_err(got[name], ref[name]) < 1e-4, name
    plain = ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), "fp32", _wid(), optimize=False).run(x, MULTI)
    for name in MULTI.output_names():
        assert rel_err(plain[name], ref[name]) < 1e-4, name


def test_same_best_buddies_as_torch(ort_extractor, golden, ort_cache):
    """find_correspondences on the ONNX Runtime backend gives the golden Best Buddies (which the torch backend
    matches in test_golden_parity): the same mutual nearest neighbours, mask and points on the paper pair. On the
    plain graph (the fused one is checked against the goldens above; this skips a second fusion + verification)."""
    import copy

    g = golden("golden_pair_ab_224_t0.05")
    ex = copy.copy(ort_extractor)
    ex.backend = ortb.OnnxRuntimeBackend(ort_extractor.backend.model, torch.device("cpu"), "fp32",
                                         ort_extractor.weights_sha256, optimize=False, cache_dir=ort_cache)
    ex._lock = threading.Lock()
    got = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", num_pairs=10, load_size=224,
                                        layer=9, facet="key", bin=True, thresh=0.05, extractor=ex)
    assert ex.backend.name == "onnxruntime" and "_plain_" in ex.backend.session_for(
        224, 336, Request(facets=((9, "key"),), saliency=True)).onnx_path
    np.testing.assert_array_equal(got.bbs_mask.numpy(), g["bbs_mask"])
    np.testing.assert_array_equal(got.nn_1.numpy(), g["nn_1"])
    np.testing.assert_array_equal(got.nn_2.numpy(), g["nn_2"])
    assert int(got.bbs_mask.sum()) == 131
    assert got.points1 == [tuple(map(int, p)) for p in g["points1_yx"]]
    assert got.points2 == [tuple(map(int, p)) for p in g["points2_yx"]]
    assert rel_err(got.saliency1, g["saliency_map1"]) < 1e-4 and rel_err(got.saliency2, g["saliency_map2"]) < 1e-4


# ------------------------------------------------------------------------------------------------- providers
def test_cpu_providers_and_session_options():
    assert ortb.select_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    so = ortb.session_options()
    assert so.intra_op_num_threads == ortb.usable_cores() and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.enable_cpu_mem_arena and so.enable_mem_pattern
    assert ortb.session_options(3, optimization="basic").intra_op_num_threads == 3
    with pytest.raises(InputError, match="optimization"):
        ortb.session_options(optimization="max")


def test_gpu_provider_order_precision_options_and_fallback_warning(monkeypatch, tmp_path):
    all3 = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: all3)
    p = ortb.select_providers(torch.device("cuda", 0), "fp16", height=224, width=336, max_batch=4,
                              cache_dir=tmp_path)
    assert [ortb._provider_name(x) for x in p] == list(ortb.PROVIDER_ORDER)
    trt_opts = p[0][1]
    assert trt_opts["trt_fp16_enable"] and trt_opts["trt_engine_cache_enable"] and trt_opts["trt_timing_cache_enable"]
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "trt" / "ort")
    assert trt_opts["trt_profile_max_shapes"] == "images:4x3x224x336"
    assert p[1][1] == {"device_id": 0, "use_tf32": "0"}  # no per-stream session: ORT's own stream
    # fp32 stays fp32: the CUDA EP with TF32 off (ORT defaults to on), never the TensorRT EP (TF32 on, no option)
    p32 = ortb.select_providers(torch.device("cuda", 1), "fp32", cache_dir=tmp_path)
    assert p32 == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": "0"}), "CPUExecutionProvider"]
    ptf = ortb.select_providers(torch.device("cuda", 0), "tf32", cache_dir=tmp_path, available=all3)
    assert ptf[0][0] == "TensorrtExecutionProvider" and not ptf[0][1]["trt_fp16_enable"]
    assert ptf[1] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": "1"})
    no_trt = ortb.select_providers(torch.device("cuda", 0), "fp16", use_tensorrt=False)
    assert [ortb._provider_name(x) for x in no_trt] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="no CUDAExecutionProvider"):
        assert ortb.select_providers(torch.device("cuda", 0)) == ["CPUExecutionProvider"]

    class FakeSession:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.warns(RuntimeWarning, match="could not use CUDAExecutionProvider"):
        ortb._warn_on_fallback(FakeSession(), [("CUDAExecutionProvider", {}), "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ortb._warn_on_fallback(FakeSession(), ["CPUExecutionProvider"])


def test_precision_and_device_errors():
    with pytest.raises(InputError, match="bf16"):
        ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), "bf16", "")
    for precision in ("fp16", "tf32"):
        with pytest.raises(InputError, match="needs device='cuda'"):
            ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), precision, "")


def test_gpu_session_options_do_not_spin_every_core():
    so = ortb.session_options(gpu=True)
    assert so.intra_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    cpu = ortb.session_options()
    assert cpu.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert ortb.session_options(4, gpu=True).intra_op_num_threads == 4  # explicit threads win


def test_fused_graph_failing_its_check_falls_back_to_plain(monkeypatch, tmp_path):
    from dataclasses import replace

    from dinofeat.export import onnx as export_onnx
    from dinofeat.testing import deterministic_state_dict

    def broken(*a, **k):
        raise export_onnx.GraphCheckError("the ORT-optimised graph changes output 'key1' by 1e-2 relative")

    monkeypatch.setattr(export_onnx, "optimize_for_onnxruntime", broken)
    vit = StridedViT(replace(get_model_spec("dino_vits8"), depth=2), 4)
    vit.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in vit.state_dict().items()}))
    be = ortb.OnnxRuntimeBackend(vit.eval(), torch.device("cpu"), "fp32", "w-small", cache_dir=tmp_path)
    req = Request(facets=((1, "key"),))
    with pytest.warns(RuntimeWarning, match="running the plain graph instead"):
        out = be.run(torch.zeros(1, 3, 32, 32), req)
    assert "_plain_" in be.session_for(32, 32, req).onnx_path and out["key1"].shape == (1, 49, 384)


def test_create_session_for_benchmarks(ort_cache):
    vit = _vit()  # same graph as tests/export's 64x96 key9+saliency: a cache hit when those ran first
    session, inp, outs = ortb.create_session(vit, 4, 64, 96, layer=9, facet="key", saliency=True,
                                             cache_dir=ort_cache, threads=1)
    assert inp == "images" and outs == ["key9", "saliency"]
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 96)).astype(np.float32)
    key9, sal = session.run(outs, {inp: x})
    with torch.no_grad():
        ref = vit.forward_features(torch.from_numpy(x), Request(facets=((9, "key"),), saliency=True))
    assert rel_err(key9, ref[0]) < 1e-4 and rel_err(sal, ref[1]) < 1e-4
    assert session.get_session_options().intra_op_num_threads == 1


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cuda_iobinding_keeps_outputs_on_the_device(tmp_path):
    """CUDA EP: inputs/outputs bound to torch device memory, results equal the CPU run (not run without a GPU)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 64, 96)).astype(np.float32))
    cpu = ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), "fp32", "w", cache_dir=tmp_path).run(x, MULTI)
    gpu_be = ortb.OnnxRuntimeBackend(_vit(), torch.device("cuda"), "fp32", "w", cache_dir=tmp_path,
                                     use_tensorrt=False)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # inputs written on the caller's stream; ORT waits for them
        xs = x.cuda()
        got = gpu_be.run(xs, MULTI)
        again = gpu_be.run(xs, MULTI)
        assert all(v.device.type == "cuda" for v in got.values())
    s.synchronize()
    assert len(gpu_be._sessions) == 1  # one session for every stream
    for name in MULTI.output_names():
        assert rel_err(got[name].cpu(), cpu[name]) < 1e-4, name
        assert rel_err(again[name].cpu(), cpu[name]) < 1e-4, name
    fp16 = ortb.OnnxRuntimeBackend(_vit(), torch.device("cuda"), "fp16", "w", cache_dir=tmp_path,
                                   use_tensorrt=False).run(x.cuda(), MULTI)
    assert rel_err(fp16["key9"].cpu(), cpu["key9"]) < 3e-3


@pytest.mark.gpu
def test_cuda_cls_rows_equal_the_cpu_run(tmp_path):
    """CUDA EP with the CLS rows (`Request(cls=True)`): (B, C) outputs on the device, equal to the CPU run."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    req = Request(facets=((9, "key"),), saliency=True, cls=True)
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 64, 96)).astype(np.float32))
    cpu = ortb.OnnxRuntimeBackend(_vit(), torch.device("cpu"), "fp32", "w", cache_dir=tmp_path).run(x, req)
    got = ortb.OnnxRuntimeBackend(_vit(), torch.device("cuda"), "fp32", "w", cache_dir=tmp_path,
                                  use_tensorrt=False).run(x.cuda(), req)
    assert got["cls_key9"].device.type == "cuda" and got["cls_key9"].shape == (2, 384)
    for name in req.output_names():
        assert rel_err(got[name].cpu(), cpu[name]) < 1e-4, name
