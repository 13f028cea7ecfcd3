"""ONNX Runtime backend: the exported strided ViT on ORT's TensorRT, CUDA or CPU execution provider.

One session per (H, W, request), built on first use from the cached ONNX file (`dinofeat.export.onnx.get_onnx`):

* CPU (and CUDA without TensorRT EP): the transformer-fused graph (ORT ``Attention``/``SkipLayerNormalization``/
  ``BiasGelu``), verified against the plain graph when it is made; `optimize=False` uses the plain graph.
* TensorRT EP first: the plain graph (TensorRT cannot run ORT contrib ops), engines cached under
  ``<cache>/trt/ort``.

Providers are filtered by what the installed onnxruntime offers, in the order TensorRT EP -> CUDA EP -> CPU EP;
when the session ends up on a later provider than the best one asked for, a warning says which and why.
CPU sessions use threads = usable cores, ``ORT_ENABLE_ALL``, sequential execution and the CPU memory arena; GPU
sessions use one intra-op thread without spinning (the GPU does the work; spinning threads on every core would
only steal CPU from the rest of the process).
Inputs and outputs are bound with IOBinding to torch memory on the backend's device (CUDA: device pointers, no
host round-trip), so the descriptor kernels read the ViT outputs in place. One session serves every stream: it
computes on ORT's own stream, the caller's current torch stream is synchronised before the run (inputs ready) and
``run_with_iobinding`` returns when the outputs are complete.

Precision: ``fp32`` is IEEE fp32 on the GPU too: the CUDA EP gets ``use_tf32=0`` (ORT's default is 1, TF32
matmuls/convolutions on Ampere+, which miss the 1e-4 parity) and the TensorRT EP, which has no option to clear
TensorRT's TF32 flag, is not used for fp32. ``tf32`` is the explicit opt-in (CUDA EP ``use_tf32=1``, TensorRT EP
allowed); ``fp16`` runs the fp16 graph (TensorRT EP with ``trt_fp16_enable``, or the CUDA EP).

`create_session(...)` builds a bare session for (model, stride, H, W) for benchmarks and tools.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import BackendUnavailableError, InputError
from ...model.vit import Request, StridedViT
from .base import fp32_state_dict

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PRECISIONS = ("fp32", "tf32", "fp16")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "backend='onnxruntime' needs the onnxruntime package; install it with pip install 'dinofeat[onnx]' "
            "(CPU) or pip install onnxruntime-gpu (CUDA), or use backend='torch'"
        ) from None
    return onnxruntime


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, *, optimization: str = "all", profile: str | None = None,
                    gpu: bool = False):
    """Session options tuned for inference: threads = usable cores (intra-op), 1 inter-op thread, graph
    optimisation level `optimization` ("all" | "extended" | "basic" | "disabled"), sequential execution, CPU memory
    arena and memory-pattern planning on, spinning threads (lowest latency on dedicated cores).

    ``gpu=True`` (a CUDA / TensorRT EP session): one intra-op thread (unless `threads` says otherwise) and no
    spinning: the host threads only launch kernels, and spinning would burn every core while the GPU works."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads) if threads else (1 if gpu else usable_cores())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise InputError(f"optimization={optimization!r}: choose one of {', '.join(levels)}")
    so.graph_optimization_level = levels[optimization]
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if gpu else "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0" if gpu else "1")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return so


def cuda_provider_options(device_id: int, precision: str = "fp32") -> dict:
    """CUDA EP options: ``use_tf32`` is "1" only for precision="tf32" (ORT's own default is TF32 on)."""
    return {"device_id": int(device_id), "use_tf32": "1" if precision == "tf32" else "0"}


