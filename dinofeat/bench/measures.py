"""Small measurements shared by the runner's rows: relative deviations, Best-Buddies pair sets and their agreement,
fitted scaling exponents, the instrumented `find_correspondences`, the CUDA reason and the JSON encoder."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch


def json_default(o):
    """`json.dumps(default=...)` of a result: numpy scalars / arrays, paths, devices, dtypes."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return repr(o)


def rel(a, b) -> float:
    """max |a - b| / max |b| (float64, on the host)."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def pairs(nn_1, mask) -> set[tuple[int, int]]:
    """The mutual pairs (i, nn_1[i]) where `mask` is set."""
    nn_1 = torch.as_tensor(nn_1).cpu()
    idx = torch.nonzero(torch.as_tensor(mask).cpu(), as_tuple=False).squeeze(1)
    return {(int(i), int(nn_1[i])) for i in idx.tolist()}


def agreement(found: set, reference: set) -> dict:
    """Jaccard overlap of two sets of mutual pairs, and how many of the reference's pairs were found."""
    union = found | reference
    inter = found & reference
    return {"pairs": len(found), "reference_pairs": len(reference), "common": len(inter),
            "jaccard": len(inter) / len(union) if union else 1.0,
            "recall_of_reference": len(inter) / len(reference) if reference else 1.0}


def bb_agreement(bb, ref) -> dict:
    """How far a Best-Buddies result is from the fp32 reference result (same descriptors or not)."""
    out = agreement(pairs(bb.nn_1, bb.mask), pairs(ref.nn_1, ref.mask))
    out["nn_1_equal"] = float((torch.as_tensor(bb.nn_1).cpu() == torch.as_tensor(ref.nn_1).cpu()).double().mean())
    out["nn_2_equal"] = float((torch.as_tensor(bb.nn_2).cpu() == torch.as_tensor(ref.nn_2).cpu()).double().mean())
    return out


def fit_exponent(xs, ys) -> float | None:
    """k of y ~ x^k (least squares in log-log), None with fewer than two distinct positive points."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=False) if x and y and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


@contextlib.contextmanager
def instrumented(ex, acc: dict):
    """Time what find_correspondences calls (preprocess, extract, best_buddies, select_pairs) without changing it."""
    from .. import correspondences as corr_mod
    from .. import kernels as kernels_mod

    def wrap(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    orig_bb, orig_sel = kernels_mod.best_buddies, corr_mod.select_pairs
    orig_bbb = kernels_mod.best_buddies_binned  # the bin=True path of find_correspondences (issue 10)
    ex.preprocess = wrap("preprocess", type(ex).preprocess.__get__(ex))
    ex.extract = wrap("extract", type(ex).extract.__get__(ex))
    kernels_mod.best_buddies = wrap("best_buddies", orig_bb)
    kernels_mod.best_buddies_binned = wrap("best_buddies", orig_bbb)
    corr_mod.select_pairs = wrap("select_pairs", orig_sel)
    try:
        yield
    finally:
        del ex.preprocess, ex.extract
        kernels_mod.best_buddies, corr_mod.select_pairs = orig_bb, orig_sel
        kernels_mod.best_buddies_binned = orig_bbb


def cuda_reason() -> str:
    """'' with a CUDA GPU, else "no CUDA GPU: <why>"."""
    from .environment import cuda_status

    ok, why = cuda_status()
    return "" if ok else f"no CUDA GPU: {why}"
