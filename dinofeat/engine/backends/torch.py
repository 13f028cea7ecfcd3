"""Eager PyTorch backend: the reference engine, on CPU or CUDA, in fp32 (exact), tf32 or bf16/fp16.

fp32 is IEEE fp32 on every GPU: each run pins torch's TF32 switches (CUDA matmul and cuDNN conv; the
``fp32_precision`` API where torch has it, else ``allow_tf32``) to IEEE (cuDNN's default is TF32, and a user may have
switched matmuls on), restoring the caller's switches afterwards; runs of another precision in other threads wait
(`tf32_mode`). ``precision="tf32"`` is the explicit opt-in: fp32 tensors, TF32 tensor-core
matmuls and convolutions on Ampere and newer (on the CPU it computes exactly like fp32).
"""

from __future__ import annotations

import contextlib
import threading

import torch

from ...model.vit import Request, StridedViT, resample_position_table
from .base import fp32_state_dict

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tf32_switches() -> list[tuple[object, str, object, object]]:
    """(owner, attribute, value for TF32 on, value for TF32 off) of torch's TF32 switches (CUDA matmul, cuDNN conv).
    The ``fp32_precision`` API where torch has it (>= 2.9: there, reading the legacy ``allow_tf32`` raises once
    the new API has been used), else the legacy ``allow_tf32`` flags."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    try:
        new_api = isinstance(matmul.fp32_precision, str) and isinstance(conv.fp32_precision, str)
    except (AttributeError, RuntimeError):
        new_api = False
    if new_api:
        return [(matmul, "fp32_precision", "tf32", "ieee"), (conv, "fp32_precision", "tf32", "ieee")]
    return [(matmul, "allow_tf32", True, False), (cudnn, "allow_tf32", True, False)]


class _TF32Gate:
    """Scopes torch's process-global TF32 switches to the calls that need them.

    Calls in the same mode (TF32 on, or off) run together; a call in the other mode waits until they are done
    (and new calls of the running mode wait behind it, so neither mode starves). The first call of a run saves
    the caller's switches and sets them, the last one restores them. So two extractors of different precisions
    used from two threads never see each other's setting."""

    def __init__(self):
        self._cond = threading.Condition()
        self._mode: bool | None = None  # the mode of the calls running now
        self._active = 0
        self._waiting = {True: 0, False: 0}
        self._saved: list = []
        self._local = threading.local()  # the modes this thread holds (nesting)

    @contextlib.contextmanager
    def scope(self, enabled: bool):
        enabled = bool(enabled)
        held = getattr(self._local, "modes", None)
        if held:  # nested in a scope this thread holds
            with self._nested(enabled, held[-1]):
                held.append(enabled)
                try:
                    yield
                finally:
                    held.pop()
            return
        with self._cond:
            self._waiting[enabled] += 1
            try:
                self._cond.wait_for(lambda: self._active == 0 or (
                    self._mode == enabled and not self._waiting[not enabled]))
            finally:
                self._waiting[enabled] -= 1
            if self._active == 0:
                self._saved = _set_switches(enabled)
                self._mode = enabled
            self._active += 1
        self._local.modes = [enabled]
        try:
            yield
        finally:
            self._local.modes = []
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    restore_tf32_switches(self._saved)
                    self._saved, self._mode = [], None
                    self._cond.notify_all()

    @contextlib.contextmanager
    def _nested(self, enabled: bool, outer: bool):
        if enabled == outer:
            yield
            return
        with self._cond:
            if self._active != 1:
                raise RuntimeError(f"tf32_mode({enabled}) nested in tf32_mode({outer}) while other threads run in "
                                   f"tf32_mode({outer}); leave the outer block first")
            saved = _set_switches(enabled)
            self._mode = None  # nobody joins a switched-over block
        try:
            yield
        finally:
            with self._cond:
                restore_tf32_switches(saved)
                self._mode = outer
                self._cond.notify_all()


def _set_switches(enabled: bool) -> list:
    """Set the TF32 switches; returns what `restore_tf32_switches` needs to put the previous values back."""
    switches = tf32_switches()
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _, _ in switches]
    for owner, attr, on, off in switches:
        setattr(owner, attr, on if enabled else off)
    return saved


def restore_tf32_switches(saved: list) -> None:
    for owner, attr, value in saved:
        setattr(owner, attr, value)


_GATE = _TF32Gate()


def tf32_mode(enabled: bool):
    """Context manager: torch's TF32 switches (CUDA matmul and cuDNN conv) set for the block, the caller's values
    restored afterwards; blocks of the other mode in other threads wait (see `_TF32Gate`). Use
    ``tf32_mode(False)`` around any fp32 GPU reference that must be IEEE fp32."""
    return _GATE.scope(enabled)


class TorchBackend:
    name = "torch"
    thread_safe = True  # inference_mode forwards share only read-only weights; `_pos` is filled idempotently

    def __init__(self, model: StridedViT, device: torch.device, precision: str = "fp32"):
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        # The learned position table is resampled from the fp32 weights whatever the run precision.
        self._pos_table = model.pos_embed.detach().float().cpu().clone() if model.spec.pos == "learned" else None
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._pos: dict[tuple[int, int], torch.Tensor] = {}

    def _positions(self, height: int, width: int):
        key = (height, width)
        if key not in self._pos:
            if self.model.spec.pos == "learned":
                # Resampled in fp32 on the CPU from the fp32 table (exactly the original), then moved.
                spec, stride = self.model.spec, self.model.stride
                table = resample_position_table(spec, self._pos_table, height, width, stride)
                self._pos[key] = table.to(self.device)
            else:
                self._pos[key] = tuple(t.to(self.device) for t in self.model.rope_embedding(height, width))
        return self._pos[key]

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 CPU copy of the running model's weights (the learned position table as loaded, at full precision
        whatever the run precision): what `Extractor.with_stride` builds another stride from."""
        state = fp32_state_dict(self.model)
        if self._pos_table is not None:
            state["pos_embed"] = self._pos_table.clone()
        return state

    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]:
        height, width = (int(s) for s in batch.shape[-2:])
        pos = self._positions(height, width)
        kwargs = {"pos": pos} if self.model.spec.pos == "learned" else {"rope": pos}
        with torch.inference_mode(), tf32_mode(self.precision == "tf32"):
            outs = self.model.forward_features(batch.to(self.device, self.dtype), request, **kwargs)
        return {name: out.float() for name, out in zip(request.output_names(), outs, strict=False)}
