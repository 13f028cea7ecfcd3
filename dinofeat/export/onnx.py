"""ONNX export of the strided ViT: one graph per (model, weights, stride, H, W, outputs, precision), or with
``dynamic=True`` one graph for every H, W (see `dynamic.py`; docs/dynamic_shapes.md).

Pipeline (`get_onnx` runs it with caching; every step is public for tools and tests):

1. `export_onnx` traces `ExportGraph` (see `graph.py`) with ``torch.onnx.export(dynamo=True)``, the exporter this
   module pins: on torch 2.14 it gives plain ``LayerNormalization``, no Cast noise and static output shapes in ~9 s
   for ViT-S/8, where the TorchScript exporter (``dynamo=False``, deprecated) takes ~40 s and leaves 72 no-op Casts.
   The dynamo exporter emits opset 18; `lower_to_opset17` rewrites the only opset-18 changes the graph can hold
   (``Reduce*`` axes input -> attribute) so the file is opset 17, the floor for ``LayerNormalization``, which every
   TensorRT 10.x parser and ONNX Runtime's transformer tools handle (their shape inference does not know opset-18
   ReduceMax/ReduceMin). A graph holding another opset-18 change is kept at 18.
2. `check_graph`: ``onnx.checker`` (full check, with strict shape inference), named input ``images``
   (batch, 3, H, W) float32 with a symbolic batch, named outputs in request order with static (T, C) (CLS rows
   (C,), saliency (T,)), opset >= 17, ``LayerNormalization`` present, no Resize/Upsample, default-domain ops only,
   and every op on TensorRT 10's ONNX support list (`data/tensorrt10_onnx_ops.json`, source named inside).
3. `optimize_for_onnxruntime` (variant ``"ort"``): ONNX Runtime's transformer optimizer (``model_type="vit"``,
   python fusions only) turns each block into ``Attention`` + ``SkipLayerNormalization`` + ``BiasGelu``; the fused
   graph is run against the plain one on ORT CPU and kept only if every output agrees to 1e-4 relative. It holds
   ORT contrib ops, so it is for the ORT CPU/CUDA providers, never for TensorRT.

Files are cached under ``<cache>/onnx/`` by a key over (model, weights SHA-256, stride, H, W, outputs, precision,
variant, exporter version, opset, torch version, shape fixed | dynamic), written atomically and re-hashed on
every load (`cache.py`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import EXPORT_PRECISIONS, FACET_NAMES
from ..errors import BackendUnavailableError, DinofeatError, InputError
from ..io import atomic_write_bytes, temp_path
from ..model.vit import CLS_PREFIX, Request, StridedViT, cls_output_name, output_name
from ..model.zoo import MODELS
from . import cache

OPSET = 17
EXPORTER_VERSION = "3"  # 2: fp16 graph scales q before q.k^T; 3: fp16 graphs keep RoPE tables float32
INPUT_NAME = "images"
PRECISIONS = EXPORT_PRECISIONS
VARIANTS = ("plain", "ort")
MAX_SIDE = 16384  # largest H or W a dynamic graph accepts (torch.export needs a bound)
MAX_PROTO_BYTES = 1_800_000_000  # above this, weights go to an external-data file (protobuf's 2 GiB limit)
VERIFY_RTOL = 1e-4
TRT_OPS_FILE = Path(__file__).with_name("data") / "tensorrt10_onnx_ops.json"
FORBIDDEN_OPS = ("Resize", "Upsample")
_REDUCE_AXES_OPS = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                    "ReduceLogSumExp", "ReduceSumSquare")  # axes moved from attribute to input in opset 18

log = logging.getLogger(__name__)


class GraphCheckError(DinofeatError, RuntimeError):
    """An exported graph failed a check (onnx.checker, shapes, op set, or ORT-optimised outputs)."""


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise BackendUnavailableError("ONNX export needs the onnx package (and onnxscript for torch's exporter); "
                                      "install them with pip install 'dinofeat[onnx]'") from None
    return onnx


def _require_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("this step needs ONNX Runtime; install it with pip install 'dinofeat[onnx]' "
                                      "(CPU) or pip install onnxruntime-gpu (CUDA)") from None
    return onnxruntime


# ------------------------------------------------------------------------------------------------- graph spec
@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph computes. `outputs` is `request.output_names()`."""

    model: str
    stride: int
    height: int
    width: int
    request: Request
    precision: str = "fp32"
    weights_id: str = ""
    num_patches: tuple[int, int] = field(default=(0, 0), compare=False)
    rope_periods: str = ""  # RoPE models with given periods: their float32 values, comma-separated; else ""
    pos_interp: str = ""  # position-table resampling when it is not the zoo row's (`Extractor(pos_interp=)`); else ""
    dynamic: bool = False  # H and W dynamic (height, width: the size traced and checked); else fixed

    @property
    def shape_kind(self) -> str:
        return "dynamic" if self.dynamic else "fixed"

    @property
    def outputs(self) -> list[str]:
        return self.request.output_names()

    def cache_fields(self, variant: str) -> dict:
        fields = {
            "model": self.model, "weights": self.weights_id, "stride": self.stride, "height": self.height,
            "width": self.width, "outputs": self.outputs, "precision": self.precision, "variant": variant,
            "exporter": EXPORTER_VERSION, "opset": OPSET, "torch": torch.__version__.split("+")[0],
            "shape": self.shape_kind,
        }
        if self.rope_periods:  # the same file gives two graphs under rope_periods="checkpoint" / "recompute"
            fields["rope_periods"] = self.rope_periods
        if self.pos_interp:  # the same weights give another graph under another position resampling
            fields["pos_interp"] = self.pos_interp
        return fields

    def metadata(self) -> dict[str, str]:
        from ..version import __version__

        rope = {"dinofeat.rope_periods": self.rope_periods} if self.rope_periods else {}
        rope |= {"dinofeat.pos_interp": self.pos_interp} if self.pos_interp else {}
        return rope | {
            "dinofeat.version": __version__, "dinofeat.exporter": EXPORTER_VERSION, "dinofeat.model": self.model,
            "dinofeat.stride": str(self.stride), "dinofeat.height": str(self.height),
            "dinofeat.width": str(self.width), "dinofeat.outputs": ",".join(self.outputs),
            "dinofeat.precision": self.precision, "dinofeat.weights_sha256": self.weights_id,
            "dinofeat.num_patches": f"{self.num_patches[0]}x{self.num_patches[1]}",
            "dinofeat.shape": self.shape_kind,
        }


