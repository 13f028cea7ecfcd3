"""TensorRT engines built from the exported ONNX with TensorRT's Python API (10.x and 11.x), cached on disk.

Typing, by version (`build_plan` decides, from the module's own API surface):

* TensorRT 10.0 - 10.11 (JetPack 6 ships 10.3) -- weak typing by default: the fp32 ONNX is parsed, ``BuilderFlag.FP16`` lets the
  builder pick fp16 kernels, and every LayerNorm (``NORMALIZATION``), Softmax (``SOFTMAX``) and Reduce layer is
  pinned to fp32 (``layer.precision`` + ``set_output_type``) under ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``,
  because fp16 overflows in the variance and exp sums.
* TensorRT 11.x -- strong typing only (the weak-typing flags are removed): precision must be in the ONNX itself,
  so fp16 builds parse the fp16 graph `ExportGraph` writes (fp16 weights/matmuls, fp32 LayerNorm, Softmax and
  residual stream via explicit Casts) with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
  ``strongly_typed=True`` selects the same path on 10.x.
* TensorRT 10.12 - 10.x -- weak typing is deprecated there, so strong typing is the default as on 11.x (the fp16
  graph keeps Softmax/LayerNorm fp32 in the ONNX and scales q before q.k^T; precision constraints would block
  the fused attention kernels); ``strongly_typed=False`` still selects weak typing.

fp32 clears ``BuilderFlag.TF32`` (on by default in TensorRT: fp32 would be TF32 on Ampere+ and miss the 1e-4
parity); ``precision="tf32"`` is the explicit opt-in (fp32 graph, TF32 flag set).

A fixed-size graph's engine has one optimisation profile for the input ``images``: batch min..opt..max at the
graph's H, W. A dynamic-size graph's engine (`ShapeProfile`) has one profile per size bucket (`bucket_profiles`)
or one wide (batch, H, W) range; the backend picks the profile per call (`select_profile`) and the cache keys on
the profile set.
A timing cache per (TensorRT version, GPU) speeds up rebuilds. Engines are cached under ``<cache>/trt/`` by a key
over (ONNX SHA-256, TensorRT version, GPU name + compute capability, precision, typing, profile); the manifest
records those fields and `check_engine_meta` refuses an engine whose fields do not match the running system
(it is rebuilt, never handed to TensorRT). The build prints its phases (``IProgressMonitor``) because it takes
minutes.

Nothing here imports tensorrt at module import time; `import_tensorrt` raises `BackendUnavailableError` with the
fix when it is missing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, InputError
from ..io import atomic_write_bytes
from . import cache

PRECISIONS = ("fp32", "tf32", "fp16")
STRONG_TYPING_DEFAULT_FROM = (10, 12)  # TensorRT deprecates weak typing from 10.12 on
PINNED_FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
INPUT_NAME = "images"
INSTALL_HINT = (
    "backend='tensorrt' needs the tensorrt Python package and an NVIDIA GPU; install with pip install "
    "'dinofeat[gpu]' on a machine with CUDA, or use backend='onnxruntime'"
)


def import_tensorrt():
    """The `tensorrt` module, or `BackendUnavailableError` naming the fix."""
    try:
        import tensorrt
    except Exception as e:  # ImportError, or OSError when the wheel's libnvinfer is missing
        raise BackendUnavailableError(f"{INSTALL_HINT} (import tensorrt failed: {e})") from None
    return tensorrt


def trt_version(trt) -> tuple[int, ...]:
    parts = []
    for p in str(getattr(trt, "__version__", "0")).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def has_weak_typing(trt) -> bool:
    """True when this TensorRT still has the weak-typing precision flags (10.x), False on 11.x."""
    flags = getattr(trt, "BuilderFlag", None)
    return flags is not None and hasattr(flags, "FP16") and hasattr(flags, "OBEY_PRECISION_CONSTRAINTS")


def build_plan(trt, precision: str, strongly_typed: bool | None = None) -> dict:
    """What a build does on this TensorRT, without touching a GPU.

    Returns {"version", "typing": "weak"|"strong", "onnx_precision": which exported graph to parse,
    "network_flags": [NetworkDefinitionCreationFlag names], "builder_flags": [BuilderFlag names to set],
    "clear_flags": [BuilderFlag names to clear], "pin_fp32": [LayerType names pinned to fp32]}.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} is not available with backend='tensorrt'; choose "
                         f"{' or '.join(PRECISIONS)} (bf16 runs on backend='torch')")
    weak_ok = has_weak_typing(trt)
    if strongly_typed is None:
        strongly_typed = not weak_ok or trt_version(trt) >= STRONG_TYPING_DEFAULT_FROM
    if not strongly_typed and not weak_ok:
        raise InputError(f"TensorRT {trt.__version__} has no weak typing (BuilderFlag.FP16 was removed in 11.x); "
                         "use strongly_typed=True (the default there)")
    plan = {"version": ".".join(map(str, trt_version(trt))), "typing": "strong" if strongly_typed else "weak",
            "network_flags": [], "builder_flags": [], "clear_flags": [], "pin_fp32": []}
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        plan["clear_flags"] = ["TF32"]  # on by default: fp32 means fp32 (parity with the torch backend)
    if precision == "tf32" and hasattr(trt.BuilderFlag, "TF32"):
        plan["builder_flags"] = ["TF32"]  # the explicit opt-in (TensorRT's own default)
    if strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise InputError(f"TensorRT {trt.__version__} has no strongly typed networks; use strongly_typed=False")
        plan["network_flags"] = ["STRONGLY_TYPED"]
        plan["onnx_precision"] = "fp16" if precision == "fp16" else "fp32"
    else:
        plan["onnx_precision"] = "fp32"
        if precision == "fp16":
            plan["builder_flags"] = ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            plan["pin_fp32"] = [t for t in PINNED_FP32_LAYER_TYPES if hasattr(trt.LayerType, t)]
    return plan


