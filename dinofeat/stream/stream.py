"""`FrameStream`: one model, one frame size, frames in and correspondences out at camera rate."""

from __future__ import annotations

import contextlib

import torch

from ..config import ExtractorConfig, MatchConfig
from ..correspondences import ImageView, match_views, view_of
from ..engine.device_resize import lanczos_resize_u8
from ..engine.extractor import Extractor
from ..engine.preprocess import check_load_size, resized_size
from ..errors import InputError
from ..limits import check_tokens
from . import frames as F
from .result import StreamMatch


class FrameStream:
    """A persistent matcher for a camera: features of a keyframe, reused for every frame matched against it.

    Frames are numpy arrays, torch tensors or any ``__dlpack__`` object, viewed without a copy: ``rgb8`` /
    ``bgr8`` (H, W, 3) uint8, ``mono8`` (H, W) uint8, or ``float_chw`` (3, H, W) float in [0, 1]. They are converted
    and resized on the stream's device: uint8 frames with Pillow's Lanczos reproduced bit for bit
    (`dinofeat.engine.device_resize`), so results equal `find_correspondences` on the same arrays; float frames
    with torch's antialiased bicubic (close, not equal). The input batch buffer is allocated once per frame size
    and reused.

    CUDA: all work is enqueued on ``stream`` (a ``torch.cuda.Stream``, a CuPy stream, or a raw ``cudaStream_t``
    handle as an int; default: the current stream at each call). `match` and `set_reference` do not synchronise
    the host with a device frame (a host frame is copied through a pinned buffer: the host waits only for the
    copy of the frame before the previous one). The host waits when a result is read (`StreamMatch`).

    Example:
        >>> s = FrameStream(ExtractorConfig(weights="dino_deitsmall8_pretrain.pth"), MatchConfig(num_pairs=10),
        ...                 frame_size=(480, 640), encoding="bgr8")
        >>> s.set_reference(keyframe)                 # (480, 640, 3) uint8
        >>> r = s.match(frame)                        # enqueued
        >>> r.frame_points2                           # (K, 2) float32 (y, x) in frame pixels (waits here)

    Not thread-safe: one stream per camera thread (several streams may share one `Extractor`).
    """

    def __init__(self, extractor_config: ExtractorConfig | None = None, match_config: MatchConfig | None = None,
                 *, frame_size: tuple[int, int], encoding: str = "rgb8", dynamic: bool = False,
                 match_previous: bool = False, stream=None, extractor=None, progress: bool = False):
        """
        Args:
            extractor_config: model, weights, backend, device, precision, load_size (default `ExtractorConfig()`).
            match_config: layer, facet, bin, thresh, num_pairs, match precision (default `MatchConfig()`).
            frame_size: (height, width) of the frames; another size raises `InputError` unless `dynamic`.
            encoding: default encoding of the frames (per call: ``encoding=``).
            dynamic: accept frames of any size (buffers re-planned when the size changes).
            match_previous: also match each frame to the previous one (`StreamMatch.previous`).
            stream: CUDA stream to enqueue on (CUDA devices only).
            extractor: an existing `Extractor` to share (its model settings then replace the config's).
        """
        self.extractor_config = extractor_config or ExtractorConfig()
        self.match_config = match_config or MatchConfig()
        if not isinstance(self.extractor_config, ExtractorConfig) or not isinstance(self.match_config, MatchConfig):
            raise InputError("extractor_config / match_config: expected dinofeat.config.ExtractorConfig and "
                             f"MatchConfig, got {type(extractor_config).__name__} / {type(match_config).__name__}")
        self.encoding = F.check_encoding(encoding)
        self.dynamic = bool(dynamic)
        self.match_previous = bool(match_previous)
        self.extractor = extractor or Extractor.from_config(self.extractor_config, progress=progress)
        ex, mc = self.extractor, self.match_config
        check_load_size(self.extractor_config.load_size, ex.patch_size)
        from ..model.vit import check_request  # noqa: PLC0415 - model rules checked once, here

        check_request(ex.spec, mc.layer, mc.facet)
        self.device = ex.device
        self.cuda_stream = _cuda_stream(stream, self.device)
        self._mean = torch.tensor(ex.spec.mean, dtype=torch.float32, device=self.device)[:, None, None]
        self._std = torch.tensor(ex.spec.std, dtype=torch.float32, device=self.device)[:, None, None]
        self._c255 = torch.full((1, 1, 1), 255.0, dtype=torch.float32, device=self.device)  # true division
        with self._on_stream():  # buffers belong to the stream they are used on (caching allocator)
            self._plan(_check_size(frame_size))
        self._reference: tuple | None = None  # (view, index, input size, resized size)
        self._last: tuple | None = None
        self.frames = 0  # frames given to set_reference / match

    def __repr__(self) -> str:
        return (f"FrameStream({self.extractor!r}, frame_size={self.frame_size}, resized={self.resized_size}, "
                f"encoding={self.encoding!r}, dynamic={self.dynamic})")

    # ---- public ------------------------------------------------------------------------------------------------

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def set_reference(self, frame, *, encoding: str | None = None) -> int:
        """Extract `frame`'s features and keep them as the keyframe every later `match` compares to.
        Returns the frame's index (frames are counted from 0 over set_reference and match)."""
        with self._on_stream():
            view, sizes = self._features(frame, encoding, "frame")
        index = self._count()
        self._reference = (view, index, *sizes)
        self._last = self._reference
        return index

    def match(self, frame, *, encoding: str | None = None, previous: bool | None = None) -> StreamMatch:
        """Correspondences of `frame` to the keyframe (and to the previous frame with ``previous=True`` or the
        stream's `match_previous`), reusing the keyframe's features. Returns at once (see `StreamMatch`)."""
        if self._reference is None:
            raise InputError("match: no reference frame yet; call stream.set_reference(keyframe) first")
        with self._on_stream():
            view, sizes = self._features(frame, encoding, "frame")
        index = self._count()
        current = (view, index, *sizes)
        want_previous = self.match_previous if previous is None else bool(previous)
        prev = self._pair(self._last, current) if want_previous and self._last is not None else None
        self._last = current
        return self._pair(self._reference, current, previous=prev)

    def warmup(self, frame, *, encoding: str | None = None) -> None:
        """Run the cold path once on `frame` (first forward at this size, Best Buddies, k-means: the frame matched
        to itself) without touching the keyframe or the frame count, so the first real frame is warm. Waits for
        the result (call it at start-up, before the control loop)."""
        with self._on_stream():
            view, sizes = self._features(frame, encoding, "frame")
        first = (view, -1, *sizes)
        self._pair(first, first).wait()

    def preprocess(self, frame, *, encoding: str | None = None) -> torch.Tensor:
        """(1, 3, h, w) float32 model input of `frame` on the device, equal to `Extractor.preprocess` of the same
        uint8 array (a view of the stream's reused buffer: overwritten by the next frame)."""
        with self._on_stream():
            return self._prepare(frame, encoding, "frame")[0]

    # ---- internals ---------------------------------------------------------------------------------------------

    def _count(self) -> int:
        self.frames += 1
        return self.frames - 1

    def _on_stream(self):
        return torch.cuda.stream(self.cuda_stream) if self.cuda_stream is not None else contextlib.nullcontext()

    def _plan(self, size: tuple[int, int]) -> None:
        """Buffers and sizes for (H, W) frames."""
        ex = self.extractor
        height, width = size
        new_w, new_h = resized_size(width, height, self.extractor_config.load_size)
        grid = ex.num_patches(new_h, new_w)
        if new_h < ex.patch_size or new_w < ex.patch_size:
            raise InputError(f"frame_size={size}: resized to {new_h}x{new_w}, smaller than the patch size "
                             f"{ex.patch_size}; use a larger load_size")
        check_tokens(grid, (new_h, new_w), "frame_size")
        self.frame_size = (height, width)
        self.resized_size = (new_h, new_w)
        self.num_patches = grid
        self._batch = torch.empty((1, 3, new_h, new_w), dtype=torch.float32, device=self.device)
        self._staging = _HostStaging(self.device, self.cuda_stream) if self.device.type == "cuda" else None

    def _prepare(self, frame, encoding, name):
        encoding = F.check_encoding(self.encoding if encoding is None else encoding)
        t = F.as_tensor(frame, name)
        size = F.frame_size(t, encoding, name)
        if size != self.frame_size:
            if not self.dynamic:
                raise InputError(f"{name}: {size[0]}x{size[1]} frame, but the stream was planned for "
                                 f"{self.frame_size[0]}x{self.frame_size[1]}; pass frames of that size, or create "
                                 "the stream with dynamic=True")
            self._plan(size)
        if t.device != self.device:
            t = self._staging.to_device(t) if self._staging is not None and t.device.type == "cpu" else \
                t.to(self.device, non_blocking=True)
        h, w = self.resized_size
        if encoding == "float_chw":
            x = t.to(torch.float32)  # may be the caller's tensor: never written
            if (h, w) != size:
                x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bicubic", antialias=True,
                                                    align_corners=False)[0].clamp_(0, 1)
        else:
            rgb = lanczos_resize_u8(F.to_rgb_hwc(t, encoding), (h, w))  # (h, w, 3) float64 of 0..255 integers
            x = rgb.permute(2, 0, 1).to(torch.float32).div(self._c255)  # == ToTensor on the uint8 image
        torch.sub(x, self._mean, out=self._batch[0])  # == preprocess's x.sub(mean).div(std), into the buffer
        self._batch.div_(self._std)
        return self._batch, size

    def _features(self, frame, encoding, name) -> tuple[ImageView, tuple]:
        batch, size = self._prepare(frame, encoding, name)
        mc = self.match_config
        f = self.extractor.extract(batch, layer=mc.layer, facet=mc.facet, bin=False, saliency=True)
        return view_of(f, 0, mc.layer, None), (size, self.resized_size)

    def _pair(self, first: tuple, second: tuple, previous: StreamMatch | None = None) -> StreamMatch:
        view1, index1, in1, rs1 = first
        view2, index2, in2, rs2 = second
        ex, kwargs = self.extractor, self.match_config.match_kwargs()

        def compute():
            return match_views(view1, view2, stride=ex.stride, patch_size=ex.patch_size, **kwargs)

        return StreamMatch(compute, frame_index=index2, reference_index=index1, sizes=(in1, rs1, in2, rs2),
                           device=self.device, cuda_stream=self.cuda_stream, previous=previous)


