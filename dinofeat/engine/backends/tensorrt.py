"""Native TensorRT backend: the exported graph as a TensorRT engine, run with ``execute_async_v3``.

Per (H, W, request): export the ONNX (`dinofeat.export.onnx.get_onnx`, the plain TensorRT-clean graph in the
precision `build_plan` asks for), build or load the cached engine (`dinofeat.export.tensorrt.get_engine`) and keep
one execution context. `run` binds tensors by address -- the input batch and freshly allocated torch outputs on
the device -- and enqueues on the caller's current torch stream (``torch.cuda.current_stream()``, which the caller
controls with ``with torch.cuda.stream(s):``); nothing is synchronised or copied to the host, so the descriptor
kernels that follow on the same stream read the ViT outputs in place. `execute(...)` does the same for raw device
pointers (torch or CuPy arrays) for callers that manage their own memory.

``cuda_graphs=True`` captures one CUDA graph per (batch, H, W, request) after a first eager run (TensorRT's
documented requirement) and replays it; inputs are copied into the captured static buffer and outputs cloned out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import BackendUnavailableError, InputError
from ...export.model import Request, StridedViT

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


@dataclass
class _Engine:
    engine: object
    runtime: object
    context: object
    output_names: list
    output_dtypes: dict
    manifest: dict
    graphs: dict = field(default_factory=dict)


class TensorRTBackend:
    """`Backend` running TensorRT engines built from the exported graph (see the module docstring).

    Args:
        model: fp32 CPU `StridedViT` with weights loaded.
        device: a CUDA device.
        precision: "fp32" or "fp16".
        weights_id: SHA-256 of the weights (ONNX cache key; the engine key hashes the ONNX file).
        max_batch / opt_batch: the optimisation profile of the batch axis (min 1).
        cuda_graphs: capture and replay CUDA graphs for fixed shapes.
        strongly_typed: force strong (True) or weak (False) typing; default: weak on 10.x, strong on 11.x.
    """

    name = "tensorrt"

    def __init__(self, model: StridedViT, device, precision: str = "fp32", weights_id: str = "", *,
                 max_batch: int = 8, opt_batch: int = 1, cuda_graphs: bool = False,
                 strongly_typed: bool | None = None, cache_dir=None, progress: bool = True,
                 opt_level: int | None = None, workspace_bytes: int | None = None):
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
        self.cuda_graphs = bool(cuda_graphs)
        self.cache_dir = cache_dir
        self.progress = progress
        self.opt_level = opt_level
        self.workspace_bytes = workspace_bytes
        self._engines: dict[tuple, _Engine] = {}

    def __repr__(self) -> str:
        return (f"TensorRTBackend(device={str(self.device)!r}, precision={self.precision!r}, "
                f"typing={self.plan['typing']!r}, tensorrt={self.plan['version']})")

    # ------------------------------------------------------------------------------------------------------
    def engine_for(self, height: int, width: int, request: Request) -> _Engine:
        key = (int(height), int(width), request)
        if key not in self._engines:
            self._engines[key] = self._load(*key)
        return self._engines[key]

    def _load(self, height: int, width: int, request: Request) -> _Engine:
        from ...export import tensorrt as trt_export
        from ...export.onnx import get_onnx

        onnx_path = get_onnx(self.model, request, height, width, precision=self.plan["onnx_precision"],
                             weights_id=self.weights_id, variant="plain", cache_dir=self.cache_dir,
                             progress=self.progress)
        with torch.cuda.device(self.device):
            engine, runtime, manifest = trt_export.get_engine(
                onnx_path, precision=self.precision, profile=self.profile, height=height, width=width,
                device=self.device, strongly_typed=self.strongly_typed, cache_dir=self.cache_dir,
                progress=self.progress, opt_level=self.opt_level, workspace_bytes=self.workspace_bytes,
                trt=self.trt)
            context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        order = request.output_names()
        if sorted(outputs) != sorted(order):
            raise RuntimeError(f"engine outputs {outputs} do not match the request {order}")
        dtypes = {n: _TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in order}
        return _Engine(engine, runtime, context, order, dtypes, manifest)

    # ------------------------------------------------------------------------------------------------------
    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]:
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        b = int(batch.shape[0])
        if not 1 <= b <= self.profile.max_batch:
            raise InputError(f"batch of {b} images is outside the TensorRT profile 1..{self.profile.max_batch}; "
                             f"create the backend with max_batch >= {b}")
        eng = self.engine_for(height, width, request)
        x = batch.to(device=self.device, dtype=torch.float32, non_blocking=True).contiguous()
        stream = torch.cuda.current_stream(self.device)
        if self.cuda_graphs:
            return self._run_graph(eng, x, stream)
        outs = self._bind(eng, x)
        if not eng.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return {k: v if v.dtype == torch.float32 else v.float() for k, v in outs.items()}

    def _bind(self, eng: _Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = eng.context
        ctx.set_input_shape("images", tuple(x.shape))
        ctx.set_tensor_address("images", x.data_ptr())
        outs = {}
        for name in eng.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            t = torch.empty(shape, dtype=eng.output_dtypes[name], device=self.device)
            ctx.set_tensor_address(name, t.data_ptr())
            outs[name] = t
        return outs

    def _run_graph(self, eng: _Engine, x: torch.Tensor, stream) -> dict[str, torch.Tensor]:
        key = tuple(x.shape)
        if key not in eng.graphs:
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            outs = self._bind(eng, static_in)
            # TensorRT: run once eagerly before capturing, so deferred allocations and shape-dependent state settle.
            if not eng.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed before CUDA-graph capture")
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.Stream(self.device)
            capture.wait_stream(stream)
            with torch.cuda.graph(graph, stream=capture):
                eng.context.execute_async_v3(capture.cuda_stream)
            stream.wait_stream(capture)
            eng.graphs[key] = (graph, static_in, outs)
        graph, static_in, outs = eng.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return {k: v.float() if v.dtype != torch.float32 else v.clone() for k, v in outs.items()}

    # ------------------------------------------------------------------------------------------------------
    def execute(self, height: int, width: int, request: Request, images, outputs: dict, *, batch: int,
                stream: int | None = None) -> None:
        """Enqueue one inference on raw device memory: `images` (batch, 3, H, W) float32 and `outputs`
        {name: buffer} of the engine's output shapes/dtypes (torch tensors, CuPy arrays or int pointers), on
        `stream` (a ``cudaStream_t`` as int; default: torch's current stream). Returns without synchronising."""
        eng = self.engine_for(height, width, request)
        ctx = eng.context
        ctx.set_input_shape("images", (int(batch), 3, int(height), int(width)))
        ctx.set_tensor_address("images", device_pointer(images))
        missing = set(eng.output_names) - set(outputs)
        if missing:
            raise InputError(f"outputs is missing buffers for {sorted(missing)}")
        for name in eng.output_names:
            ctx.set_tensor_address(name, device_pointer(outputs[name]))
        handle = stream if stream is not None else torch.cuda.current_stream(self.device).cuda_stream
        if not ctx.execute_async_v3(int(handle)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")


__all__ = ["TensorRTBackend", "device_pointer"]