# ------------------------------------------------------------------------------------------------- identity
def gpu_identity(device=None) -> dict:
    """{"name", "compute_capability": "8.6", "index"} of a CUDA device (torch's view of it)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"{INSTALL_HINT} (torch sees no CUDA GPU)")
    dev = torch.device(device) if device is not None else torch.device("cuda")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}", "index": index}


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the batch axis (H and W are fixed by the graph)."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")

    def shapes(self, height: int, width: int) -> tuple[tuple[int, ...], ...]:
        return tuple((b, 3, height, width) for b in (self.min_batch, self.opt_batch, self.max_batch))


@dataclass(frozen=True)
class ShapeProfile:
    """Optimisation profile over (batch, H, W) of an engine built from a dynamic-size graph.

    `min`, `opt`, `max`: (batch, height, width) with min <= opt <= max on every axis.
    """

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def __post_init__(self):
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if len(v) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in v):
                raise InputError(f"profile {name} shape {v!r}: expected (batch, height, width), positive ints")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise InputError(f"profile shapes must satisfy min <= opt <= max on batch, H and W; got min "
                             f"{_bhw(self.min)}, opt {_bhw(self.opt)}, max {_bhw(self.max)}")

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes (batch, 3, H, W), as ``IOptimizationProfile.set_shape`` takes them."""
        return tuple((b, 3, h, w) for b, h, w in (self.min, self.opt, self.max))

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (batch, height, width), self.max, strict=True))

    def describe(self) -> str:
        (b0, h0, w0), (b1, h1, w1) = self.min, self.max
        return f"batch {b0}..{b1}, H {h0}..{h1}, W {w0}..{w1}"

    def as_list(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]


def _bhw(v) -> str:
    return "x".join(map(str, v))