def graph_spec(vit: StridedViT, request: Request, height: int, width: int, precision: str = "fp32",
               weights_id: str = "", dynamic: bool = False) -> GraphSpec:
    """`dynamic`: a graph for every H, W >= the patch size; (height, width) is then the size traced."""
    _check_args(vit, request, height, width, precision)
    periods = getattr(vit, "rope_periods", None)
    rope = "" if periods is None else ",".join(repr(float(v)) for v in periods.tolist())
    zoo_interp = MODELS[vit.spec.name].pos_interp if vit.spec.name in MODELS else vit.spec.pos_interp
    interp = "" if vit.spec.pos_interp == zoo_interp else vit.spec.pos_interp
    return GraphSpec(vit.spec.name, vit.stride, int(height), int(width), request, precision, weights_id,
                     vit.grid(int(height), int(width)), rope, interp, bool(dynamic))


def output_shapes(vit: StridedViT, request: Request, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """{output name: shape without the batch axis}: facets (T, C), their CLS rows (C,), saliency (T,)."""
    rows, cols = vit.grid(height, width)
    t = rows * cols
    shapes = {}
    for layer, facet in request.facets:
        shapes[output_name(layer, facet)] = (t, vit.spec.embed_dim)
        if request.cls:
            shapes[cls_output_name(layer, facet)] = (vit.spec.embed_dim,)
    if request.saliency:
        shapes["saliency"] = (t,)
    return shapes


def _check_args(vit, request: Request, height, width, precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} cannot be exported; choose one of {', '.join(PRECISIONS)} "
                         "(bf16 runs on backend='torch')")
    p = vit.spec.patch_size
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < p:
            raise InputError(f"{name}={v!r}: expected an int >= the patch size {p} of {vit.spec.name}")
    if not request.facets and not request.saliency:
        raise InputError("the request asks for no output; pass at least one (layer, facet) or saliency=True")
    for layer, facet in request.facets:
        if not 0 <= int(layer) < vit.spec.depth:
            raise InputError(f"layer={layer} is out of range for {vit.spec.name} (0..{vit.spec.depth - 1})")
        if facet not in FACET_NAMES:
            raise InputError(f"facet={facet!r} is not supported; choose key, query, value or token")
    if len(set(request.output_names())) != len(request.output_names()):
        raise InputError(f"the request names an output twice: {request.output_names()}")


