"""Eager PyTorch backend: the reference engine, on CPU or CUDA, in fp32 (exact) or bf16/fp16."""

from __future__ import annotations

import torch

from ...export.model import Request, StridedViT, resample_position_table

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        with torch.inference_mode():
            outs = self.model.forward_features(batch.to(self.device, self.dtype), request, **kwargs)
        return {name: out.float() for name, out in zip(request.output_names(), outs, strict=False)}
