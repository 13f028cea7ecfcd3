"""Settings objects, one per concern, in the base layer: `ExtractorConfig` (model, weights, backend, input size)
and `MatchConfig` (descriptor and matching settings): the ONE declaration of these settings, for the API, every
command line (`add_arguments` generates the flags from the fields), Ray and Triton.

Each field is checked here as far as the field alone allows (types, ranges, names); rules that need the model
(stride divides the patch size, layer < depth, load size >= patch size) stay in `Extractor` / `check_request`.
Both are frozen dataclasses: derive variants with `dataclasses.replace`, or build one from any object with the
same attribute names (a `MatcherConfig`, an argparse namespace) with `from_object` / `from_args`.

A field is declared with `setting(default, help, ...)`: its comment says what it means, its metadata what the
command line needs (flag, help, type, choices, metavar). A new setting is one line here; a command picks the
fields it takes with `add_arguments(parser, Config, only=..., defaults=..., help=...)`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields

from .errors import InputError

FACET_NAMES = ("key", "query", "value", "token")  # the facets every zoo model exposes (model.zoo.FACETS)
MODEL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # Extractor precisions
EXPORT_PRECISIONS = ("fp32", "fp16")  # exported ONNX graphs / TensorRT engines (`dinofeat export`, Triton)
MATCH_PRECISIONS = ("fp32", "fp16", "bf16")  # Best-Buddies GEMM precisions (kernels)
BACKEND_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")  # Extractor backends (auto: torch on CPU)
POS_INTERPS = ("offset", "size", "antialias")  # learned position-table resampling (model.vit.POS_INTERP)
ROPE_PERIODS = ("checkpoint", "recompute")  # where a RoPE model's periods come from (model.vit.ROPE_PERIODS)


def check_match_args(num_pairs, thresh) -> tuple[int, float]:
    """Validate `num_pairs` (int >= 1) and `thresh` (a number, not NaN); returns them normalised."""
    if isinstance(num_pairs, bool) or not _is_int(num_pairs) or num_pairs < 1:
        raise InputError(f"num_pairs={num_pairs!r}: expected an int >= 1")
    try:
        thresh = float(thresh)
    except (TypeError, ValueError):
        raise InputError(f"thresh={thresh!r}: expected a number (saliency threshold, default 0.05)") from None
    if math.isnan(thresh) or not 0.0 <= thresh <= 1.0:
        raise InputError(f"thresh={thresh}: expected a number in [0, 1] (saliency threshold, default 0.05; saliency "
                         "is normalised to [0, 1])")
    return int(num_pairs), thresh


def _is_int(v) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r} is unknown; choose one of {', '.join(choices)}")


def _check_layer(layer) -> None:
    seq = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not seq or not all(_is_int(v) and v >= 0 for v in seq):
        raise InputError(f"layer={layer!r}: expected a block index (int >= 0) or a non-empty list of them")


def _check_load_size(load_size) -> None:
    if load_size is None:
        return
    sizes = load_size if isinstance(load_size, (tuple, list)) else (load_size,)
    if isinstance(load_size, (tuple, list)) and len(sizes) != 2:
        raise InputError(f"load_size={load_size!r}: a sequence must be (height, width)")
    if not all(_is_int(s) and s >= 1 for s in sizes):
        raise InputError(f"load_size={load_size!r}: expected an int >= 1 (shorter side), a (height, width) pair "
                         "of such ints, or None to keep the image size")


def setting(default, help: str | None = None, *, flag: str | None = None, type=None, choices=None,
            metavar: str | None = None, nargs=None, action: str | None = None, cli_default=MISSING,
            none_is=MISSING):
    """A config field with what the command line needs in its metadata (`add_arguments` reads it).

    help: the flag's help (the parser appends its default); None: no flag for this field.
    cli_default: the flag's default when it differs from the field's (e.g. None: "not given").
    none_is: the field value a None from the command line stands for (`from_args`)."""
    cli = None if help is None else {"help": help, "flag": flag, "type": type, "choices": choices,
                                     "metavar": metavar, "nargs": nargs, "action": action,
                                     "default": cli_default, "none_is": none_is}
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"cli": cli}, **kw)


def _cli_fields(cls) -> dict:
    return {f.name: f for f in fields(cls) if f.metadata.get("cli")}


def add_arguments(parser, cls, *, only=None, exclude=(), defaults=None, help=None, choices=None, nargs=None,
                  dests=None, metavars=None, types=None) -> None:
    """Add one flag per field of `cls` (a config dataclass) to `parser` (a parser or an argument group).

    only: field names to add, in this order (default: every field with a flag, in declaration order);
    exclude: names left out. defaults / help / choices / nargs / dests / metavars / types: {field: value} per-command
    variations of the declared ones (e.g. `dinofeat export`: ``choices={"precision": EXPORT_PRECISIONS}``).
    A bool field is a switch: ``--NAME`` when its default is False; ``--no-NAME`` when True, stored as
    ``no_NAME`` (True when given), or as ``NAME`` (False when given) with ``dests={NAME: NAME}``."""
    table = _cli_fields(cls)
    names = list(only) if only is not None else list(table)
    for name in names:
        if name not in table:
            raise InputError(f"{cls.__name__} has no command-line setting {name!r}; choose from {', '.join(table)}")
    defaults, help, choices = defaults or {}, help or {}, choices or {}
    nargs, dests, metavars, types = nargs or {}, dests or {}, metavars or {}, types or {}
    for name in (n for n in names if n not in exclude):
        f = table[name]
        m = f.metadata["cli"]
        default = defaults.get(name, f.default if m["default"] is MISSING else m["default"])
        if default is MISSING:
            default = f.default_factory()
        flag = m["flag"] or "--" + name.replace("_", "-")
        kw = {"help": help.get(name, m["help"])}
        if f.type in ("bool", bool) and m["action"] is None:
            if default:
                flag = "--no-" + flag[2:] if not m["flag"] else flag
                dest = dests.get(name, "no_" + name)
                kw.update(dest=dest, action="store_false" if dest == name else "store_true")
            else:
                kw.update(dest=dests.get(name, name), action="store_true")
            parser.add_argument(flag, **kw)
            continue
        if nargs.get(name, m["nargs"]) in ("+", "*") and default is not None and not isinstance(default, list):
            default = list(default) if isinstance(default, tuple) else [default]  # several values: a list
        kw.update(dest=dests.get(name, name), default=default)
        for key, value in (("type", types.get(name, m["type"])), ("choices", choices.get(name, m["choices"])),
                           ("metavar", metavars.get(name, m["metavar"])), ("nargs", nargs.get(name, m["nargs"])),
                           ("action", m["action"])):
            if value is not None:
                kw[key] = list(value) if key == "choices" else value
        parser.add_argument(flag, **kw)


def from_args(cls, namespace, **overrides):
    """`cls` (a config dataclass) from a parsed command line: the fields the namespace carries (``no_NAME``
    switches inverted, None standing for a field's ``none_is`` value); `overrides` win."""
    values = {}
    ns = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    for f in fields(cls):
        m = f.metadata.get("cli") or {}
        if f.name in ns:
            value = ns[f.name]
            if value is None and m.get("none_is", MISSING) is not MISSING:
                value = m["none_is"]
            values[f.name] = value
        elif f"no_{f.name}" in ns:
            values[f.name] = not ns[f"no_{f.name}"]
    values.update(overrides)
    return cls(**values)


class _FromObject:
    @classmethod
    def from_object(cls, obj, **overrides):
        """This config from any object (or mapping) carrying some of its field names; `overrides` win."""
        get = obj.get if isinstance(obj, dict) else (lambda k, d: getattr(obj, k, d))
        missing = object()
        values = {f.name: v for f in fields(cls) if (v := get(f.name, missing)) is not missing}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_args(cls, namespace, **overrides):
        """This config from a parsed command line (see the module's `from_args`)."""
        return from_args(cls, namespace, **overrides)


@dataclass(frozen=True)
class ExtractorConfig(_FromObject):
    """How images become descriptors: the arguments of `Extractor(...)` plus the preprocessing size."""

    # zoo name (`dinofeat weights list`)
    model: str = setting("dino_vits8", "zoo name (`dinofeat weights list`)")
    # patch-embedding stride dividing the patch size; "auto": half the patch (the method's 4 for dino_vits8, 7 for
    # dinov2_vits14); None: the patch size (no overlap). On the command line, no --stride is "auto".
    stride: int | str | None = setting(
        "auto", "patch-embedding stride, must divide the patch size (default: half the model's patch, as the "
        "method: 4 for dino_vits8, 7 for dinov2_vits14)", type=int, cli_default=None, none_is="auto")
    # None: the official file (cached download); a path or a state dict
    weights: object = setting(
        None, "checkpoint file (.pth / .safetensors); default: the cached official file, downloaded if missing "
        "(dinov2_vits14 offline: the real weights of the [pretrained] extra, converted once)", metavar="FILE")
    # auto | torch | onnxruntime | tensorrt
    backend: str = setting("auto", "inference backend (auto: torch on CPU, TensorRT / ONNX Runtime on a GPU when "
                           "installed)", choices=BACKEND_NAMES)
    # backend onnxruntime: graphs written by `dinofeat export` (same model, stride, weights), one per size
    onnx: tuple = setting(
        (), "with --backend onnxruntime: a graph written by `dinofeat export` (same model, stride, weights) to run "
        "for its size instead of exporting one; repeat for several sizes (default: export and cache one per size)",
        action="append", metavar="FILE", cli_default=None, none_is=())
    # auto | cpu | cuda[:N] | a torch.device
    device: object = setting("auto", "auto | cpu | cuda[:N]")
    # ViT precision: fp32 (exact), tf32, bf16, fp16
    precision: str = setting("fp32", "fp32 (exact, default); tf32 (CUDA TF32 matmuls); bf16 / fp16 (faster, "
                             "inexact)", choices=MODEL_PRECISIONS)
    # learned position tables: None keeps the zoo row's resampling; offset | size | antialias
    pos_interp: str | None = setting(
        None, "position-table resampling: as Meta's DINOv2 (offset), Hugging Face transformers (size) or DINOv2 "
        "_reg (antialias) code; default: the zoo model's (docs/checkpoints.md)", choices=POS_INTERPS)
    # RoPE models (DINOv3): the checkpoint's stored periods, or recomputed in float32
    rope_periods: str = setting(
        "checkpoint", "RoPE models (DINOv3): bake the checkpoint's stored periods (default, as Meta's code) or "
        "recompute them in float32 (as timm / transformers)", choices=ROPE_PERIODS)
    # shorter side after resizing (int), (height, width), or None (keep the size)
    load_size: object = setting(224, "shorter image side after resizing (default 224)", type=int)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise InputError(f"model={self.model!r}: expected a zoo name such as 'dino_vits8'")
        if self.stride not in (None, "auto") and not (_is_int(self.stride) and self.stride >= 1):
            raise InputError(f"stride={self.stride!r}: expected an int >= 1 dividing the patch size, 'auto' or None")
        if not isinstance(self.backend, str):
            raise InputError(f"backend={self.backend!r}: expected auto, torch, onnxruntime or tensorrt")
        _check_choice("precision", self.precision, MODEL_PRECISIONS)
        if self.pos_interp is not None:
            _check_choice("pos_interp", self.pos_interp, POS_INTERPS)
        _check_choice("rope_periods", self.rope_periods, ROPE_PERIODS)
        onnx = () if self.onnx is None else (self.onnx,) if isinstance(self.onnx, str) else tuple(self.onnx)
        object.__setattr__(self, "onnx", tuple(str(p) for p in onnx))
        _check_load_size(self.load_size)

    def extractor_kwargs(self) -> dict:
        """Keyword arguments of `Extractor(...)` (everything but `load_size` and `onnx`)."""
        return {"model": self.model, "stride": self.stride, "weights": self.weights, "backend": self.backend,
                "device": self.device, "precision": self.precision, "rope_periods": self.rope_periods,
                "pos_interp": self.pos_interp}


@dataclass(frozen=True)
class MatchConfig(_FromObject):
    """Which descriptors are matched and how (the matching arguments of `find_correspondences`)."""

    # block (int) or list of blocks whose facet is the descriptor
    layer: object = setting(9, "transformer block whose facet is the descriptor", type=int)
    # key | query | value | token
    facet: str = setting("key", "descriptor facet", choices=FACET_NAMES)
    # log-bin (17 bins) before matching, as the original
    bin: bool = setting(True, "match unbinned descriptors")
    # saliency threshold of the foreground
    thresh: float = setting(0.05, "saliency threshold for the foreground, in [0, 1]", type=float)
    # pairs returned per image pair (k-means clusters)
    num_pairs: int = setting(10, "correspondences to draw and print", type=int)
    # Best-Buddies GEMM precision (fp32 exact; bf16 / fp16 faster on GPUs)
    match_precision: str = setting("fp32", "Best-Buddies GEMM precision (fp32 exact; bf16 / fp16 faster on GPUs)",
                                   choices=MATCH_PRECISIONS)
    # with bin: Best Buddies on materialised binned rows (the previous path)
    exact_gemm: bool = setting(False, "with binning: Best Buddies on materialised binned rows (the previous "
                               "path)")

    def __post_init__(self):
        _check_layer(self.layer)
        _check_choice("facet", self.facet, FACET_NAMES)
        if not isinstance(self.bin, bool) or not isinstance(self.exact_gemm, bool):
            raise InputError(f"bin={self.bin!r}, exact_gemm={self.exact_gemm!r}: expected True or False")
        num_pairs, thresh = check_match_args(self.num_pairs, self.thresh)
        object.__setattr__(self, "num_pairs", num_pairs)
        object.__setattr__(self, "thresh", thresh)
        _check_choice("match_precision", self.match_precision, MATCH_PRECISIONS)

    def match_kwargs(self) -> dict:
        """Keyword arguments of `match_views` (add the extractor's `stride` and `patch_size`)."""
        return {"num_pairs": self.num_pairs, "bin": self.bin, "thresh": self.thresh,
                "match_precision": self.match_precision, "exact_gemm": self.exact_gemm}