# ------------------------------------------------------------------------------------------------- export
def export_onnx(vit: StridedViT, request: Request, height: int, width: int, *, precision: str = "fp32",
                weights_id: str = "", dynamic: bool = False, verbose: bool = False):
    """Trace the export graph for one size and request; returns a checked `onnx.ModelProto` (opset 17).

    Args:
        vit: loaded fp32 model (not modified).
        request: outputs, e.g. ``Request(facets=((9, "key"),), saliency=True)``.
        height, width: fixed input size in pixels (the batch axis is dynamic); with `dynamic`, the size traced.
        dynamic: H and W dynamic too (any size >= the patch size): positions / RoPE computed in the graph from
            the input size (`dynamic.py`), outputs (batch, T, C) with T symbolic.
        precision: "fp32", or "fp16" (fp16 weights/matmuls, fp32 LayerNorm/Softmax/residual, fp32 I/O).
        weights_id: SHA-256 of the weights, stored in the model's metadata.
    """
    _require_onnx()
    from .graph import ExportGraph

    spec = graph_spec(vit, request, height, width, precision, weights_id, dynamic)
    vit = vit.float().eval()
    graph = ExportGraph(vit, request, spec.height, spec.width, precision, dynamic=dynamic).eval()
    example = torch.zeros(2, 3, spec.height, spec.width)
    batch = torch.export.Dim("batch", min=1, max=65536)
    dims = {0: batch}
    if dynamic:
        p = vit.spec.patch_size
        dims.update({2: torch.export.Dim("height", min=p, max=MAX_SIDE), 3: torch.export.Dim("width", min=p,
                                                                                            max=MAX_SIDE)})
    sink = io.StringIO()
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(sink)
        with redirect:
            program = torch.onnx.export(
                graph, (example,), None, dynamo=True, opset_version=18, input_names=[INPUT_NAME],
                output_names=spec.outputs, dynamic_shapes=(dims,), optimize=True, verbose=verbose,
                external_data=False,
            )
    model = program.model_proto
    log.info("torch.onnx.export (dynamo) of %s %dx%d took %.1f s", spec.model, spec.height, spec.width,
             time.perf_counter() - t0)
    model = lower_to_opset17(model)
    model.producer_name = "dinofeat"
    from ..version import __version__

    model.producer_version = __version__
    hw = "height, width" if dynamic else f"{spec.height}, {spec.width}"
    model.doc_string = (f"dinofeat strided ViT {spec.model} stride {spec.stride}, input {INPUT_NAME} "
                        f"(batch, 3, {hw}) normalised float32, outputs {spec.outputs}")
    del model.metadata_props[:]
    for k, v in spec.metadata().items():
        model.metadata_props.add(key=k, value=v)
    require_clean_graph(model, spec=spec, vit=vit, for_tensorrt=True)
    return model


def require_clean_graph(model, *, spec: GraphSpec, vit: StridedViT | None = None, for_tensorrt: bool = True) -> None:
    """Raise `GraphCheckError` listing every problem `check_graph` finds in `model`; return None when clean."""
    problems = check_graph(model, spec=spec, vit=vit, for_tensorrt=for_tensorrt)
    if problems:
        raise GraphCheckError("the exported graph failed its checks:\n  " + "\n  ".join(problems))