def tensorrt_provider_options(device_id: int, precision: str, trt_dir, *, height: int | None = None,
                              width: int | None = None, max_batch: int = 8) -> dict:
    """TensorRT EP options: engine + timing cache under `trt_dir`, fp16 for precision="fp16", a batch profile
    1..max_batch when (height, width) are known."""
    opts = {
        "device_id": int(device_id),
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(trt_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(trt_dir),
    }
    if height and width:
        shape = f"3x{height}x{width}"
        opts.update(trt_profile_min_shapes=f"images:1x{shape}", trt_profile_opt_shapes=f"images:1x{shape}",
                    trt_profile_max_shapes=f"images:{max_batch}x{shape}")
    return opts


def select_providers(device: torch.device, precision: str = "fp32", *, height: int | None = None,
                     width: int | None = None, max_batch: int = 8, cache_dir=None, use_tensorrt: bool = True,
                     available=None) -> list:
    """Provider list (with options) for `device`, filtered by what the installed onnxruntime offers
    (`available`: default ``onnxruntime.get_available_providers()``).

    CPU device: CPU EP only. CUDA device: TensorRT EP (engine + timing cache under ``<cache>/trt/ort``, profile for
    batch 1..max_batch) if offered, `use_tensorrt` and precision is not "fp32" (the TensorRT EP cannot clear
    TensorRT's TF32 flag), then CUDA EP (`cuda_provider_options`), then CPU EP. Warns when a GPU provider the device
    needs is missing.
    """
    if available is None:
        available = import_onnxruntime().get_available_providers()
    available = set(available)
    device = torch.device(device)
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    providers: list = []
    if use_tensorrt and precision != "fp32" and "TensorrtExecutionProvider" in available:
        from ...export import cache

        trt_dir = cache.cache_subdir("trt", cache_dir) / "ort"
        trt_dir.mkdir(parents=True, exist_ok=True)
        providers.append(("TensorrtExecutionProvider", tensorrt_provider_options(
            index, precision, trt_dir, height=height, width=width, max_batch=max_batch)))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", cuda_provider_options(index, precision)))
    else:
        warnings.warn(
            f"device={str(device)!r} but this onnxruntime offers no CUDAExecutionProvider (it offers "
            f"{sorted(available)}): falling back to the CPU provider. Install onnxruntime-gpu for CUDA.",
            RuntimeWarning, stacklevel=3)
    providers.append("CPUExecutionProvider")
    return providers


def _on_gpu(providers: list) -> bool:
    return _provider_name(providers[0]) != "CPUExecutionProvider"


def _provider_name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


def _warn_on_fallback(session, requested: list) -> None:
    used = session.get_providers()
    best = _provider_name(requested[0])
    if best not in used:
        warnings.warn(
            f"onnxruntime could not use {best} (missing libraries or an unsupported graph; see onnxruntime's log) "
            f"and runs this session on {used[0]}", RuntimeWarning, stacklevel=3)


@dataclass
class _Session:
    session: object
    onnx_path: str
    providers: list
    output_names: list
    output_shapes: dict
    on_gpu: bool


class OnnxRuntimeBackend:
    """`Backend` running exported graphs on ONNX Runtime (see the module docstring).

    Args:
        model: fp32 CPU `StridedViT` with weights loaded (exported per (H, W, request) on first use).
        device: torch device; "cuda[:N]" uses the TensorRT/CUDA EPs, "cpu" the CPU EP.
        precision: "fp32" (IEEE fp32 on the GPU too), "tf32" (CUDA only: TF32 matmuls, opt-in) or "fp16" (CUDA
            only: the fp16 graph with fp32 LayerNorm/Softmax).
        weights_id: SHA-256 of the weights (cache key).
        optimize: use the ORT transformer-fused graph where the provider can run it.
        threads: CPU intra-op threads (default: usable cores).
        cache_dir: cache root (default: `dinofeat.model.weights.cache_dir()`).
        use_tensorrt: put the TensorRT EP first when onnxruntime offers it (CUDA devices).
        max_batch: largest batch of the TensorRT EP profile.
    """

    name = "onnxruntime"

    def __init__(self, model: StridedViT, device, precision: str = "fp32", weights_id: str = "", *,
                 optimize: bool = True, threads: int | None = None, cache_dir=None, use_tensorrt: bool = True,
                 max_batch: int = 8, progress: bool = False):
        self.ort = import_onnxruntime()
        self.device = torch.device(device)
        if precision not in PRECISIONS:
            raise InputError(f"precision={precision!r} is not available with backend='onnxruntime'; choose fp32 "
                             f"(CPU/CUDA) or fp16 (CUDA), or use backend='torch' for bf16")
        if precision != "fp32" and self.device.type != "cuda":
            raise InputError(f"precision={precision!r} with backend='onnxruntime' needs device='cuda' (ONNX "
                             "Runtime's CPU kernels are float32); use precision='fp32' on the CPU")
        if self.device.type not in ("cpu", "cuda"):
            raise InputError(f"device={str(self.device)!r} is not supported by backend='onnxruntime'; use cpu/cuda")
        self.precision = precision
        self.model = model.float().cpu().eval()
        self.weights_id = weights_id
        self.optimize = optimize
        self.threads = threads
        self.cache_dir = cache_dir
        self.use_tensorrt = use_tensorrt
        self.max_batch = int(max_batch)
        self.progress = progress
        self._sessions: dict[tuple, _Session] = {}
        self._files: dict[tuple, str] = {}  # (H, W, outputs) -> exported graph given by the user (`add_graph`)

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend(device={str(self.device)!r}, precision={self.precision!r})"

    def add_graph(self, path, *, flag: str = "onnx") -> tuple[int, int, tuple[str, ...]]:
        """Run the graph exported to `path` (`dinofeat export`) for its input size and outputs instead of exporting
        one. It must come from this model, stride and weights (its `dinofeat.*` metadata); returns (H, W, outputs).
        Once any graph is given, a size / output set without one is an InputError (no silent export)."""
        from pathlib import Path

        file = Path(path)
        if not file.is_file():
            raise InputError(f"{flag}={str(path)!r}: file not found; write one with `dinofeat export ... -o FILE`")
        try:
            meta = self.ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]) \
                .get_modelmeta().custom_metadata_map
        except Exception as exc:  # noqa: BLE001 - any load failure is the file's
            raise InputError(f"{flag}={str(path)!r} is not a readable ONNX model ({type(exc).__name__}: {exc})") \
                from None
        want = {"dinofeat.model": self.model.spec.name, "dinofeat.stride": str(self.model.stride),
                "dinofeat.weights_sha256": self.weights_id}
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise InputError(f"{flag}={str(path)!r} was exported for {got['dinofeat.model']} stride "
                             f"{got['dinofeat.stride']} (weights sha256 {str(got['dinofeat.weights_sha256'])[:12]}), "
                             f"but this run uses {want['dinofeat.model']} stride {want['dinofeat.stride']} (weights "
                             f"sha256 {self.weights_id[:12]}); export it again with the same model, stride and "
                             "weights")
        key = (int(meta["dinofeat.height"]), int(meta["dinofeat.width"]), tuple(meta["dinofeat.outputs"].split(",")))
        self._files[key] = str(file)
        return key

    # ------------------------------------------------------------------------------------------------------
    def session_for(self, height: int, width: int, request: Request) -> _Session:
        """The (cached) session for this input size and request (one for every stream and thread)."""
        key = (int(height), int(width), request)
        if key not in self._sessions:
            self._sessions[key] = self._build(int(height), int(width), request)
        return self._sessions[key]

    def _build(self, height: int, width: int, request: Request) -> _Session:
        from ...export.onnx import output_shapes

        providers = select_providers(self.device, self.precision, height=height, width=width,
                                     max_batch=self.max_batch, cache_dir=self.cache_dir,
                                     use_tensorrt=self.use_tensorrt)
        trt_first = _provider_name(providers[0]) == "TensorrtExecutionProvider"
        graph_precision = "fp16" if self.precision == "fp16" else "fp32"
        variant = "ort" if (self.optimize and not trt_first and graph_precision == "fp32") else "plain"
        from ... import progress as status

        given = self._files.get((height, width, tuple(request.output_names())))
        if self._files and given is None:
            have = "; ".join(f"{h}x{w} {','.join(o)}" for h, w, o in self._files)
            raise InputError(f"onnx: no given graph has input {height}x{width} with outputs "
                             f"{','.join(request.output_names())} (given: {have}); export one with `dinofeat export "
                             f"--model {self.model.spec.name} --stride {self.model.stride} --size {height}x{width} ...`")
        what = f"the given graph {given}" if given else (
            f"the ONNX graph for {height}x{width} ({variant}, {graph_precision}; exported and checked once, then "
            "cached)")
        with status.step(f"{what} and its ONNX Runtime session"):
            path = given or _graph(self.model, request, height, width, graph_precision, self.weights_id, variant,
                                   self.cache_dir, self.progress)
            so = session_options(self.threads, gpu=_on_gpu(providers))
            session = self.ort.InferenceSession(str(path), so, providers=providers)
        _warn_on_fallback(session, providers)
        on_gpu = session.get_providers()[0] != "CPUExecutionProvider"
        names = [o.name for o in session.get_outputs()]
        if names != request.output_names():
            raise RuntimeError(f"ONNX file {path} has outputs {names}, expected {request.output_names()}; delete it")
        return _Session(session, str(path), providers, names, output_shapes(self.model, request, height, width),
                        on_gpu)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 CPU copy of the exported model's weights (for `Extractor.with_stride`)."""
        return fp32_state_dict(self.model)

    # ------------------------------------------------------------------------------------------------------
    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]:
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        s = self.session_for(height, width, request)
        # Buffers live where the session computes: the device for GPU providers, host for the CPU EP.
        where = self.device if s.on_gpu else torch.device("cpu")
        x = batch.to(device=where, dtype=torch.float32).contiguous()
        b = int(x.shape[0])
        outs = {name: torch.empty((b, *s.output_shapes[name]), dtype=torch.float32, device=where)
                for name in s.output_names}
        binding = s.session.io_binding()
        dev_type, dev_id = ("cuda", where.index if where.index is not None else torch.cuda.current_device()) \
            if where.type == "cuda" else ("cpu", 0)
        binding.bind_input("images", dev_type, dev_id, np.float32, list(x.shape), x.data_ptr())
        for name, t in outs.items():
            binding.bind_output(name, dev_type, dev_id, np.float32, list(t.shape), t.data_ptr())
        if where.type == "cuda":
            torch.cuda.current_stream(where).synchronize()  # ORT computes on its own stream: inputs must be ready
        s.session.run_with_iobinding(binding)  # returns when the outputs are complete
        if where != self.device:
            outs = {k: v.to(self.device) for k, v in outs.items()}
        return outs


