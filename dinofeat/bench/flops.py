"""Arithmetic of each stage, and the machine's floor measured in the same run.

FLOPs count multiply-adds as 2 and include only the matrix products (softmax, LayerNorm, GELU, pooling and
normalisation are a few percent at most and are not counted): the floor is a lower bound. The floor of a stage is
its FLOPs divided by the best GEMM rate torch reaches on this machine in the same run (fp32 and bf16); a figure's
"fraction of the floor" is floor time / measured time (1.0 = at the limit).

Log-binning and the foreground filter do almost no arithmetic; for them the bytes they must write, divided by the
copy bandwidth measured in the same run, is recorded too (``bytes_floor_s``).
"""

from __future__ import annotations

import torch

from .timing import measure


def vit_block_flops(n: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """One pre-norm ViT block on n tokens: qkv, q k^T, attn v, proj, fc1, fc2."""
    hidden = int(dim * mlp_ratio)
    linear = 2 * n * dim * (3 * dim + dim + 2 * hidden)
    attention = 2 * 2 * n * n * dim
    return float(linear + attention)


def patch_embed_flops(t: int, dim: int, patch: int) -> float:
    return float(2 * t * dim * 3 * patch * patch)


def engine_forward_flops(spec, t: int, layer: int = 9, saliency: bool = True) -> float:
    """What the engine needs for one image: blocks 0..L (or 0..depth-2 plus the CLS row of the last block).

    The keys of block `layer` come out of the qkv product of that block (counted once). Saliency needs the keys of
    the last block and the CLS query's row: 2 N D^2 + 2 D^2 + 2 N D.
    """
    n, d = t + spec.num_prefix_tokens, spec.embed_dim
    flops = patch_embed_flops(t, d, spec.patch_size)
    if saliency:  # blocks 0 .. depth-2 in full (layer <= depth-2), then the CLS row of the last block
        flops += (spec.depth - 1) * vit_block_flops(n, d, spec.mlp_ratio) + 2 * n * d * d + 2 * d * d + 2 * n * d
    else:  # blocks 0 .. layer-1 in full, then the qkv product of block `layer`
        flops += layer * vit_block_flops(n, d, spec.mlp_ratio) + 2 * n * d * 3 * d
    return float(flops)


def original_forward_flops(spec, t: int) -> float:
    """The original for one image: two full forwards (descriptors, saliency) + the hook's qkv recomputation."""
    n, d = t + 1, spec.embed_dim
    one = patch_embed_flops(t, d, spec.patch_size) + spec.depth * vit_block_flops(n, d, spec.mlp_ratio)
    return float(2 * one + 2 * n * d * 3 * d)


def best_buddies_flops(t1: int, t2: int, c: int) -> float:
    """The similarity product; row normalisation (3 flops per element) included."""
    return float(2 * t1 * t2 * c + 3 * (t1 + t2) * c)


def log_bin_bytes(t: int, c: int, hierarchy: int = 2, itemsize: int = 4) -> float:
    """Bytes log-binning must at least move: read (T, C), write (T, C * (1 + 8 h))."""
    return float(t * c * itemsize * (1 + 1 + 8 * hierarchy))


def log_bin_flops(t: int, c: int, hierarchy: int = 2) -> float:
    """Box averages (about 2 flops per pooled element and level > 0); the bins themselves are copies."""
    return float(2 * t * c * (hierarchy - 1))


def gemm_rates(dtypes=("fp32", "bf16", "fp16"), *, shapes=None, device=None, warmup: int = 1, repeat: int = 3,
               fp16_cpu_shape=(512, 384, 1536)) -> dict:
    """Best GEMM rate torch reaches here per dtype, over the shapes the pipeline uses.

    Shapes (m, k, n): a square 2048 product; the ViT's MLP at 224 (4566 x 384 @ 384 x 1536); the Best-Buddies
    product at 224 (1024 rows of 6528 @ 6528 x 3025). On a CPU without native fp16 GEMM only a small fp16
    product is timed (the large ones would take minutes).
    """
    device = torch.device(device or "cpu")
    shapes = shapes or [(2048, 2048, 2048), (4566, 384, 1536), (1024, 6528, 3025)]
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = {}
    for name in dtypes:
        rows = []
        todo = shapes
        if name == "fp16" and device.type == "cpu":
            todo = [fp16_cpu_shape]
        for m, k, n in todo:
            g = torch.Generator(device="cpu").manual_seed(0)
            a = torch.randn(m, k, generator=g).to(device=device, dtype=dt[name])
            b = torch.randn(k, n, generator=g).to(device=device, dtype=dt[name])
            timing, _, _ = measure(lambda a=a, b=b: a @ b, warmup=warmup, repeat=repeat, min_repeat=repeat,
                                   device=device)
            flops = 2.0 * m * k * n
            rows.append({"shape_mkn": [m, k, n], "median_s": timing.median, "gflops": flops / timing.median / 1e9,
                         "n": len(timing.times)})
        best = max(rows, key=lambda r: r["gflops"])
        out[name] = {"rate_flops": best["gflops"] * 1e9, "best_shape": best["shape_mkn"], "shapes": rows}
    return out


def copy_bandwidth(nbytes: int = 256 << 20, device=None, repeat: int = 3) -> dict:
    """Bytes moved per second by a large tensor copy (read + write counted)."""
    device = torch.device(device or "cpu")
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing, _, _ = measure(lambda: dst.copy_(src), warmup=1, repeat=repeat, min_repeat=repeat, device=device)
    return {"bytes_per_s": 2 * nbytes / timing.median, "buffer_bytes": nbytes, "median_s": timing.median}


def floors(flops: float | None, rates: dict, nbytes: float | None = None, bandwidth: dict | None = None) -> dict:
    """Floor times of a stage: FLOPs / GEMM rate per dtype, and bytes / copy bandwidth."""
    out: dict = {}
    if flops:
        out["flops"] = flops
        for name, r in rates.items():
            if name in ("fp32", "bf16"):
                out[f"floor_{name}_s"] = flops / r["rate_flops"]
    if nbytes and bandwidth:
        out["bytes"] = nbytes
        out["bytes_floor_s"] = nbytes / bandwidth["bytes_per_s"]
    return out


def fraction(floor_s: float | None, measured_s: float | None) -> float | None:
    if not floor_s or not measured_s:
        return None
    return floor_s / measured_s

