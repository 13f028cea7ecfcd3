"""`write_repository`: a Triton model repository for one (model, stride, input size, outputs).

    MODEL_REPO/
      dinofeat_vit/    config.pbtxt + 1/model.onnx (onnxruntime; onnxruntime-python: + 1/model.py) |
                       1/model.plan (tensorrt) | 1/model.py (python)
      dinofeat_match/  config.pbtxt + 1/model.py   log-bin + Best Buddies + foreground filter + selection
      dinofeat_pair/   config.pbtxt + 1/           ensemble: (image1, image2) -> every `Correspondences` field

Every `config.pbtxt` is rendered from `RepositoryOptions` (`pbtxt.render`) and parsed back with Triton's own
`ModelConfig` message before it is written. dinofeat_vit takes any input size (dims ``[3, -1, -1]``, outputs
``[-1, C]``): one dynamic-size ONNX graph (or one TensorRT engine with a wide H, W profile) serves every size;
the pair ensemble and the client keep the repository's (height, width). ``onnxruntime-python`` runs that same
graph with ONNX Runtime inside the Python backend, for Triton builds without the onnxruntime backend (the
`nvidia-pytriton` wheel's bundled server has only the Python backend). The Python models are two-line `model.py` files importing
`dinofeat.serve.triton_models`, so the server's Python needs dinofeat installed (NVIDIA's container: pip install).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import EXPORT_PRECISIONS, ExtractorConfig, MatchConfig
from ..errors import InputError
from . import wire
from .pbtxt import Enum, check_config, render

VIT, MATCH, PAIR = "dinofeat_vit", "dinofeat_match", "dinofeat_pair"
BACKENDS = ("onnxruntime", "tensorrt", "python", "onnxruntime-python")
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PARAMETER = "dinofeat"  # config.pbtxt parameter holding the options as JSON (models and client read it)


@dataclass(frozen=True)
class RepositoryOptions:
    """Everything a repository is made from (the defaults of `dinofeat serve triton-repo`)."""

    model: str = "dino_vits8"       # zoo name (dinofeat/model/zoo.py)
    stride: int = 4                  # patch-embedding stride
    weights: str | None = None       # checkpoint file; None: the cached official file (downloaded if missing)
    layers: tuple[int, ...] = (9,)   # blocks whose facet dinofeat_vit outputs
    facet: str = "key"               # key | query | value | token
    height: int = 224                # input size of the repository: the client resizes every image to it
    width: int = 224
    backend: str = "onnxruntime"     # dinofeat_vit's Triton backend: onnxruntime | tensorrt | python |
    #                                  onnxruntime-python (the ONNX graph run by ONNX Runtime in the Python backend)
    precision: str = "fp32"          # exported graph precision (fp16: TensorRT 11 / ORT CUDA)
    max_batch: int = 8               # dinofeat_vit max_batch_size; the dynamic batcher fills batches up to it
    queue_delay_us: int = 2000       # dynamic batching: longest wait for a fuller batch, microseconds
    instance_kind: str = "auto"      # auto (GPU where Triton sees one, else CPU) | cpu | gpu
    instances: int = 1               # model instances per device (per GPU, or on the CPU)
    num_pairs: int = 10              # pairs returned (k-means clusters), as find_correspondences
    thresh: float = 0.05             # saliency threshold of the foreground
    bin: bool = True                 # log-bin the descriptors before Best Buddies

    @classmethod
    def from_configs(cls, extractor_config: ExtractorConfig | None = None, match_config: MatchConfig | None = None,
                     **options) -> RepositoryOptions:
        """The repository of the API's settings: model, stride, weights (a file or None), precision (fp32 | fp16)
        and a (height, width) load size of the `ExtractorConfig`; layer(s), facet, bin, thresh, num_pairs of the
        `MatchConfig`. `options`: this class's other fields (backend, max_batch, ...), which win."""
        ec, mc = extractor_config or ExtractorConfig(stride=cls.stride), match_config or MatchConfig()
        if ec.weights is not None and not isinstance(ec.weights, (str, Path)):
            raise InputError("weights: a Triton repository copies a checkpoint file; pass its path (or None)")
        if ec.precision not in EXPORT_PRECISIONS:
            raise InputError(f"precision={ec.precision!r}: a repository's graph is {' or '.join(EXPORT_PRECISIONS)}")
        stride = ec.stride
        if stride in ("auto", None):
            from ..model.zoo import get_model_spec

            spec = get_model_spec(ec.model)
            stride = spec.default_stride if stride == "auto" else spec.patch_size
        values = {"model": ec.model, "stride": stride, "weights": None if ec.weights is None else str(ec.weights),
                  "precision": ec.precision, "layers": tuple(mc.layer) if isinstance(mc.layer, (list, tuple))
                  else (mc.layer,), "facet": mc.facet, "bin": mc.bin, "thresh": mc.thresh, "num_pairs": mc.num_pairs}
        if isinstance(ec.load_size, (tuple, list)):
            values["height"], values["width"] = (int(v) for v in ec.load_size)
        return cls(**{**values, **options})

    def settings(self) -> tuple[ExtractorConfig, MatchConfig]:
        """The (ExtractorConfig, MatchConfig) this repository serves (load size: its (height, width))."""
        return settings_of(dataclasses.asdict(self))

    def outputs(self) -> list[str]:
        """dinofeat_vit's outputs: one per layer (`key9`, ...) then `saliency`."""
        from ..model.vit import output_name

        return [output_name(layer, self.facet) for layer in dict.fromkeys(self.layers)] + ["saliency"]


