"""How much DINOv3's outputs move between ``rope_periods="checkpoint"`` and ``"recompute"`` (issue 14).

``python -m benchmarks.rope_periods [--out benchmarks/results/rope_periods.json]``

Weights: the golden rule (`dinofeat.testing.deterministic_state_dict`) in the official DINOv3 layout, the intended
K-masking ``qkv.bias_mask``, and ``rope_embed.periods`` rounded to bfloat16 as the released checkpoints store
them; once as drawn ("plain") and once with the qkv weights x4 ("peaked": with the plain rule attention is nearly
uniform, so positions matter less than in a trained model). For each model, stride and image, both modes run the
same weights; the figures are max |checkpoint - recompute| / max |recompute| per output (keys of blocks 5 and 9 are
pre-RoPE but depend on RoPE through the blocks before them; tokens of block 11 and saliency are post-RoPE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

OUTPUTS = ((5, "key"), (9, "key"), (11, "token"))


def official_checkpoint(spec, peaked: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Golden-rule DINOv3 weights in the official layout with bfloat16-rounded RoPE periods."""
    from dinofeat.model.dinov3 import official_bias_mask, official_dinov3_shapes, official_periods
    from dinofeat.testing import deterministic_state_dict

    sd = deterministic_state_dict(official_dinov3_shapes(spec), seed)
    sd["rope_embed.periods"] = official_periods(spec).to(torch.bfloat16).float()
    for key in list(sd):
        if key.endswith("attn.qkv.bias_mask"):
            sd[key] = official_bias_mask(spec)
        elif key.endswith("attn.qkv.weight") and peaked:
            sd[key] = sd[key] * 4
    return sd


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).abs().max() / b64.abs().max())


def measure(model: str, stride: int, sizes, peaked: bool) -> list[dict]:
    from dinofeat.model.vit import Request, build_vit
    from dinofeat.model.weights import load_weights
    from dinofeat.model.zoo import get_model_spec

    spec = get_model_spec(model)
    loaded = load_weights(spec, official_checkpoint(spec, peaked))
    ckpt = build_vit(spec, stride, loaded, "checkpoint")
    recomp = build_vit(spec, stride, loaded, "recompute")
    request = Request(facets=tuple((lyr, f) for lyr, f in OUTPUTS if lyr < spec.depth), saliency=True)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for height, width in sizes:
        x = torch.randn(1, 3, height, width, generator=gen)
        with torch.no_grad():
            a = ckpt.forward_features(x, request)
            b = recomp.forward_features(x, request)
        sin_a, cos_a = ckpt.rope_embedding(height, width)
        sin_b, cos_b = recomp.rope_embedding(height, width)
        row = {"model": model, "weights": "peaked" if peaked else "plain", "stride": stride,
               "size": [height, width], "rope_table_max_abs": float(max((sin_a - sin_b).abs().max(),
                                                                        (cos_a - cos_b).abs().max()))}
        row.update({name: _rel(o1, o2) for name, o1, o2 in zip(request.output_names(), a, b, strict=True)})
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/rope_periods.json")
    p.add_argument("--model", default="dinov3_vits16")
    args = p.parse_args(argv)
    from dinofeat.model.dinov3 import official_periods
    from dinofeat.model.zoo import get_model_spec

    spec = get_model_spec(args.model)
    fp32 = official_periods(spec)
    bf16 = fp32.to(torch.bfloat16).float()
    t0 = time.time()
    load0 = os.getloadavg()
    rows = []
    for peaked in (False, True):
        for stride in (16, 8):
            rows += measure(args.model, stride, [(224, 224), (224, 320)], peaked)
    result = {
        "what": __doc__.split("\n\n")[0],
        "periods": {"recompute_fp32": fp32.tolist(), "checkpoint_bf16": bf16.tolist(),
                    "max_rel_period_diff": float(((bf16 - fp32).abs() / fp32).max())},
        "rows": rows,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__, "cpus": os.cpu_count(),
                    "loadavg_start": load0, "loadavg_end": os.getloadavg(), "wall_s": round(time.time() - t0, 1)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for r in rows:
        print(json.dumps(r))
    print(f"max relative period difference {result['periods']['max_rel_period_diff']:.2e}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
