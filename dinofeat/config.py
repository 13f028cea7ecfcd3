"""Settings objects, one per concern, in the base layer: `ExtractorConfig` (model, weights, backend, input size)
and `MatchConfig` (descriptor and matching settings).

Each field is checked here as far as the field alone allows (types, ranges, names); rules that need the model
(stride divides the patch size, layer < depth, load size >= patch size) stay in `Extractor` / `check_request`.
Both are frozen dataclasses: derive variants with `dataclasses.replace`, or build one from any object with the
same attribute names (a `MatcherConfig`, an argparse namespace) with `from_object`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InputError

FACET_NAMES = ("key", "query", "value", "token")  # the facets every zoo model exposes (zoo.FACETS)
MODEL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # Extractor precisions
MATCH_PRECISIONS = ("fp32", "fp16", "bf16")  # Best-Buddies GEMM precisions (kernels)


def check_match_args(num_pairs, thresh) -> tuple[int, float]:
    """Validate `num_pairs` (int >= 1) and `thresh` (a number, not NaN); returns them normalised."""
    if isinstance(num_pairs, bool) or not _is_int(num_pairs) or num_pairs < 1:
        raise InputError(f"num_pairs={num_pairs!r}: expected an int >= 1")
    try:
        thresh = float(thresh)
    except (TypeError, ValueError):
        raise InputError(f"thresh={thresh!r}: expected a number (saliency threshold, default 0.05)") from None
    if math.isnan(thresh):
        raise InputError("thresh=nan: expected a number (saliency threshold, default 0.05)")
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


class _FromObject:
    @classmethod
    def from_object(cls, obj, **overrides):
        """This config from any object (or mapping) carrying some of its field names; `overrides` win."""
        get = obj.get if isinstance(obj, dict) else (lambda k, d: getattr(obj, k, d))
        missing = object()
        values = {f.name: v for f in fields(cls) if (v := get(f.name, missing)) is not missing}
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class ExtractorConfig(_FromObject):
    """How images become descriptors: the arguments of `Extractor(...)` plus the preprocessing size."""

    model: str = "dino_vits8"  # zoo name (`dinofeat weights list`)
    stride: int | None = 4  # patch-embedding stride, must divide the patch size; None: the patch size
    weights: object = None  # None: the official file (cached download); a path or a state dict
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    device: object = "auto"  # auto | cpu | cuda[:N] | a torch.device
    precision: str = "fp32"  # ViT precision: fp32 (exact), tf32, bf16, fp16
    load_size: object = 224  # shorter side after resizing (int), (height, width), or None (keep the size)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise InputError(f"model={self.model!r}: expected a zoo name such as 'dino_vits8'")
        if self.stride is not None and not (_is_int(self.stride) and self.stride >= 1):
            raise InputError(f"stride={self.stride!r}: expected an int >= 1 dividing the patch size, or None")
        if not isinstance(self.backend, str):
            raise InputError(f"backend={self.backend!r}: expected auto, torch, onnxruntime or tensorrt")
        _check_choice("precision", self.precision, MODEL_PRECISIONS)
        _check_load_size(self.load_size)

    def build(self, *, progress: bool = False):
        """The `Extractor` these settings describe (loads the weights)."""
        from .engine.extractor import Extractor  # noqa: PLC0415 - the engine sits above this layer

        return Extractor(model=self.model, stride=self.stride, weights=self.weights, backend=self.backend,
                         device=self.device, precision=self.precision, progress=progress)


@dataclass(frozen=True)
class MatchConfig(_FromObject):
    """Which descriptors are matched and how (the matching arguments of `find_correspondences`)."""

    layer: object = 9  # block (int) or list of blocks whose facet is the descriptor
    facet: str = "key"  # key | query | value | token
    bin: bool = True  # log-bin (17 bins) before matching, as the original
    thresh: float = 0.05  # saliency threshold of the foreground
    num_pairs: int = 10  # pairs returned per image pair (k-means clusters)
    match_precision: str = "fp32"  # Best-Buddies GEMM precision (fp32 exact; bf16 / fp16 faster on GPUs)
    exact_gemm: bool = False  # with bin: Best Buddies on materialised binned rows (the previous path)

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