def check_options(o: RepositoryOptions) -> None:
    from ..model.vit import check_request
    from ..model.zoo import get_model_spec

    if o.backend not in BACKENDS:
        raise InputError(f"backend={o.backend!r}: choose one of {', '.join(BACKENDS)}")
    if o.instance_kind not in INSTANCE_KINDS:
        raise InputError(f"instance_kind={o.instance_kind!r}: choose one of {', '.join(INSTANCE_KINDS)}")
    for name in ("max_batch", "instances", "num_pairs"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name}={v!r}: expected an int >= 1")
    if isinstance(o.queue_delay_us, bool) or not isinstance(o.queue_delay_us, int) or o.queue_delay_us < 0:
        raise InputError(f"queue_delay_us={o.queue_delay_us!r}: expected an int >= 0")
    spec = get_model_spec(o.model)
    p = spec.patch_size
    if isinstance(o.stride, bool) or not isinstance(o.stride, int) or o.stride < 1 or p % o.stride:
        raise InputError(f"stride={o.stride!r}: must be a positive int dividing the patch size {p} of {spec.name}")
    for name in ("height", "width"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < p:
            raise InputError(f"{name}={v!r}: expected an int >= the patch size {p}")
    check_request(spec, list(o.layers), o.facet)


def num_patches(o: RepositoryOptions) -> tuple[int, int]:
    from ..model.zoo import get_model_spec

    p = get_model_spec(o.model).patch_size
    return 1 + (o.height - p) // o.stride, 1 + (o.width - p) // o.stride


def _instance_group(o: RepositoryOptions) -> list[dict]:
    return [{"count": o.instances, "kind": Enum(INSTANCE_KINDS[o.instance_kind])}]


def _parameters(o: RepositoryOptions, extra: dict | None = None) -> list[dict]:
    # the weights' origin stays on this machine; num_patches saves the models and the client the arithmetic
    blob = dict(dataclasses.asdict(o), weights=None, num_patches=list(num_patches(o)), **(extra or {}))
    return [{"key": PARAMETER, "value": {"string_value": json.dumps(blob, sort_keys=True)}}]


def _vit_io(o: RepositoryOptions, embed_dim: int) -> tuple[list[dict], list[dict]]:
    """Any input size: images (3, -1, -1), facets (-1, C), saliency (-1,) (tokens follow the size)."""
    inputs = [{"name": "images", "data_type": Enum("TYPE_FP32"), "dims": [3, -1, -1]}]
    outputs = [{"name": name, "data_type": Enum("TYPE_FP32"), "dims": [-1, embed_dim] if name != "saliency" else [-1]}
               for name in o.outputs()]
    return inputs, outputs


def vit_config(o: RepositoryOptions, embed_dim: int, extra: dict | None = None) -> dict:
    inputs, outputs = _vit_io(o, embed_dim)
    preferred = sorted({b for b in (o.max_batch // 2, o.max_batch) if b >= 1})
    return {
        "name": VIT, "backend": "python" if o.backend == "onnxruntime-python" else o.backend,
        "max_batch_size": o.max_batch, "input": inputs, "output": outputs,
        "dynamic_batching": {"preferred_batch_size": preferred, "max_queue_delay_microseconds": o.queue_delay_us},
        "instance_group": _instance_group(o), "parameters": _parameters(o, extra),
    }


def match_config(o: RepositoryOptions, embed_dim: int) -> dict:
    _, vit_outputs = _vit_io(o, embed_dim)
    t = num_patches(o)[0] * num_patches(o)[1]
    inputs = [dict(out, name=f"{out['name']}_{i}") for i in (1, 2) for out in vit_outputs]
    outputs = [{"name": name, "data_type": Enum(dtype), "dims": wire.dims(dims, t)}
               for name, dtype, _, dims in wire.FIELDS]
    return {"name": MATCH, "backend": "python", "max_batch_size": 1, "input": inputs, "output": outputs,
            "instance_group": _instance_group(o), "parameters": _parameters(o)}


def pair_config(o: RepositoryOptions, embed_dim: int) -> dict:
    match = match_config(o, embed_dim)
    _, vit_outputs = _vit_io(o, embed_dim)
    images = [{"name": f"image{i}", "data_type": Enum("TYPE_FP32"), "dims": [3, o.height, o.width]} for i in (1, 2)]
    saliency = [dict(out, name=f"saliency_{i}") for i in (1, 2) for out in vit_outputs if out["name"] == "saliency"]
    steps = [{"model_name": VIT, "model_version": -1,
              "input_map": [{"key": "images", "value": f"image{i}"}],
              "output_map": [{"key": out["name"], "value": f"{out['name']}_{i}"} for out in vit_outputs]}
             for i in (1, 2)]
    steps.append({"model_name": MATCH, "model_version": -1,
                  "input_map": [{"key": inp["name"], "value": inp["name"]} for inp in match["input"]],
                  "output_map": [{"key": out["name"], "value": out["name"]} for out in match["output"]]})
    return {"name": PAIR, "platform": "ensemble", "max_batch_size": 1, "input": images,
            "output": match["output"] + saliency, "ensemble_scheduling": {"step": steps},
            "parameters": _parameters(o)}


PYTHON_MODEL = '''"""Generated by `dinofeat serve triton-repo`; the model lives in the installed dinofeat package."""

from dinofeat.serve.triton_models import {cls} as TritonPythonModel  # noqa: F401
'''


def write_repository(out, options: RepositoryOptions | None = None, *, overwrite: bool = False,
                     progress: bool = False) -> Path:
    """Write the model repository to `out` (a new or empty directory; `overwrite` replaces an existing one).

    The directory appears whole or not at all (built beside it, then renamed). Returns its path.
    """
    o = options or RepositoryOptions()
    check_options(o)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise InputError(f"--out {str(out)!r} exists and is not an empty directory; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _fill(tmp, o, progress)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fill(root: Path, o: RepositoryOptions, progress: bool) -> None:
    import torch

    from ..model.vit import Request, build_vit
    from ..model.weights import load_weights
    from ..model.zoo import get_model_spec

    spec = get_model_spec(o.model)
    loaded = load_weights(spec, o.weights, progress=progress)
    vit_dir = root / VIT / "1"
    vit_dir.mkdir(parents=True)
    extra = {"weights_sha256": loaded.sha256}
    if o.backend == "python":
        torch.save(loaded.state_dict, vit_dir / "weights.pth")
        (vit_dir / "model.py").write_text(PYTHON_MODEL.format(cls="VitModel"))
        extra["weights_file"] = "weights.pth"
    else:
        vit = build_vit(spec, o.stride, loaded)  # the checkpoint's RoPE periods, as the torch backend
        request = Request(facets=tuple((layer, o.facet) for layer in dict.fromkeys(o.layers)), saliency=True)
        with torch.no_grad():
            _write_graph(vit_dir, vit, request, o, loaded.sha256, progress)
    configs = {VIT: vit_config(o, spec.embed_dim, extra), MATCH: match_config(o, spec.embed_dim),
               PAIR: pair_config(o, spec.embed_dim)}
    for name in (MATCH, PAIR):
        (root / name / "1").mkdir(parents=True)
    (root / MATCH / "1" / "model.py").write_text(PYTHON_MODEL.format(cls="MatchModel"))
    for name, config in configs.items():
        text = render(config)
        check_config(text)
        (root / name / "config.pbtxt").write_text(text)


def _write_graph(vit_dir: Path, vit, request, o: RepositoryOptions, weights_id: str, progress: bool) -> None:
    from ..export.onnx import copy_onnx, get_onnx

    if o.backend in ("onnxruntime", "onnxruntime-python"):
        path = get_onnx(vit, request, o.height, o.width, precision=o.precision, weights_id=weights_id,
                        progress=progress, dynamic=True)
        copy_onnx(path, vit_dir / "model.onnx")
        if o.backend == "onnxruntime-python":
            (vit_dir / "model.py").write_text(PYTHON_MODEL.format(cls="OrtVitModel"))
        return
    from ..export.engine_file import write_engine
    from ..export.tensorrt import ShapeProfile

    p = vit.spec.patch_size  # one wide profile: every size up to max(repository size, 1024) per side
    profile = ShapeProfile((1, p, p), (1, o.height, o.width), (o.max_batch, max(o.height, 1024), max(o.width, 1024)))
    write_engine(vit, request, o.height, o.width, vit_dir / "model.plan", weights_id=weights_id,
                 precision=o.precision, max_batch=o.max_batch, shape_profiles=(profile,), progress=progress)


def settings_of(options: dict) -> tuple[ExtractorConfig, MatchConfig]:
    """(ExtractorConfig, MatchConfig) of a repository's options blob (`read_options`, `Client.options`): what
    `find_correspondences(..., load_size=(H, W))` needs to give the served results."""
    layers = list(dict.fromkeys(options["layers"]))
    ec = ExtractorConfig(model=options["model"], stride=int(options["stride"]), weights=options.get("weights"),
                         precision=options["precision"], load_size=(int(options["height"]), int(options["width"])))
    mc = MatchConfig(layer=layers[0] if len(layers) == 1 else layers, facet=options["facet"], bin=options["bin"],
                     thresh=options["thresh"], num_pairs=options["num_pairs"])
    return ec, mc


def read_options(parameters: dict) -> dict:
    """The options blob of a model's config (`parameters` as Triton's JSON config gives them)."""
    try:
        return json.loads(parameters[PARAMETER]["string_value"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"model config has no valid {PARAMETER!r} parameter ({e}); was the repository made by "
                         "`dinofeat serve triton-repo`?") from None


__all__ = ["BACKENDS", "MATCH", "PAIR", "VIT", "RepositoryOptions", "check_options", "match_config",
           "num_patches", "pair_config", "read_options", "settings_of", "vit_config", "write_repository"]
