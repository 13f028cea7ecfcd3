"""Native TensorRT backend: the exported graph as a TensorRT engine, run with ``execute_async_v3``.

Per (H, W, request): export the ONNX (`dinofeat.export.onnx.get_onnx`, the plain TensorRT-clean graph in the
precision `build_plan` asks for) and build or load the cached engine (`dinofeat.export.tensorrt.get_engine`).
`run` binds tensors by address -- the input batch and freshly allocated torch outputs on the device -- and
enqueues on the caller's current torch stream (``torch.cuda.current_stream()``, which the caller controls with
``with torch.cuda.stream(s):``); nothing is synchronised or copied to the host, so the descriptor kernels that
follow on the same stream read the ViT outputs in place. `execute(...)` does the same for raw device pointers
(torch or CuPy arrays) for callers that manage their own memory.

Concurrency and devices: every call runs under a device guard for the engine's GPU (whatever the caller's current
device is). Each stream gets its own execution context (a context's scratch memory and bindings belong to one
stream at a time), created on first use; a lock per context covers bind + enqueue, so threads sharing a stream
do not interleave their bindings. Every TensorRT return value is checked (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``, context creation); a failure raises `BackendError` with the last
TensorRT log messages.

``cuda_graphs=True`` captures one CUDA graph per (batch shape, stream) with its own execution context and static
input/output buffers (a captured graph is tied to its context's shapes and memory), after a first eager run
(TensorRT's documented requirement). A capture whose ``execute_async_v3`` fails raises `BackendError`; nothing is
stored, so an empty graph is never replayed. Inputs are copied into the static buffer and outputs cloned out on
the caller's stream.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from ...errors import BackendError, BackendUnavailableError, InputError
from ...model.vit import Request, StridedViT
from .base import fp32_state_dict

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool}


def device_pointer(x) -> int:
    """Device address of a torch tensor or CuPy array (must be contiguous)."""
    if isinstance(x, torch.Tensor):
        if not x.is_contiguous():
            raise InputError("TensorRT bindings need contiguous tensors; call .contiguous() first")
        return int(x.data_ptr())
    data = getattr(x, "data", None)
    if data is not None and hasattr(data, "ptr"):  # CuPy ndarray
        flags = getattr(x, "flags", None)
        if flags is not None and not flags.c_contiguous:
            raise InputError("TensorRT bindings need C-contiguous CuPy arrays; use cupy.ascontiguousarray")
        return int(data.ptr)
    if isinstance(x, int):
        return x
    raise InputError(f"cannot bind {type(x).__name__} to TensorRT; pass a CUDA torch tensor, a CuPy array or an "
                     "int device pointer")


class CudaOps:
    """The CUDA calls the backend makes, in one place (tests run the TensorRT logic on the CPU through a stand-in)."""

    def device_guard(self, device: torch.device):
        return torch.cuda.device(device)

    def current_stream(self, device: torch.device):
        return torch.cuda.current_stream(device)

    def new_stream(self, device: torch.device):
        return torch.cuda.Stream(device)

    def to_device(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device=device, dtype=torch.float32, non_blocking=True).contiguous()

    def empty(self, shape, dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device)

    def graph(self):
        return torch.cuda.CUDAGraph()

    def capture(self, graph, stream):
        return torch.cuda.graph(graph, stream=stream)


@dataclass
class _Context:
    """One execution context with the lock that covers its bind + enqueue."""

    context: object
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Graph:
    """A captured CUDA graph with the context and static buffers it was captured on."""

    ctx: _Context
    graph: object
    static_in: torch.Tensor
    outs: dict


@dataclass
class _Engine:
    engine: object
    runtime: object
    logger: object
    output_names: list
    output_dtypes: dict
    manifest: dict
    profiles: tuple | None = None  # ShapeProfiles of a dynamic-size engine, None for a fixed-size one
    contexts: dict = field(default_factory=dict)  # (stream handle, profile index) -> _Context
    graphs: dict = field(default_factory=dict)  # (batch shape, stream handle) -> _Graph
    lock: threading.Lock = field(default_factory=threading.Lock)


class TensorRTBackend:
    """`Backend` running TensorRT engines built from the exported graph (see the module docstring).

    Args:
        model: fp32 CPU `StridedViT` with weights loaded.
        device: a CUDA device.
        precision: "fp32" (IEEE fp32: TensorRT's TF32 flag cleared), "tf32" (TF32 allowed) or "fp16".
        weights_id: SHA-256 of the weights (ONNX cache key; the engine key hashes the ONNX file).
        max_batch / opt_batch: the optimisation profile of the batch axis (min 1).
        cuda_graphs: capture and replay CUDA graphs for fixed shapes.
        strongly_typed: force strong (True) or weak (False) typing; default: weak on 10.0-10.11, strong from
            10.12 (weak typing deprecated) and on 11.x (removed).
        shape_profiles: `dinofeat.export.tensorrt.ShapeProfile`s (e.g. `bucket_profiles`): one engine per request
            from the dynamic-size graph, one optimisation profile each, selected per call; an input outside
            every profile raises `InputError` naming the built ranges. None: one engine per (H, W) (batch
            profile 1..max_batch).
    """

    name = "tensorrt"

    def __init__(self, model: StridedViT, device, precision: str = "fp32", weights_id: str = "", *,
                 max_batch: int = 8, opt_batch: int = 1, cuda_graphs: bool = False,
                 strongly_typed: bool | None = None, cache_dir=None, progress: bool = True,
                 opt_level: int | None = None, workspace_bytes: int | None = None, cuda_ops: CudaOps | None = None,
                 shape_profiles=None):
        from ...export import tensorrt as trt_export

        self.trt = trt_export.import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailableError(f"{trt_export.INSTALL_HINT} (device={str(self.device)!r}: TensorRT runs "
                                          "on a CUDA device only)")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.plan = trt_export.build_plan(self.trt, precision, strongly_typed)
        self.precision = precision
        self.strongly_typed = strongly_typed
        self.model = model.float().cpu().eval()
        self.weights_id = weights_id
        self.profile = trt_export.Profile(1, int(opt_batch), int(max_batch))
        self.shape_profiles = tuple(shape_profiles) if shape_profiles else None
        for p in self.shape_profiles or ():
            if not isinstance(p, trt_export.ShapeProfile):
                raise InputError(f"shape_profiles holds {type(p).__name__}; pass dinofeat.export.tensorrt."
                                 "ShapeProfile values (e.g. from bucket_profiles)")
        self.cuda_graphs = bool(cuda_graphs)
        self.cache_dir = cache_dir
        self.progress = progress
        self.opt_level = opt_level
        self.workspace_bytes = workspace_bytes
        self.cuda = cuda_ops or CudaOps()
        self._engines: dict[tuple, _Engine] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TensorRTBackend(device={str(self.device)!r}, precision={self.precision!r}, "
                f"typing={self.plan['typing']!r}, tensorrt={self.plan['version']})")

    # ------------------------------------------------------------------------------------------------------
    def engine_for(self, height: int, width: int, request: Request) -> _Engine:
        key = (None, None, request) if self.shape_profiles else (int(height), int(width), request)
        with self._lock:
            if key not in self._engines:
                self._engines[key] = self._load(*key)
            return self._engines[key]

    def _load(self, height: int | None, width: int | None, request: Request) -> _Engine:
        from ...export import tensorrt as trt_export
        from ...export.onnx import get_onnx

        dynamic = height is None
        if dynamic:  # the dynamic graph, traced at the first profile's opt size
            height, width = self.shape_profiles[0].opt[1:]
        onnx_path = get_onnx(self.model, request, height, width, precision=self.plan["onnx_precision"],
                             weights_id=self.weights_id, variant="plain", cache_dir=self.cache_dir,
                             progress=self.progress, dynamic=dynamic)
        logger = trt_export.recording_logger(self.trt)
        with self.cuda.device_guard(self.device):
            engine, runtime, manifest = trt_export.get_engine(
                onnx_path, precision=self.precision, profile=self.profile, height=height, width=width,
                device=self.device, strongly_typed=self.strongly_typed, cache_dir=self.cache_dir,
                progress=self.progress, opt_level=self.opt_level, workspace_bytes=self.workspace_bytes,
                trt=self.trt, logger=logger, shape_profiles=self.shape_profiles)
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        order = request.output_names()
        if sorted(outputs) != sorted(order):
            raise BackendError(f"engine outputs {outputs} do not match the request {order}")
        dtypes = {n: _TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in order}
        return _Engine(engine, runtime, logger, order, dtypes, manifest, self.shape_profiles)

    def _new_context(self, eng: _Engine, profile: int = 0, handle: int = 0) -> _Context:
        context = eng.engine.create_execution_context()
        if context is None:
            raise BackendError(self._failed(eng, "create_execution_context (out of GPU memory?)"))
        if profile:  # a new context starts on profile 0
            self._check(context.set_optimization_profile_async(profile, handle), eng,
                        f"set_optimization_profile_async({profile})")
        return _Context(context)

    def _context(self, eng: _Engine, handle: int, profile: int = 0) -> _Context:
        """The execution context of stream `handle` on optimisation profile `profile` (created on first use)."""
        with eng.lock:
            if (handle, profile) not in eng.contexts:
                eng.contexts[(handle, profile)] = self._new_context(eng, profile, handle)
            return eng.contexts[(handle, profile)]

    def _profile_index(self, eng: _Engine, batch: int, height: int, width: int) -> int:
        from ...export.tensorrt import select_profile

        return select_profile(eng.profiles, batch, height, width) if eng.profiles else 0

    @staticmethod
    def _failed(eng: _Engine, what: str) -> str:
        from ...export.tensorrt import last_messages

        return f"TensorRT {what} failed{last_messages(eng.logger)}"

    def _check(self, ok, eng: _Engine, what: str) -> None:
        if not ok:
            raise BackendError(self._failed(eng, what))

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 CPU copy of the exported model's weights (for `Extractor.with_stride`)."""
        return fp32_state_dict(self.model)

    # ------------------------------------------------------------------------------------------------------
    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]:
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        b = int(batch.shape[0])
        if self.shape_profiles:
            from ...export.tensorrt import select_profile

            select_profile(self.shape_profiles, b, height, width)  # InputError naming the built ranges
        elif not 1 <= b <= self.profile.max_batch:
            raise InputError(f"batch of {b} images is outside the TensorRT profile 1..{self.profile.max_batch}; "
                             f"create the backend with max_batch >= {b}")
        eng = self.engine_for(height, width, request)
        with self.cuda.device_guard(self.device):
            x = self.cuda.to_device(batch, self.device)
            stream = self.cuda.current_stream(self.device)
            if self.cuda_graphs:
                return self._run_graph(eng, x, stream)
            ctx = self._context(eng, int(stream.cuda_stream), self._profile_index(eng, b, height, width))
            with ctx.lock:
                outs = self._bind(eng, ctx.context, x)
                self._check(ctx.context.execute_async_v3(stream.cuda_stream), eng, "execute_async_v3")
        return {k: v if v.dtype == torch.float32 else v.float() for k, v in outs.items()}

    def _bind(self, eng: _Engine, context, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(context.set_input_shape("images", tuple(x.shape)), eng,
                    f"set_input_shape('images', {tuple(x.shape)})")
        self._check(context.set_tensor_address("images", x.data_ptr()), eng, "set_tensor_address('images')")
        outs = {}
        for name in eng.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(int(d) < 0 for d in shape):
                raise BackendError(self._failed(eng, f"shape inference of {name!r} (got {shape})"))
            t = self.cuda.empty(shape, eng.output_dtypes[name], self.device)
            self._check(context.set_tensor_address(name, t.data_ptr()), eng, f"set_tensor_address({name!r})")
            outs[name] = t
        return outs

    def _run_graph(self, eng: _Engine, x: torch.Tensor, stream) -> dict[str, torch.Tensor]:
        key = (tuple(x.shape), int(stream.cuda_stream))
        with eng.lock:
            entry = eng.graphs.get(key)
        if entry is None:
            entry = self._capture(eng, x, stream)
            with eng.lock:
                entry = eng.graphs.setdefault(key, entry)
        with entry.ctx.lock:
            entry.static_in.copy_(x)
            entry.graph.replay()
            return {k: v.float() if v.dtype != torch.float32 else v.clone() for k, v in entry.outs.items()}

    def _capture(self, eng: _Engine, x: torch.Tensor, stream) -> _Graph:
        """A graph for x's shape on `stream`, with its own context and static buffers."""
        ctx = self._new_context(eng, self._profile_index(eng, *(int(d) for d in x.shape[:1] + x.shape[2:])),
                                int(stream.cuda_stream))
        static_in = self.cuda.empty(tuple(x.shape), torch.float32, self.device)
        static_in.copy_(x)
        outs = self._bind(eng, ctx.context, static_in)
        # TensorRT: run once eagerly before capturing, so deferred allocations and shape-dependent state settle.
        self._check(ctx.context.execute_async_v3(stream.cuda_stream), eng, "execute_async_v3 before capture")
        stream.synchronize()
        graph = self.cuda.graph()
        side = self.cuda.new_stream(self.device)
        side.wait_stream(stream)
        with self.cuda.capture(graph, side):
            ok = ctx.context.execute_async_v3(side.cuda_stream)
        stream.wait_stream(side)
        self._check(ok, eng, "execute_async_v3 during CUDA-graph capture")
        return _Graph(ctx, graph, static_in, outs)

    # ------------------------------------------------------------------------------------------------------
    def execute(self, height: int, width: int, request: Request, images, outputs: dict, *, batch: int,
                stream: int | None = None) -> None:
        """Enqueue one inference on raw device memory: `images` (batch, 3, H, W) float32 and `outputs`
        {name: buffer} of the engine's output shapes/dtypes (torch tensors, CuPy arrays or int pointers), on
        `stream` (a ``cudaStream_t`` as int; default: torch's current stream). Returns without synchronising."""
        eng = self.engine_for(height, width, request)
        missing = set(eng.output_names) - set(outputs)
        if missing:
            raise InputError(f"outputs is missing buffers for {sorted(missing)}")
        with self.cuda.device_guard(self.device):
            handle = int(stream if stream is not None else self.cuda.current_stream(self.device).cuda_stream)
            ctx = self._context(eng, handle, self._profile_index(eng, int(batch), int(height), int(width)))
            with ctx.lock:
                c = ctx.context
                shape = (int(batch), 3, int(height), int(width))
                self._check(c.set_input_shape("images", shape), eng, f"set_input_shape('images', {shape})")
                self._check(c.set_tensor_address("images", device_pointer(images)), eng,
                            "set_tensor_address('images')")
                for name in eng.output_names:
                    self._check(c.set_tensor_address(name, device_pointer(outputs[name])), eng,
                                f"set_tensor_address({name!r})")
                self._check(c.execute_async_v3(handle), eng, "execute_async_v3")


__all__ = ["CudaOps", "TensorRTBackend", "device_pointer"]