def _graph(vit, request, height, width, precision, weights_id, variant, cache_dir, progress):
    """Path of the ONNX file to run; an ORT-fused graph that fails its output check falls back to the plain one."""
    from ...export.onnx import GraphCheckError, get_onnx

    kw = dict(precision=precision, weights_id=weights_id, cache_dir=cache_dir, progress=progress)
    if variant == "ort":
        try:
            return get_onnx(vit, request, height, width, variant="ort", **kw)
        except GraphCheckError as e:
            warnings.warn(f"{e}; running the plain graph instead", RuntimeWarning, stacklevel=3)
    return get_onnx(vit, request, height, width, variant="plain", **kw)


def create_session(model="dino_vits8", stride: int = 4, height: int = 224, width: int = 224, *, weights=None,
                   layer=9, facet: str = "key", saliency: bool = False, precision: str = "fp32",
                   optimize: bool = True, device="cpu", threads: int | None = None, cache_dir=None,
                   rope_periods: str = "checkpoint", pos_interp: str | None = None, progress: bool = False):
    """An `onnxruntime.InferenceSession` for (model, stride, H, W), for benchmarks and tools.

    Args:
        model: zoo name (weights from `weights=`, see `dinofeat.model.weights.load_weights`) or a loaded `StridedViT`.
        layer, facet, saliency: the outputs (layer may be a list).
        optimize: the ORT transformer-fused graph (fp32) instead of the plain one.
        rope_periods: RoPE models loaded by name: "checkpoint" | "recompute" (`dinofeat.model.vit.ROPE_PERIODS`).
        pos_interp: learned position tables, models loaded by name: None (the zoo's) | "offset" | "size" |
            "antialias" (`dinofeat.model.vit.POS_INTERP`).

    Returns:
        ``(session, input_name, output_names)``; feed ``{input_name: (B, 3, H, W) float32 array}``.
    """
    from ...export.onnx import INPUT_NAME, weights_sha256
    from ...model.vit import build_vit, check_request

    if isinstance(model, StridedViT):
        vit, weights_id = model.float().cpu().eval(), weights_sha256(model)
    else:
        from ...model.weights import load_weights
        from ...model.zoo import get_model_spec

        spec = get_model_spec(model)
        loaded = load_weights(spec, weights, progress=progress)
        vit = build_vit(spec, stride, loaded, rope_periods, pos_interp)
        weights_id = loaded.sha256
    layers = check_request(vit.spec, layer, facet)
    request = Request(facets=tuple((lyr, facet) for lyr in dict.fromkeys(layers)), saliency=bool(saliency))
    device = torch.device(device)
    providers = select_providers(device, precision, height=height, width=width, cache_dir=cache_dir)
    trt_first = _provider_name(providers[0]) == "TensorrtExecutionProvider"
    graph_precision = "fp16" if precision == "fp16" else "fp32"
    variant = "ort" if optimize and graph_precision == "fp32" and not trt_first else "plain"
    path = _graph(vit, request, height, width, graph_precision, weights_id, variant, cache_dir, progress)
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), session_options(threads, gpu=_on_gpu(providers)),
                                   providers=providers)
    _warn_on_fallback(session, providers)
    return session, INPUT_NAME, request.output_names()


__all__ = ["OnnxRuntimeBackend", "create_session", "cuda_provider_options", "select_providers", "session_options",
           "tensorrt_provider_options", "usable_cores"]