def lower_to_opset17(model):
    """Rewrite an opset-18 graph to opset 17 when its only opset-18 ops are Reduce* with constant axes.

    Returns a new model, or the input unchanged (logged) when some node needs opset 18.
    """
    onnx = _require_onnx()
    from onnx import helper, numpy_helper

    if _default_opset(model) != 18:
        return model
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    plan = []  # (node index, axes or None)
    for idx, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if onnx.defs.get_schema(node.op_type, 18, "").since_version == \
                onnx.defs.get_schema(node.op_type, 17, "").since_version:
            continue
        if node.op_type not in _REDUCE_AXES_OPS:
            log.info("keeping opset 18: %s changed in opset 18", node.op_type)
            return model
        axes = None
        if len(node.input) > 1 and node.input[1]:
            name = node.input[1]
            if name in inits:
                axes = numpy_helper.to_array(inits[name]).astype(np.int64).ravel().tolist()
            elif name in consts:
                axes = numpy_helper.to_array(consts[name].attribute[0].t).astype(np.int64).ravel().tolist()
            else:
                log.info("keeping opset 18: %s has non-constant axes", node.name)
                return model
        noop = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
        if noop and not axes:
            return model
        plan.append((idx, axes))
    model = _copy_model(model)
    for idx, axes in plan:
        node = model.graph.node[idx]
        del node.input[1:]
        keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
        del node.attribute[:]
        node.attribute.extend(keep)
        if axes:
            node.attribute.append(helper.make_attribute("axes", axes))
    _prune_unused(model.graph)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 17
    return model


def _copy_model(model):
    onnx = _require_onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _default_opset(model) -> int:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)


def _prune_unused(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep_nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# ------------------------------------------------------------------------------------------------- checks
@functools.cache
def tensorrt_op_table() -> dict:
    """The TensorRT 10 ONNX operator list (`data/tensorrt10_onnx_ops.json`), with its source."""
    return json.loads(TRT_OPS_FILE.read_text(encoding="utf-8"))


def tensorrt_unsupported_ops(model) -> dict[str, int]:
    """{op: count} of nodes TensorRT 10.3's ONNX parser does not import (contrib domains count as unsupported)."""
    table = tensorrt_op_table()
    ok = set(table["supported"])
    bad: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in ok:
            bad[name] = bad.get(name, 0) + 1
    return bad


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def check_graph(model, *, spec: GraphSpec | None = None, vit: StridedViT | None = None,
                for_tensorrt: bool = True) -> list[str]:
    """Problems with an exported graph (empty list: all checks pass).

    Runs ``onnx.checker.check_model(full_check=True)`` (strict shape inference included), then checks opset,
    LayerNormalization, the I/O signature against `spec`, and with `for_tensorrt` the op set against TensorRT 10.
    """
    onnx = _require_onnx()
    problems = []
    try:
        if model.ByteSize() < MAX_PROTO_BYTES:
            onnx.checker.check_model(model, full_check=True)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        else:  # pragma: no cover - large models are checked by path in save_onnx
            onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        problems.append(f"onnx.checker / shape inference: {e}")
    opset = _default_opset(model)
    if opset < OPSET:
        problems.append(f"opset {opset} < {OPSET}")
    ops = {n.op_type for n in _all_nodes(model.graph)}
    has_ln = "LayerNormalization" in ops or "SkipLayerNormalization" in ops
    if not has_ln:
        problems.append("no LayerNormalization node (LayerNorm was decomposed)")
    for op in FORBIDDEN_OPS:
        if op in ops:
            problems.append(f"{op} node in the graph (positions must be a precomputed constant)")
    if for_tensorrt:
        table = tensorrt_op_table()
        bad = tensorrt_unsupported_ops(model)
        if bad:
            problems.append(f"ops outside TensorRT {table['tensorrt_floor']}'s ONNX support list: {bad}")
        if not table["min_opset"] <= opset <= table["max_opset"]:
            problems.append(f"opset {opset} outside TensorRT's range {table['min_opset']}..{table['max_opset']}")
        for node in model.graph.node:
            if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
                problems.append(f"{node.name}: TensorRT imports only LayerNormalization's first output")
    if spec is not None:
        problems += _check_io(model, spec, vit)
    return problems


def _dims(value_info) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in value_info.type.tensor_type.shape.dim]


