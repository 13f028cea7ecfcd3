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
from contextlib import contextmanager as contextlib_contextmanager

import numpy as np
import pytest
import torch
from testutil import rel_err

from dinofeat.errors import BackendUnavailableError, InputError
from dinofeat.export import cache
from dinofeat.export import tensorrt as trt_export
from dinofeat.model.vit import Request, StridedViT
from dinofeat.model.zoo import get_model_spec
from dinofeat.testing import deterministic_weights

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

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.IProgressMonitor, trt.ILogger = IProgressMonitor, ILogger
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


def test_plan_tensorrt_10_12_defaults_to_strong_typing_and_tf32_is_opt_in():
    trt = fake_trt("10.12.0")  # weak-typing flags still exist, but are deprecated: strong typing by default
    p16 = trt_export.build_plan(trt, "fp16")
    assert p16["typing"] == "strong" and p16["onnx_precision"] == "fp16" and p16["pin_fp32"] == []
    assert p16["network_flags"] == ["STRONGLY_TYPED"] and p16["builder_flags"] == []
    assert trt_export.build_plan(trt, "fp16", strongly_typed=False)["typing"] == "weak"  # still selectable
    assert trt_export.build_plan(fake_trt("10.11.1"), "fp16")["typing"] == "weak"
    for version in ("10.3.0", "10.12.0", "11.4.0"):
        t = fake_trt(version)
        p32, tf32 = trt_export.build_plan(t, "fp32"), trt_export.build_plan(t, "tf32")
        assert p32["clear_flags"] == ["TF32"] and "TF32" not in p32["builder_flags"]
        assert tf32["builder_flags"] == ["TF32"] and tf32["clear_flags"] == [] and tf32["onnx_precision"] == "fp32"


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
def test_engine_cls_rows_match_torch(real_trt, tmp_path):
    """The CLS rows (`Request(cls=True)`, (B, C) outputs beside the (B, T, C) facets) through a real engine."""
    from dinofeat.engine.backends.tensorrt import TensorRTBackend
    from dinofeat.engine.backends.torch import TorchBackend

    req = Request(facets=((9, "key"),), saliency=True, cls=True)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 64, 96)).astype(np.float32)).cuda()
    ref = TorchBackend(_vit(), torch.device("cuda"), "fp32").run(x, req)
    got = TensorRTBackend(_vit(), torch.device("cuda"), "fp32", "w", cache_dir=tmp_path, max_batch=4,
                          progress=False).run(x, req)
    assert got["cls_key9"].shape == (2, 384)
    for name in req.output_names():
        assert rel_err(got[name].cpu(), ref[name].cpu()) < 1e-4, name


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


# ------------------------------------------------------------------------------------------------- execution
class _Stream:
    def __init__(self, handle):
        self.cuda_stream, self.waits, self.syncs = handle, [], 0

    def wait_stream(self, other):
        self.waits.append(other.cuda_stream)

    def synchronize(self):
        self.syncs += 1


class _FakeCuda:
    """CPU stand-in of `CudaOps`: records the device guards, hands out fake streams, captures fake graphs."""

    def __init__(self):
        self.current, self.guards, self.capturing, self.next_handle = _Stream(111), [], False, 900

    @contextlib_contextmanager
    def device_guard(self, device):
        self.guards.append(str(device))
        yield

    def current_stream(self, device):
        return self.current

    def new_stream(self, device):
        self.next_handle += 1
        return _Stream(self.next_handle)

    def to_device(self, x, device):
        return x.float().contiguous()

    def empty(self, shape, dtype, device):
        return torch.zeros(shape, dtype=dtype)

    def graph(self):
        return types.SimpleNamespace(replays=0, replay=lambda: None)

    @contextlib_contextmanager
    def capture(self, graph, stream):
        self.capturing = True
        try:
            yield
        finally:
            self.capturing = False


class _Context:
    def __init__(self, engine):
        self.engine, self.shape, self.addresses, self.launches = engine, None, {}, []

    def set_input_shape(self, name, shape):
        if "shape" in self.engine.fail:
            self.engine.logger.log(1, f"IExecutionContext::setInputShape: {shape} is outside the profile")
            return False
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        b = self.shape[0]
        return (b, 345, 384) if name == "key9" else (b, 345)

    def execute_async_v3(self, handle):
        capturing = self.engine.cuda.capturing
        self.launches.append((handle, capturing))
        if ("capture" if capturing else "execute") in self.engine.fail:
            self.engine.logger.log(1, "enqueueV3: illegal memory access")
            return False
        return True


