"""Eager PyTorch backend: the reference engine, on CPU or CUDA, in fp32 (exact), tf32 or bf16/fp16.

fp32 is IEEE fp32 on every GPU: each run pins ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` to False (cuDNN's default is True, and a user may have switched matmuls on),
restoring the caller's flags afterwards. ``precision="tf32"`` is the explicit opt-in: fp32 tensors, TF32 tensor-core
matmuls and convolutions on Ampere and newer (on the CPU it computes exactly like fp32).
"""

from __future__ import annotations

import contextlib

import torch

from ...export.model import Request, StridedViT, resample_position_table

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def tf32_mode(enabled: bool):
    """Set torch's TF32 switches (CUDA matmul and cuDNN) for the block, then restore the caller's values.
    Use ``tf32_mode(False)`` around any fp32 GPU reference that must be IEEE fp32."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    old = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = old


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

    def run(self, batch: torch.Tensor, request: Request) -> dict[str, torch.Tensor]:
        height, width = (int(s) for s in batch.shape[-2:])
        pos = self._positions(height, width)
        kwargs = {"pos": pos} if self.model.spec.pos == "learned" else {"rope": pos}
        with torch.inference_mode(), tf32_mode(self.precision == "tf32"):
            outs = self.model.forward_features(batch.to(self.device, self.dtype), request, **kwargs)
        return {name: out.float() for name, out in zip(request.output_names(), outs, strict=False)}