def _check_io(model, spec: GraphSpec, vit: StridedViT | None) -> list[str]:
    from onnx import TensorProto

    problems = []
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"graph inputs {[i.name for i in inputs]} != [{INPUT_NAME!r}]")
    else:
        dims = _dims(inputs[0])
        if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
            problems.append("input is not float32")
        if spec.dynamic:
            if len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, str) for d in dims[:1] + dims[2:]):
                problems.append(f"input shape {dims} != [batch, 3, height, width] (symbolic)")
        elif len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != [3, spec.height, spec.width]:
            problems.append(f"input shape {dims} != [batch, 3, {spec.height}, {spec.width}]")
    names = [o.name for o in model.graph.output]
    if names != spec.outputs:
        problems.append(f"graph outputs {names} != {spec.outputs}")
    elif vit is not None:
        shapes = output_shapes(vit, spec.request, spec.height, spec.width)
        for out in model.graph.output:
            dims = _dims(out)
            if out.type.tensor_type.elem_type != TensorProto.FLOAT:
                problems.append(f"output {out.name} is not float32")
            if spec.dynamic:  # (batch, tokens, ...) symbolic; a CLS row (batch, C): batch only
                sym = ["batch"] if out.name.startswith(CLS_PREFIX) else ["batch", "tokens"]
                want, n = shapes[out.name][len(sym) - 1:], len(sym)
                if len(dims) != 1 + len(shapes[out.name]) or not all(isinstance(d, str) for d in dims[:n]) \
                        or tuple(dims[n:]) != want:
                    problems.append(f"output {out.name} shape {dims} != [{', '.join(sym)}"
                                    f"{''.join(f', {d}' for d in want)}] ({', '.join(sym)} symbolic)")
            elif not dims or not isinstance(dims[0], str) or tuple(dims[1:]) != shapes[out.name]:
                problems.append(f"output {out.name} shape {dims} != [batch, {', '.join(map(str, shapes[out.name]))}]")
    return problems


# ------------------------------------------------------------------------------------------------- ORT variant
def optimize_for_onnxruntime(model, spec: GraphSpec, vit: StridedViT, *, verify: bool = True,
                             rtol: float = VERIFY_RTOL, seed: int = 0):
    """Transformer-fused variant for ONNX Runtime (Attention, SkipLayerNormalization, BiasGelu contrib ops).

    Returns ``(fused_model, report)``; report holds the fused-op counts and, with `verify`, the largest relative
    difference of each output against the plain graph on ORT CPU. Raises `GraphCheckError` if an output moves
    by more than `rtol` (max |fused - plain| / max |plain|).
    """
    _require_ort()
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    if spec.precision != "fp32":
        raise InputError("the ORT-optimised variant is made from the fp32 graph (precision='fp32')")
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    for name in ("fusion_base", "fusion_skiplayernorm", "fusion_attention", "onnx_model", "onnx_model_bert",
                 "fusion_utils", "shape_infer_helper", "symbolic_shape_infer", "fusion_embedlayer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    options = FusionOptions("vit")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = optimize_by_fusion(_copy_model(model), model_type="vit", num_heads=vit.spec.num_heads,
                                       hidden_size=vit.spec.embed_dim, optimization_options=options)
    fused = optimizer.model
    counts: dict[str, int] = {}
    for node in fused.graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    report = {"fused_ops": counts, "max_rel_diff": {}}
    if verify:
        x = np.random.default_rng(seed).standard_normal((1, 3, spec.height, spec.width)).astype(np.float32)
        plain_out = _run_cpu(model, x)
        fused_out = _run_cpu(fused, x)
        for name in spec.outputs:
            ref = plain_out[name].astype(np.float64)
            diff = float(np.abs(fused_out[name] - ref).max() / max(np.abs(ref).max(), 1e-30))
            report["max_rel_diff"][name] = diff
            if not diff <= rtol:
                raise GraphCheckError(f"the ORT-optimised graph changes output {name!r} by {diff:.2e} relative "
                                      f"(> {rtol:.0e}); use variant='plain'")
    return fused, report


def _run_cpu(model, x: np.ndarray) -> dict[str, np.ndarray]:
    ort = _require_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if model.ByteSize() < MAX_PROTO_BYTES:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    else:  # pragma: no cover - needs a > 1.8 GB model
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = save_onnx(model, Path(d) / "model.onnx")
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {INPUT_NAME: x}), strict=True))


# ------------------------------------------------------------------------------------------------- files
def save_onnx(model, path) -> Path:
    """Write `model` to `path` atomically (weights to ``<path>.data`` beside it when over ~1.8 GB)."""
    onnx = _require_onnx()
    path = Path(path)
    if model.ByteSize() < MAX_PROTO_BYTES:
        return atomic_write_bytes(path, model.SerializeToString())
    tmp = temp_path(path.parent, path.name)
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return cache.atomic_move(tmp, path)