class _FakeEngine:
    num_io_tensors = 3

    def __init__(self, cuda, logger):
        self.cuda, self.logger, self.fail, self.contexts = cuda, logger, set(), []

    def create_execution_context(self):
        if "context" in self.fail:
            return None
        self.contexts.append(_Context(self))
        return self.contexts[-1]


@pytest.fixture
def fake_backend(monkeypatch):
    """A TensorRTBackend on 'cuda:1' whose engine, contexts and CUDA calls are CPU stand-ins."""
    import sys

    from dinofeat.engine.backends import tensorrt as trtb

    trt = fake_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = _FakeCuda()
    be = trtb.TensorRTBackend(StridedViT(get_model_spec("dino_vits8"), 4), torch.device("cuda", 1), "fp32", "w",
                              max_batch=4, cuda_ops=cuda)
    be.cuda_graphs = False
    logger = trt_export.recording_logger(trt)
    eng = _FakeEngine(cuda, logger)
    dtypes = {"key9": torch.float32, "saliency": torch.float32}
    be._engines[(64, 96, REQ)] = trtb._Engine(eng, None, logger, ["key9", "saliency"], dtypes, {})
    return be, eng, cuda


def test_one_context_per_stream_under_the_engines_device(fake_backend):
    be, eng, cuda = fake_backend
    x = torch.zeros(2, 3, 64, 96)
    out = be.run(x, REQ)
    assert out["key9"].shape == (2, 345, 384) and out["saliency"].shape == (2, 345)
    be.run(x, REQ)
    assert len(eng.contexts) == 1  # same stream: same context
    cuda.current = _Stream(222)
    be.run(x[:1], REQ)
    assert len(eng.contexts) == 2 and [c.launches[0][0] for c in eng.contexts] == [111, 222]
    assert cuda.guards == ["cuda:1"] * 3  # every run under the engine's device, whatever the current one
    be.execute(64, 96, REQ, x, {"key9": 1, "saliency": 2}, batch=2, stream=333)
    assert len(eng.contexts) == 3 and eng.contexts[-1].addresses == {"images": x.data_ptr(), "key9": 1,
                                                                    "saliency": 2}


def test_tensorrt_failures_raise_backend_error_with_its_message(fake_backend):
    from dinofeat.errors import BackendError

    be, eng, cuda = fake_backend
    x = torch.zeros(1, 3, 64, 96)
    eng.fail = {"shape"}
    with pytest.raises(BackendError, match=r"set_input_shape.*TensorRT said: .*outside the profile"):
        be.run(x, REQ)
    eng.fail = {"execute"}
    with pytest.raises(BackendError, match="execute_async_v3 failed.*illegal memory access"):
        be.run(x, REQ)
    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        be.execute(64, 96, REQ, x, {"key9": 1, "saliency": 2}, batch=1)
    eng.fail = {"context"}
    cuda.current = _Stream(5)
    with pytest.raises(BackendError, match="create_execution_context"):
        be.run(x, REQ)


def test_cuda_graph_per_shape_and_stream_and_failed_capture_is_never_replayed(fake_backend):
    from dinofeat.errors import BackendError

    be, eng, cuda = fake_backend
    be.cuda_graphs = True
    x = torch.zeros(1, 3, 64, 96)
    eng.fail = {"capture"}
    with pytest.raises(BackendError, match="during CUDA-graph capture.*illegal memory access"):
        be.run(x, REQ)
    (entry_eng,) = be._engines.values()
    assert entry_eng.graphs == {}  # nothing stored: the empty graph is never replayed
    eng.fail = set()
    be.run(x, REQ)
    be.run(x, REQ)
    assert len(entry_eng.graphs) == 1
    be.run(torch.zeros(2, 3, 64, 96), REQ)  # another batch shape: another graph, another context
    cuda.current = _Stream(222)
    be.run(x, REQ)  # another stream: another graph and static buffers
    graphs = list(entry_eng.graphs.values())
    assert sorted(entry_eng.graphs) == [((1, 3, 64, 96), 111), ((1, 3, 64, 96), 222), ((2, 3, 64, 96), 111)]
    assert len({id(g.ctx) for g in graphs}) == 3 and len({id(g.static_in) for g in graphs}) == 3
    # each capture: one eager warm-up on the caller's stream, then the captured launch on a side stream
    launches = [c.launches for c in eng.contexts[1:]]
    assert all(lc[0] == (lc[0][0], False) and lc[1][1] is True for lc in launches)