def parse_shape(text: str, flag: str) -> tuple[int, int, int]:
    """"1x224x336" -> (1, 224, 336) as (batch, H, W); `flag` names the option in the error."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"{flag} {text!r}: expected BxHxW (batch x height x width in pixels), e.g. 1x224x224")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def bucket_profiles(sizes, patch_size: int, *, min_batch: int = 1, opt_batch: int = 1,
                    max_batch: int = 8) -> tuple[ShapeProfile, ...]:
    """One profile per size bucket (H, W), smallest area first: bucket i accepts every H <= H_i, W <= W_i down to
    the patch size, and is tuned for (opt_batch, H_i, W_i); `select_profile` takes the first bucket that fits."""
    sizes = sorted({(int(h), int(w)) for h, w in sizes}, key=lambda s: (s[0] * s[1], s))
    if not sizes:
        raise InputError("--size-buckets names no size; give HxW[,HxW...], e.g. 224x224,480x640")
    for h, w in sizes:
        if h < patch_size or w < patch_size:
            raise InputError(f"size bucket {h}x{w} is smaller than the patch size {patch_size}")
    return tuple(ShapeProfile((min_batch, patch_size, patch_size), (opt_batch, h, w), (max_batch, h, w))
                 for h, w in sizes)


def select_profile(profiles, batch: int, height: int, width: int) -> int:
    """Index of the first profile containing (batch, H, W); `InputError` naming the built range otherwise."""
    for i, p in enumerate(profiles):
        if p.contains(batch, height, width):
            return i
    built = "; ".join(f"profile {i}: {p.describe()}" for i, p in enumerate(profiles))
    raise InputError(f"input batch {batch} of {height}x{width} images is outside the TensorRT engine's shape "
                     f"profiles ({built}); resize the images into that range or rebuild the engine with a wider "
                     "--max-shape / more --size-buckets")


def engine_fields(onnx_sha256: str, trt_ver: str, gpu: dict, precision: str, typing: str, profile: Profile,
                  height: int, width: int, opt_level: int | None = None, shape_profiles=None) -> dict:
    """The fields an engine is keyed by and checked against. With `shape_profiles` (a dynamic-size engine) the
    profile set replaces the batch profile and H, W are "dynamic"."""
    fields = {
        "onnx_sha256": onnx_sha256, "tensorrt": trt_ver, "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"], "precision": precision, "typing": typing,
        "profile": [profile.min_batch, profile.opt_batch, profile.max_batch], "height": height, "width": width,
        "builder_optimization_level": opt_level,
    }
    if shape_profiles:
        fields.update(profile=[p.as_list() for p in shape_profiles], height="dynamic", width="dynamic")
    return fields


def check_engine_meta(meta: dict, expected: dict) -> list[str]:
    """Mismatches between a cached engine's recorded fields and what this system needs (empty: usable)."""
    out = []
    for k, v in expected.items():
        if meta.get(k) != v:
            out.append(f"{k}: engine has {meta.get(k)!r}, need {v!r}")
    return out