def _files_of(model, name: str, directory: Path) -> dict:
    """Serialise for `cache.store`: {file name: bytes}, plus the external-data file for large models."""
    onnx = _require_onnx()
    if model.ByteSize() < MAX_PROTO_BYTES:
        return {name: model.SerializeToString()}
    tmp = temp_path(directory, name)
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=1024)
    return {name: tmp, name + ".data": directory / (name + ".data")}


def weights_sha256(vit: StridedViT) -> str:
    from ..model.weights import state_dict_sha256

    return state_dict_sha256({k: v.detach().float().cpu() for k, v in vit.state_dict().items()})


def get_onnx(vit: StridedViT, request: Request, height: int, width: int, *, precision: str = "fp32",
             weights_id: str = "", variant: str = "plain", cache_dir=None, verify: bool = True,
             progress: bool = False, dynamic: bool = False) -> Path:
    """Path of the cached ONNX file for this graph, exporting (and optimising) it on first use.

    Args:
        variant: "plain" (portable, TensorRT-clean) or "ort" (transformer-fused for ONNX Runtime, fp32 only).
        cache_dir: cache root (default `cache.cache_root()`); files go to ``<root>/onnx``.
        verify: check the "ort" variant's outputs against the plain graph before caching it.
        dynamic: one graph for every H, W (see `export_onnx`); (height, width) is the size traced.
    """
    if variant not in VARIANTS:
        raise InputError(f"variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    weights_id = weights_id or weights_sha256(vit)
    spec = graph_spec(vit, request, height, width, precision, weights_id, dynamic)
    directory = cache.cache_subdir("onnx", cache_dir)
    key = cache.make_key(spec.cache_fields(variant))
    size = "dynHW" if dynamic else f"{spec.height}x{spec.width}"
    name = f"{spec.model}_s{spec.stride}_{size}_{precision}_{variant}_{key}.onnx"
    with cache.entry_lock(directory, key):  # one build per key, also across processes
        return _get_or_build(vit, request, height, width, spec, directory, key, name, precision=precision,
                             weights_id=weights_id, variant=variant, cache_dir=cache_dir, verify=verify,
                             progress=progress)


def _get_or_build(vit, request, height, width, spec, directory, key, name, *, precision, weights_id, variant,
                  cache_dir, verify, progress) -> Path:
    found = cache.lookup(directory, key)
    if found is not None:
        return Path(found["paths"][found["meta"]["onnx"]])
    if variant == "plain":
        _say(progress, f"exporting {spec.model} stride {spec.stride} {spec.height}x{spec.width} {spec.outputs} "
                       f"({precision}{', dynamic H, W' if spec.dynamic else ''}) to ONNX ...")
        model = export_onnx(vit, request, spec.height, spec.width, precision=precision, weights_id=weights_id,
                            dynamic=spec.dynamic)
        meta = {"onnx": name, **spec.cache_fields(variant)}
    else:
        plain_path = get_onnx(vit, request, height, width, precision=precision, weights_id=weights_id,
                              variant="plain", cache_dir=cache_dir, progress=progress, dynamic=spec.dynamic)
        onnx = _require_onnx()
        _say(progress, "optimising the graph for ONNX Runtime (attention fusion) and verifying it ...")
        plain = onnx.load(str(plain_path))
        model, report = optimize_for_onnxruntime(plain, spec, vit, verify=verify)
        meta = {"onnx": name, "fusion": report, **spec.cache_fields(variant)}
    manifest = cache.store(directory, key, _files_of(model, name, directory), meta)
    return Path(manifest["paths"][name])


def copy_onnx(src, dest) -> Path:
    """Copy a (cached) ONNX file to `dest` atomically; external weights are re-saved to follow the new name."""
    dest = Path(dest)
    if Path(str(src) + ".data").exists():
        onnx = _require_onnx()
        return save_onnx(onnx.load(str(src)), dest)
    return atomic_write_bytes(dest, Path(src).read_bytes())


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        import sys

        print(f"dinofeat: {msg}", file=sys.stderr, flush=True)


__all__ = [
    "EXPORTER_VERSION", "GraphCheckError", "GraphSpec", "INPUT_NAME", "OPSET", "check_graph", "copy_onnx", "export_onnx",
    "get_onnx", "graph_spec", "lower_to_opset17", "optimize_for_onnxruntime", "output_shapes", "require_clean_graph",
    "save_onnx",
    "tensorrt_op_table", "tensorrt_unsupported_ops", "weights_sha256",
]