def _check_size(frame_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in frame_size)
        ok = height >= 1 and width >= 1 and all(not isinstance(v, bool) for v in frame_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"frame_size={frame_size!r}: expected (height, width), two ints >= 1")
    return height, width


def _cuda_stream(stream, device: torch.device):
    """The torch stream to enqueue on: None (the current stream at each call) on CUDA, None on the CPU."""
    if stream is None:
        return None
    if device.type != "cuda":
        raise InputError(f"stream={stream!r}: a CUDA stream needs a CUDA device, the stream runs on {device}")
    if isinstance(stream, torch.cuda.Stream):
        return stream
    handle = getattr(stream, "ptr", getattr(stream, "cuda_stream", stream))  # CuPy: .ptr; torch-like: .cuda_stream
    if isinstance(handle, bool) or not isinstance(handle, int):
        raise InputError(f"stream={stream!r}: expected a torch.cuda.Stream, a CuPy stream or a cudaStream_t int")
    return torch.cuda.ExternalStream(handle, device=device)


class _HostStaging:
    """Two pinned host buffers, used in turn for host frames on CUDA (asynchronous H2D copies)."""

    def __init__(self, device: torch.device, cuda_stream):
        self.device = device
        self.cuda_stream = cuda_stream
        self._slots: list = [None, None]
        self._turn = 0

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        slot = self._slots[self._turn]
        if slot is None or slot[0].shape != t.shape or slot[0].dtype != t.dtype:
            slot = (torch.empty(t.shape, dtype=t.dtype, pin_memory=True), torch.cuda.Event())
            self._slots[self._turn] = slot
        else:
            slot[1].synchronize()  # the copy that last read this buffer (two frames ago) has finished
        buf, event = slot
        buf.copy_(t)
        out = buf.to(self.device, non_blocking=True)
        event.record(self.cuda_stream or torch.cuda.current_stream(self.device))
        self._turn ^= 1
        return out