# ------------------------------------------------------------------------------------------------- build
def _progress_monitor(trt, stream=None):
    """An `IProgressMonitor` printing build phases with elapsed time (TensorRT >= 10.0)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._t0 = time.perf_counter()
            self._depth: dict[str, int] = {}
            self._last = 0.0

        def _say(self, text: str) -> None:
            print(f"[tensorrt {time.perf_counter() - self._t0:7.1f}s] {text}", file=stream or sys.stderr,
                  flush=True)

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name] = depth
            self._say(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            now = time.perf_counter()
            if now - self._last > 5.0:  # a heartbeat, not a line per tactic
                self._last = now
                self._say(f"{'  ' * self._depth.get(phase_name, 0)}{phase_name}: step {step + 1}")
            return True  # keep building

        def phase_finish(self, phase_name):
            self._say(f"{'  ' * self._depth.pop(phase_name, 0)}{phase_name} done")

    return _Monitor()


def build_engine(onnx_path, *, precision: str = "fp32", profile: Profile = Profile(), height: int, width: int,
                 strongly_typed: bool | None = None, timing_cache_path=None, workspace_bytes: int | None = None,
                 opt_level: int | None = None, progress: bool = True, trt=None, shape_profiles=None) -> bytes:
    """Parse `onnx_path` and build a serialized engine (bytes). `onnx_path` must be the graph `build_plan` names
    (``onnx_precision``): fp32 for weak typing, the fp16 graph for strongly typed fp16. `shape_profiles`
    (`ShapeProfile`s, for a dynamic-size graph): one optimisation profile each, in order, instead of the batch
    `profile` at (height, width)."""
    trt = trt or import_tensorrt()
    plan = build_plan(trt, precision, strongly_typed)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    for name in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if plan["pin_fp32"]:
        pinned = {getattr(trt.LayerType, t) for t in plan["pin_fp32"]}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in pinned:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    for shapes in ([p.shapes() for p in shape_profiles] if shape_profiles else [profile.shapes(height, width)]):
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(INPUT_NAME, *shapes)
        config.add_optimization_profile(opt_profile)
    timing = None
    if timing_cache_path is not None:
        data = Path(timing_cache_path).read_bytes() if Path(timing_cache_path).is_file() else b""
        timing = config.create_timing_cache(data)
        config.set_timing_cache(timing, ignore_mismatch=False)
    if progress:
        monitor = _progress_monitor(trt)
        if monitor is not None:
            config.progress_monitor = monitor
        ranges = "; ".join(p.describe() for p in shape_profiles) if shape_profiles else \
            f"batch {profile.min_batch}..{profile.max_batch}"
        print(f"dinofeat: building a TensorRT {plan['version']} engine ({precision}, {plan['typing']} typing, "
              f"{ranges}) from {onnx_path}; this takes minutes",
              file=sys.stderr, flush=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if timing is not None:
        atomic_write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def recording_logger(trt, keep: int = 32):
    """A TensorRT logger that prints warnings and errors to stderr (as ``trt.Logger(WARNING)``) and keeps the last
    `keep` of them in ``.messages``, so a failed call can raise with TensorRT's own words (`last_messages`)."""
    from collections import deque

    base = getattr(trt, "ILogger", None)
    if base is None:  # pragma: no cover - every TensorRT >= 8 has ILogger
        logger = trt.Logger(trt.Logger.WARNING)
        logger.messages = deque(maxlen=keep)
        return logger

    class _Recording(base):
        def __init__(self):
            base.__init__(self)
            self.messages = deque(maxlen=keep)

        def log(self, severity, msg):
            if int(severity) <= int(base.Severity.WARNING):
                self.messages.append(str(msg))
                print(f"[tensorrt] {msg}", file=sys.stderr, flush=True)

    return _Recording()


def last_messages(logger, n: int = 3) -> str:
    """The last `n` messages a `recording_logger` kept, joined for an error text ("" when none)."""
    msgs = list(getattr(logger, "messages", ()))[-n:]
    return ("; TensorRT said: " + " | ".join(msgs)) if msgs else "; TensorRT logged nothing (see its log level)"


def deserialize(engine_bytes: bytes, trt=None, logger=None):
    """`ICudaEngine` from bytes, or None when this TensorRT/GPU refuses it."""
    trt = trt or import_tensorrt()
    runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    return (engine, runtime) if engine is not None else (None, runtime)


