"""TensorRT backend: what can be checked without a GPU, against stand-ins of the TensorRT 10.3 and 11.4 Python APIs;
real engine builds and runs are `gpu` tests (skipped, with the reason, on machines without an NVIDIA GPU).

The stand-ins carry only the API surface the code touches, as documented for each version: 11.x removed the weak
typing flags (``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``) and the per-layer precision setters, which the
``tensorrt_cu12_bindings`` 11.4 wheel's symbol strings confirm (its ``BuilderFlag`` lists ``TF32``, ``DIRECT_IO``,
... but no ``FP16``; there is no ``set_output_type``).
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from testutil import rel_err

from dinofeat.errors import BackendUnavailableError, InputError
from dinofeat.export import cache
from dinofeat.export import tensorrt as trt_export
from dinofeat.export.model import Request, StridedViT
from dinofeat.testing import deterministic_weights
from dinofeat.zoo import get_model_spec

GPU = {"name": "NVIDIA Fake GPU", "compute_capability": "8.7", "index": 0}


# ------------------------------------------------------------------------------------------------- stand-ins
class _Enum:
    def __init__(self, *names):
        for i, n in enumerate(names):
            setattr(self, n, i)


def fake_trt(version: str):
    """A recording stand-in for the `tensorrt` module of `version` ("10.3.0" or "11.4.0")."""
    major = int(version.split(".")[0])
    trt = types.SimpleNamespace(__version__=version, calls=[], refuse_engines=False, float32="float32")
    flags = ["DEBUG", "GPU_FALLBACK", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "DIRECT_IO"]
    if major < 11:
        flags += ["FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = _Enum(*flags)
    trt.NetworkDefinitionCreationFlag = _Enum("EXPLICIT_BATCH", "STRONGLY_TYPED")
    trt.LayerType = _Enum("CONVOLUTION", "MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "REDUCE", "ELEMENTWISE")
    trt.MemoryPoolType = _Enum("WORKSPACE")
    trt.TensorIOMode = _Enum("NONE", "INPUT", "OUTPUT")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Layer:
        def __init__(self, kind):
            self.type = kind
            self.num_outputs = 1
            if major < 11:
                self.precision = None
                self.output_types = {}
                self.set_output_type = lambda j, t: self.output_types.__setitem__(j, t)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            kinds = [trt.LayerType.CONVOLUTION, trt.LayerType.NORMALIZATION, trt.LayerType.MATRIX_MULTIPLY,
                     trt.LayerType.SOFTMAX, trt.LayerType.ELEMENTWISE, trt.LayerType.REDUCE]
            self.layers = [Layer(k) for k in kinds]
            self.num_layers = len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"TIMING" + self.data

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles, self.progress_monitor = set(), set(), [], None
            self.timing = None

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.cleared.add(f)

        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("pool", pool, size))

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache_, ignore_mismatch):
            assert ignore_mismatch is False
            self.timing = cache_

        def get_timing_cache(self):
            return self.timing

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.network = Network(flags)
            return trt.network

        def create_builder_config(self):
            trt.config = Config()
            return trt.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build", network.flags, frozenset(config.flags)))
            return b"ENGINE:" + version.encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            trt.calls.append(("parse", path))
            return True

    class Engine:
        num_io_tensors = 0

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None if trt.refuse_engines or not bytes(data).startswith(b"ENGINE") else Engine()

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.IProgressMonitor = IProgressMonitor
    return trt


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not really onnx, the stand-in parser does not read it")
    return path


# ------------------------------------------------------------------------------------------------- version logic
def test_plan_tensorrt_10_weak_typing():
    trt = fake_trt("10.3.0")
    assert trt_export.has_weak_typing(trt)
    p16 = trt_export.build_plan(trt, "fp16")
    assert p16["typing"] == "weak" and p16["onnx_precision"] == "fp32" and p16["network_flags"] == []
    assert p16["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert p16["pin_fp32"] == ["NORMALIZATION", "SOFTMAX", "REDUCE"]
    p32 = trt_export.build_plan(trt, "fp32")
    assert p32["builder_flags"] == [] and p32["clear_flags"] == ["TF32"] and p32["pin_fp32"] == []
    strong = trt_export.build_plan(trt, "fp16", strongly_typed=True)  # opt-in on 10.x
    assert strong["typing"] == "strong" and strong["onnx_precision"] == "fp16"
    assert strong["network_flags"] == ["STRONGLY_TYPED"] and strong["builder_flags"] == []


def test_plan_tensorrt_11_strong_typing_only():
    trt = fake_trt("11.4.0")
    assert not trt_export.has_weak_typing(trt)
    p16 = trt_export.build_plan(trt, "fp16")
    assert p16["typing"] == "strong" and p16["onnx_precision"] == "fp16"  # fp16 must be in the ONNX itself
    assert p16["network_flags"] == ["STRONGLY_TYPED"] and p16["builder_flags"] == [] and p16["pin_fp32"] == []
    assert trt_export.build_plan(trt, "fp32")["onnx_precision"] == "fp32"
    with pytest.raises(InputError, match="no weak typing"):
        trt_export.build_plan(trt, "fp16", strongly_typed=False)
    with pytest.raises(InputError, match="bf16 runs on backend='torch'"):
        trt_export.build_plan(trt, "bf16")
    assert trt_export.trt_version(trt) == (11, 4, 0)


def test_build_on_10_pins_layernorm_softmax_reduce_to_fp32(onnx_file, tmp_path, capsys):
    trt = fake_trt("10.3.0")
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"old")
    data = trt_export.build_engine(onnx_file, precision="fp16", profile=trt_export.Profile(1, 2, 4), height=224,
                                   width=336, timing_cache_path=timing, workspace_bytes=1 << 30, trt=trt)
    assert data == b"ENGINE:10.3.0"
    cfg, net = trt.config, trt.network
    assert cfg.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    assert net.flags == 0
    pinned = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for layer in net.layers:
        if layer.type in pinned:
            assert layer.precision == "float32" and layer.output_types == {0: "float32"}
        else:
            assert layer.precision is None and layer.output_types == {}
    (profile,) = cfg.profiles
    assert profile.shapes["images"] == ((1, 3, 224, 336), (2, 3, 224, 336), (4, 3, 224, 336))
    assert timing.read_bytes() == b"TIMINGold"  # loaded, then saved back
    assert cfg.progress_monitor is not None and "this takes minutes" in capsys.readouterr().err
    assert ("pool", trt.MemoryPoolType.WORKSPACE, 1 << 30) in trt.calls


def test_build_on_11_is_strongly_typed_and_never_sets_layer_precision(onnx_file):
    trt = fake_trt("11.4.0")  # its layers have no precision setters: touching them would raise
    data = trt_export.build_engine(onnx_file, precision="fp16", height=64, width=64, progress=False, trt=trt)
    assert data == b"ENGINE:11.4.0"
    assert trt.network.flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert trt.config.flags == set() and trt.config.cleared == set()
    trt_export.build_engine(onnx_file, precision="fp32", height=64, width=64, progress=False, trt=trt)
    assert trt.config.cleared == {trt.BuilderFlag.TF32}


def test_progress_monitor_reports_phases(capsys):
    mon = trt_export._progress_monitor(fake_trt("10.3.0"))
    mon.phase_start("Building", None, 3)
    mon.phase_start("Tactics", "Building", 100)
    assert mon.step_complete("Tactics", 0) is True  # never cancels the build
    mon.phase_finish("Tactics")
    mon.phase_finish("Building")
    err = capsys.readouterr().err
    assert "Building (3 steps)" in err and "  Tactics (100 steps)" in err and "Building done" in err


# ------------------------------------------------------------------------------------------------- engine cache
def test_engine_cache_key_reuse_and_refusal(onnx_file, tmp_path, monkeypatch, capsys):
    trt = fake_trt("10.3.0")
    gpu = dict(GPU)
    monkeypatch.setattr(trt_export, "gpu_identity", lambda device=None: dict(gpu))
    kw = dict(precision="fp16", profile=trt_export.Profile(1, 1, 8), height=64, width=64, cache_dir=tmp_path,
              progress=False, trt=trt)
    _, _, m1 = trt_export.get_engine(onnx_file, **kw)
    meta = m1["meta"]
    assert meta["onnx_sha256"] == cache.sha256_file(onnx_file)
    assert (meta["tensorrt"], meta["gpu"], meta["compute_capability"]) == ("10.3.0", GPU["name"], "8.7")
    assert (meta["precision"], meta["typing"], meta["profile"]) == ("fp16", "weak", [1, 1, 8])
    builds = sum(c[0] == "build" for c in trt.calls)
    trt_export.get_engine(onnx_file, **kw)  # cache hit: no build
    assert sum(c[0] == "build" for c in trt.calls) == builds
    # Another GPU (or TensorRT, precision, profile, ONNX) is another key: the first engine is never used there.
    gpu["name"] = "NVIDIA Other GPU"
    _, _, m2 = trt_export.get_engine(onnx_file, **kw)
    assert m2["key"] != m1["key"] and sum(c[0] == "build" for c in trt.calls) == builds + 1
    # A manifest whose fields do not match is refused (and rebuilt), not handed to TensorRT.
    mpath = cache.manifest_path(tmp_path / "trt", m2["key"])
    doc = json.loads(mpath.read_text())
    doc["meta"]["tensorrt"] = "10.0.0"
    mpath.write_text(json.dumps(doc))
    trt_export.get_engine(onnx_file, **kw)
    assert "refusing cached TensorRT engine" in capsys.readouterr().err
    assert sum(c[0] == "build" for c in trt.calls) == builds + 2
    # TensorRT itself refusing the bytes: rebuilt as well, no crash.
    trt.refuse_engines = True
    with pytest.raises(RuntimeError, match="cannot deserialize"):
        trt_export.get_engine(onnx_file, **kw)
    assert "TensorRT could not deserialize it" in capsys.readouterr().err


def test_user_engine_file_mismatch_is_refused(tmp_path):
    trt = fake_trt("10.3.0")
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"ENGINE:10.3.0")
    fields = trt_export.engine_fields("abc", "10.3.0", GPU, "fp16", "weak", trt_export.Profile(), 64, 64)
    eng.with_suffix(".engine.json").write_text(json.dumps(dict(fields, gpu="NVIDIA Jetson Orin")))
    with pytest.raises(InputError, match="does not match this system.*gpu"):
        trt_export.load_engine_file(eng, expected=fields, trt=trt)
    eng.with_suffix(".engine.json").write_text(json.dumps(fields))
    engine, runtime = trt_export.load_engine_file(eng, expected=fields, trt=trt)
    assert engine is not None
    eng.write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot load engine"):
        trt_export.load_engine_file(eng, trt=trt)
    assert trt_export.check_engine_meta(fields, fields) == []
    with pytest.raises(InputError, match="1 <= min <= opt <= max"):
        trt_export.Profile(1, 9, 8)


# ------------------------------------------------------------------------------------------------- lazy import
def test_missing_tensorrt_gives_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trt(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "tensorrt" and level == 0:
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(BackendUnavailableError) as e:
        trt_export.import_tensorrt()
    msg = str(e.value)
    assert "pip install 'dinofeat[gpu]'" in msg and "backend='onnxruntime'" in msg and "NVIDIA GPU" in msg
    from dinofeat.engine.backends import create_backend

    vit = StridedViT(get_model_spec("dino_vits8"), 4)
    with pytest.raises(BackendUnavailableError, match="tensorrt Python package"):
        create_backend("tensorrt", vit, torch.device("cpu"), "fp32", "w")


def test_backend_needs_a_cuda_device(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("10.3.0"))
    from dinofeat.engine.backends.tensorrt import TensorRTBackend

    vit = StridedViT(get_model_spec("dino_vits8"), 4)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="CUDA device only"):
        TensorRTBackend(vit, torch.device("cpu"), "fp32", "w")


def test_device_pointer_accepts_torch_cupy_and_ints():
    from dinofeat.engine.backends.tensorrt import device_pointer

    t = torch.zeros(4)
    assert device_pointer(t) == t.data_ptr() and device_pointer(1234) == 1234
    fake_cupy = types.SimpleNamespace(data=types.SimpleNamespace(ptr=42), flags=types.SimpleNamespace(c_contiguous=True))
    assert device_pointer(fake_cupy) == 42
    with pytest.raises(InputError, match="contiguous"):
        device_pointer(torch.zeros(4, 4).t())
    with pytest.raises(InputError, match="cannot bind"):
        device_pointer("x")


# ------------------------------------------------------------------------------------------------- GPU
def _vit():
    m = StridedViT(get_model_spec("dino_vits8"), 4)
    m.load_state_dict(deterministic_weights("dino_vits8"))
    return m.eval()


@pytest.fixture(scope="module")
def real_trt():
    try:
        return trt_export.import_tensorrt()
    except BackendUnavailableError as e:
        pytest.skip(f"tensorrt is not installed: {e}")


REQ = Request(facets=((9, "key"),), saliency=True)


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_engine_matches_torch(real_trt, tmp_path, precision, tol):
    from dinofeat.engine.backends.tensorrt import TensorRTBackend
    from dinofeat.engine.backends.torch import TorchBackend

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)).cuda()
    ref = TorchBackend(_vit(), torch.device("cuda"), "fp32").run(x, REQ)
    be = TensorRTBackend(_vit(), torch.device("cuda"), precision, "w", cache_dir=tmp_path, max_batch=4,
                         progress=False)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # enqueued on the caller's stream
        got = be.run(x, REQ)
    s.synchronize()
    for name in REQ.output_names():
        assert got[name].device.type == "cuda" and got[name].dtype == torch.float32
        assert rel_err(got[name].cpu(), ref[name].cpu()) < tol, name
    again = TensorRTBackend(_vit(), torch.device("cuda"), precision, "w", cache_dir=tmp_path, max_batch=4,
                            progress=False)  # engine from the cache
    assert rel_err(again.run(x, REQ)["key9"].cpu(), got["key9"].cpu()) < 1e-6


@pytest.mark.gpu
def test_cuda_graph_replay_and_cupy_buffers(real_trt, tmp_path):
    from dinofeat.engine.backends.tensorrt import TensorRTBackend

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)).cuda()
    eager = TensorRTBackend(_vit(), torch.device("cuda"), "fp32", "w", cache_dir=tmp_path, progress=False)
    graphed = TensorRTBackend(_vit(), torch.device("cuda"), "fp32", "w", cache_dir=tmp_path, progress=False,
                              cuda_graphs=True)
    ref = eager.run(x, REQ)
    for _ in range(2):
        got = graphed.run(x, REQ)
        assert rel_err(got["key9"].cpu(), ref["key9"].cpu()) < 1e-6
    cp = pytest.importorskip("cupy")
    outs = {"key9": cp.empty((1, 345, 384), cp.float32), "saliency": cp.empty((1, 345), cp.float32)}
    eager.execute(64, 96, REQ, x, outs, batch=1)
    torch.cuda.synchronize()
    assert rel_err(cp.asnumpy(outs["key9"]), ref["key9"].cpu().numpy()) < 1e-6