def get_engine(onnx_path, *, precision: str, profile: Profile, height: int, width: int, device=None,
               strongly_typed: bool | None = None, cache_dir=None, progress: bool = True,
               opt_level: int | None = None, workspace_bytes: int | None = None, trt=None, logger=None,
               shape_profiles=None):
    """Load the cached engine for this ONNX file and system, building (and caching) it when needed.

    `shape_profiles`: `ShapeProfile`s for a dynamic-size graph (one engine, one profile each; the cache keys on
    the profile set), else the batch `profile` at the graph's fixed (height, width).

    `logger`: the runtime's logger (e.g. `recording_logger`); execution errors of the engine's contexts go there.
    Returns ``(engine, runtime, manifest)``; the runtime must outlive the engine.
    """
    trt = trt or import_tensorrt()
    plan = build_plan(trt, precision, strongly_typed)
    gpu = gpu_identity(device)
    shape_profiles = tuple(shape_profiles) if shape_profiles else None
    fields = engine_fields(cache.sha256_file(onnx_path), plan["version"], gpu, precision, plan["typing"], profile,
                           height, width, opt_level, shape_profiles)
    directory = cache.cache_subdir("trt", cache_dir)
    key = cache.make_key(fields)
    name = f"{Path(onnx_path).stem}_{key}.engine"
    with cache.entry_lock(directory, key):  # one build per key, also across processes
        return _engine_get_or_build(trt, plan, gpu, fields, directory, key, name, onnx_path, precision=precision,
                                    profile=profile, height=height, width=width, strongly_typed=strongly_typed,
                                    progress=progress, opt_level=opt_level, workspace_bytes=workspace_bytes,
                                    logger=logger, shape_profiles=shape_profiles)


def _engine_get_or_build(trt, plan, gpu, fields, directory, key, name, onnx_path, *, precision, profile, height,
                         width, strongly_typed, progress, opt_level, workspace_bytes, logger=None,
                         shape_profiles=None):
    found = cache.lookup(directory, key)
    if found is not None:
        problems = check_engine_meta(found["meta"], fields)
        if not problems:
            engine, runtime = deserialize(Path(found["paths"][found["meta"]["engine"]]).read_bytes(), trt, logger)
            if engine is not None:
                return engine, runtime, found
            problems = ["TensorRT could not deserialize it"]
        print(f"dinofeat: refusing cached TensorRT engine {key} ({'; '.join(problems)}); rebuilding",
              file=sys.stderr)
        cache.remove(directory, key, found["files"])
    timing = directory / f"timing_{plan['version']}_{gpu['name'].replace(' ', '_')}_sm{gpu['compute_capability']}.cache"
    data = build_engine(onnx_path, precision=precision, profile=profile, height=height, width=width,
                        strongly_typed=strongly_typed, timing_cache_path=timing, progress=progress,
                        opt_level=opt_level, workspace_bytes=workspace_bytes, trt=trt,
                        shape_profiles=shape_profiles)
    manifest = cache.store(directory, key, {name: data}, {"engine": name, "onnx": str(onnx_path), **fields})
    engine, runtime = deserialize(data, trt, logger)
    if engine is None:
        raise RuntimeError("TensorRT built an engine it cannot deserialize; delete the cache and retry")
    return engine, runtime, manifest


def load_engine_file(path, *, expected: dict | None = None, trt=None):
    """Load a user-provided engine file; with its ``.json`` manifest beside it, refuse one built for another
    TensorRT / GPU / precision (`expected` fields) with an `InputError` instead of letting TensorRT crash."""
    import json

    trt = trt or import_tensorrt()
    path = Path(path)
    side = path.with_suffix(path.suffix + ".json")
    if expected is not None and side.is_file():
        problems = check_engine_meta(json.loads(side.read_text(encoding="utf-8")), expected)
        if problems:
            raise InputError(f"engine {path} does not match this system ({'; '.join(problems)}); rebuild it with "
                             f"`dinofeat export --tensorrt-engine`")
    engine, runtime = deserialize(path.read_bytes(), trt)
    if engine is None:
        raise InputError(f"TensorRT {trt.__version__} cannot load engine {path} (built by another TensorRT version "
                         "or for another GPU); rebuild it on this machine")
    return engine, runtime


__all__ = [
    "INSTALL_HINT", "PINNED_FP32_LAYER_TYPES", "Profile", "ShapeProfile", "bucket_profiles", "build_engine",
    "build_plan", "check_engine_meta", "parse_shape", "select_profile",
    "deserialize", "engine_fields", "get_engine", "gpu_identity", "has_weak_typing", "import_tensorrt",
    "last_messages", "load_engine_file", "recording_logger", "trt_version",
]
