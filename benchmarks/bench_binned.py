"""Binned Best Buddies through shifted Gram matrices (issue 10) against Best Buddies on materialised binned rows.

    python -m benchmarks.bench_binned [--loads 224 320 480] [--repeat 3] [--no-e2e] [--out benchmarks/results]

* Keys at 224: the deterministic-weight keys of the golden pair A (55x83) / B (55x55) (``golden_img_{a,b}_224.npz``,
  exactly what the extractor computes); at 320 / 480: standard-normal keys on the grids of the same images at that
  load (A 79x119 / B 79x79, A 119x179 / B 119x119; the time does not depend on the values).
* Per load, timed interleaved in this process (median of --repeat at 224, one call at larger loads; every sample
  kept): ``dense`` = ``best_buddies(b1, b2)`` on the materialised binned rows (the path before issue 10, rows made
  beforehand), ``binned`` = ``best_buddies_binned(k1, ..., k2, ...)`` (default: one G_0 = K1 K2^T GEMM per tile,
  higher levels as box sums of G_0, the "fast" tiling: 32 MiB of tiles), ``binned_low_memory`` (the same with tiles
  within 6% of the dense S) and ``binned_level_gemms`` (one GEMM per level of the level maps, the previous method,
  "fast" tiling); the GEMM rate (one T1 x T2 x C fp32 GEMM) and from it the arithmetic floors: the default
  method's one Gram GEMM (2 T1 T2 C FLOP) and the issue's 2 Gram GEMMs (4 T1 T2 C FLOP).
* Peak extra memory of each method: one call in a fresh child process (inputs made and touched, code paths warmed on
  small inputs (dense: 8 x 700 rows; binned: a 6-row strip of each grid), VmHWM reset through /proc/self/clear_refs): VmHWM after - VmRSS before, vs the dense T1 x T2 fp32 S
  (``--dense-max-load`` skips the dense path above a load).
* log_bin with a warm ``out=`` buffer vs a fresh array: min and median.
* End to end (paper pair, deterministic weights, 224): ``find_correspondences`` default (binned Gram) vs
  ``exact_gemm=True`` in the same run (one untimed warm-up call of each, then --e2e-repeat interleaved rounds), with
  their outputs against the golden pair.
* bf16 on this CPU: ISA flags (avx512_bf16 / amx_bf16), the bf16 vs fp32 GEMM rate, and (``--bf16-load``, 112 by
  default) the paper pair end to end in bf16 vs fp32 with the best-buddy Jaccard: on an AVX2-only CPU bf16 is
  emulated, so the rows are reported as they are (no bf16 path can beat fp32 there).
Writes ``bench_binned.json`` and ``bench_binned.png``; records machine, versions and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dinofeat.io import atomic_save, atomic_write_text

GOLDEN = Path(os.environ.get("DINOFEAT_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))
GRIDS = {224: ((55, 83), (55, 55)), 320: ((79, 119), (79, 79)), 480: ((119, 179), (119, 119))}
C = 384
METHODS = ("dense", "binned", "binned_low_memory", "binned_level_gemms")


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_info() -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    isa = {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")}
    native_bf16 = isa["avx512_bf16"] or isa["amx_bf16"]
    return {"model": model, "logical_cpus": os.cpu_count(), "isa": isa, "native_bf16": native_bf16,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def keys_for(load: int, seed: int = 0):
    g1, g2 = GRIDS[load]
    if load == 224:
        k1 = np.load(GOLDEN / "golden_img_a_224.npz")["desc_unbinned"][0, 0]
        k2 = np.load(GOLDEN / "golden_img_b_224.npz")["desc_unbinned"][0, 0]
        return np.ascontiguousarray(k1), g1, np.ascontiguousarray(k2), g2, "golden deterministic-weight keys"
    rng = np.random.default_rng(seed)
    k1 = rng.standard_normal((g1[0] * g1[1], C), dtype=np.float32)
    k2 = rng.standard_normal((g2[0] * g2[1], C), dtype=np.float32)
    return k1, g1, k2, g2, "standard-normal keys on the pair's grids"


def _interleaved(fns: dict, repeat: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _med(xs) -> float:
    return float(np.median(xs))


# ------------------------------------------------------------------------------------------- child memory


def _child(method: str, load: int) -> dict:
    """One call of `method` in this fresh process: peak RSS growth (MiB) and time."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_kernels import _reset_peak_rss_kb, _status_kb
    from dinofeat import kernels

    k1, g1, k2, g2, _ = keys_for(load)
    if method == "dense":
        b1, b2 = kernels.log_bin(k1, g1), kernels.log_bin(k2, g2)
        kernels.best_buddies(b1[:8], b2[:700])  # warm the code paths on small inputs

        def fn():
            return kernels.best_buddies(b1, b2)
    else:  # warm on a 6-row strip of each grid: the same GEMM / box / fold code paths as the call
        w1, w2 = g1[1], g2[1]
        _binned_methods(k1[:6 * w1], (6, w1), k2[:6 * w2], (6, w2))[method]()
        fn = _binned_methods(k1, g1, k2, g2)[method]
    before = _reset_peak_rss_kb()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return {"time_s": dt, "peak_extra_MiB": (_status_kb("VmHWM") - before) / 1024}


def _binned_methods(k1, g1, k2, g2) -> dict:
    from dinofeat.kernels import cpu_binned

    return {"binned": lambda: cpu_binned.best_buddies_binned(k1, g1, k2, g2, tiling="fast"),
            "binned_low_memory": lambda: cpu_binned.best_buddies_binned(k1, g1, k2, g2, tiling="low_memory"),
            "binned_level_gemms": lambda: cpu_binned.best_buddies_binned(k1, g1, k2, g2, tiling="fast", level_gemms=True)}


def _in_child(method: str, load: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from benchmarks import bench_binned as b; print(json.dumps(b._child({method!r}, {load})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- benches


def bench_load(load: int, repeat: int, memory: bool = True, skip_dense: bool = False) -> dict:
    from dinofeat import kernels
    from dinofeat.kernels import cpu_binned

    k1, g1, k2, g2, source = keys_for(load)
    t1, t2 = k1.shape[0], k2.shape[0]
    b1, b2 = kernels.log_bin(k1, g1), kernels.log_bin(k2, g2)
    a, b = torch.from_numpy(k1), torch.from_numpy(k2)
    load0 = _loadavg()
    fns = {"gemm_TxTxC": lambda: a @ b.T, "dense": lambda: kernels.best_buddies(b1, b2),
           **_binned_methods(k1, g1, k2, g2)}
    if skip_dense:
        del fns["dense"]
    times = _interleaved(fns, repeat)
    res = {"load": load, "grids": [g1, g2], "T1": t1, "T2": t2, "C": C, "keys": source,
           "loadavg_before": load0, "loadavg_after": _loadavg(),
           "times_s": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
           "median_s": {k: _med(vs) for k, vs in times.items()},
           "plans (step_rows, band_rows)": {
               "binned": cpu_binned.binned_plan(g1, g2, 2, cpu_binned.TILINGS["fast"]),
               "binned_low_memory": cpu_binned.binned_plan(g1, g2, 2, cpu_binned.TILINGS["low_memory"]),
               "binned_level_gemms": cpu_binned.binned_plan(g1, g2, 2, cpu_binned.TILINGS["fast"], box=False)},
           "tile_budget_bytes": {k: cpu_binned.budget(t1, t2, cpu_binned.TILINGS[k]) for k in cpu_binned.TILINGS}}
    m = res["median_s"]
    gemm_rate = 2 * t1 * t2 * C / m["gemm_TxTxC"]
    res["gemm_GFLOPs"] = gemm_rate / 1e9
    res["dense_GFLOP"] = 2 * t1 * t2 * 17 * C / 1e9
    res["binned_floor_1gram_GFLOP"] = 2 * t1 * t2 * C / 1e9
    res["binned_floor_1gram_s"] = 2 * t1 * t2 * C / gemm_rate
    res["binned_floor_GFLOP"] = 4 * t1 * t2 * C / 1e9  # the floor: 2 Gram GEMMs
    res["binned_floor_s"] = 4 * t1 * t2 * C / gemm_rate
    for k in METHODS[1:]:
        res[f"{k}_fraction_of_floor"] = res["binned_floor_s"] / m[k]
        res[f"{k}_fraction_of_1gram_floor"] = res["binned_floor_1gram_s"] / m[k]
        if "dense" in m:
            res[f"speedup_{k}_vs_dense"] = m["dense"] / m[k]
    ref = kernels.best_buddies(b1, b2)
    got = kernels.best_buddies_binned(k1, g1, k2, g2)
    res["agreement"] = {"nn_1": float((ref.nn_1 == got.nn_1).mean()), "nn_2": float((ref.nn_2 == got.nn_2).mean()),
                        "mask_equal": bool((ref.mask == got.mask).all()), "pairs": int(got.mask.sum()),
                        "max_abs_sim_diff": float(np.abs(ref.sim_1 - got.sim_1).max())}
    res["dense_S_MiB"] = t1 * t2 * 4 / 2**20
    if memory:
        for k in METHODS:
            if k == "dense" and skip_dense:
                continue
            r = _in_child(k, load)
            res[f"{k}_peak_extra_MiB"] = r["peak_extra_MiB"]
            res[f"{k}_peak_extra_over_dense_S"] = r["peak_extra_MiB"] / res["dense_S_MiB"]
    return res


def bench_log_bin(repeat: int = 15) -> dict:
    from dinofeat import kernels

    k1, g1, *_ = keys_for(224)
    x = torch.from_numpy(k1)[None]
    buf = torch.empty(1, x.shape[1], 17 * C)
    kernels.log_bin(x, g1, out=buf)
    times = _interleaved({"warm_out_buffer": lambda: kernels.log_bin(x, g1, out=buf),
                          "fresh_array": lambda: kernels.log_bin(x, g1)}, repeat)
    return {"grid": g1, "out_MB": buf.numel() * 4 / 1e6, "repeat": repeat,
            **{f"{k}_{stat}_ms": round(1e3 * f(v), 2) for k, v in times.items() for stat, f in (("min", min),
                                                                                          ("median", _med))},
            "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()}}


def bench_bf16_gemm(repeat: int = 3) -> dict:
    a32, b32 = torch.randn(4565, C), torch.randn(3025, C)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    times = _interleaved({"fp32": lambda: a32 @ b32.T, "bf16": lambda: a16 @ b16.T}, repeat)
    fl = 2 * 4565 * 3025 * C
    return {f"{k}_GFLOPs": fl / _med(v) / 1e9 for k, v in times.items()} | {"shape": (4565, 3025, C)}


def bench_end_to_end(repeat: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dinofeat
    from dinofeat.testing import deterministic_weights

    ex = dinofeat.Extractor(weights=deterministic_weights("dino_vits8"), backend="torch", device="cpu",
                            progress=False)
    ex_dir = Path(__file__).resolve().parents[1] / "examples"
    g = np.load(GOLDEN / "golden_pair_ab_224_t0.05.npz")

    def run(exact: bool):
        return dinofeat.find_correspondences(ex_dir / "img_a.png", ex_dir / "img_b.png", num_pairs=10,
                                             load_size=224, extractor=ex, exact_gemm=exact)

    outs = {}
    run(False), run(True)  # warm-up: first-touch pages, thread pools, k-means (not timed)
    load0 = _loadavg()
    times = _interleaved({"binned_gram": lambda: outs.__setitem__("binned_gram", run(False)),
                          "exact_gemm": lambda: outs.__setitem__("exact_gemm", run(True))}, repeat)
    res = {"repeat": repeat, "loadavg_before": load0, "loadavg_after": _loadavg(),
           "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
           "median_s": {k: _med(v) for k, v in times.items()}}
    res["new_over_exact_gemm"] = res["median_s"]["binned_gram"] / res["median_s"]["exact_gemm"]
    for k, c in outs.items():
        res[f"{k}_vs_golden"] = {
            "bbs_mask_equal": bool((c.bbs_mask.numpy() == g["bbs_mask"]).all()),
            "pairs": int(c.bbs_mask.sum()),
            "points1_equal": c.points1 == [tuple(map(int, p)) for p in g["points1_yx"]],
            "points2_equal": c.points2 == [tuple(map(int, p)) for p in g["points2_yx"]],
            "kmeans_labels_equal": bool((c.kmeans_labels == g["kmeans_labels"]).all()),
        }
    return res


def bench_bf16_end_to_end(load: int) -> dict:
    """The paper pair at `load`, fp32 vs bf16 extractor (torch eager; bf16 matching), one call each, interleaved."""
    import dinofeat
    from dinofeat.testing import deterministic_weights

    w = deterministic_weights("dino_vits8")
    ex_dir = Path(__file__).resolve().parents[1] / "examples"
    exs = {p: dinofeat.Extractor(weights=w, backend="torch", device="cpu", precision=p, progress=False)
           for p in ("fp32", "bf16")}
    outs = {}

    def run(p: str):
        outs[p] = dinofeat.find_correspondences(ex_dir / "img_a.png", ex_dir / "img_b.png", num_pairs=10,
                                                load_size=load, extractor=exs[p])

    times = _interleaved({p: (lambda p=p: run(p)) for p in exs}, 1)
    pairs = {p: {(int(i), int(c.nn_1[i])) for i in np.flatnonzero(c.bbs_mask.numpy())} for p, c in outs.items()}
    inter, union = len(pairs["fp32"] & pairs["bf16"]), len(pairs["fp32"] | pairs["bf16"])
    isa = cpu_info()
    return {"load": load, "times_s": {k: round(v[0], 3) for k, v in times.items()},
            "bf16_over_fp32": times["bf16"][0] / times["fp32"][0],
            "best_buddies": {p: len(v) for p, v in pairs.items()},
            "best_buddy_jaccard_vs_fp32": inter / union if union else 1.0,
            "case": ("native bf16 (avx512_bf16 / AMX)" if isa.get("native_bf16") else
                     "AVX2-only CPU: bf16 is emulated (converted to fp32 per operation); reported as measured")}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r["load"] for r in res["loads"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    w = 0.2
    for i, k in enumerate(METHODS):
        ax1.bar(np.arange(len(loads)) + (i - 1.5) * w, [r["median_s"].get(k, np.nan) for r in res["loads"]], w,
                label=k)
        mem = [r.get(f"{k}_peak_extra_MiB", np.nan) for r in res["loads"]]
        ax2.bar(np.arange(len(loads)) + (i - 1.5) * w, mem, w, label=k)
    ax1.plot(np.arange(len(loads)), [r["binned_floor_s"] for r in res["loads"]], "k_", ms=30, label="2-Gram floor")
    ax1.plot(np.arange(len(loads)), [r["binned_floor_1gram_s"] for r in res["loads"]], "r_", ms=30,
             label="1-Gram floor")
    ax2.plot(np.arange(len(loads)), [0.1 * r["dense_S_MiB"] for r in res["loads"]], "k_", ms=30,
             label="10% of dense S")
    for ax, title in ((ax1, "Best Buddies of binned descriptors: time (s, median)"),
                      (ax2, "peak extra memory (MiB)")):
        ax.set_xticks(np.arange(len(loads)), [str(v) for v in loads])
        ax.set_xlabel("load size")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{res['machine']['cpu']['model']}, {res['machine']['cpu']['logical_cpus']} CPUs, load avg "
                 f"{res['loadavg_start']} at the start, {res.get('loadavg_end')} at the end", fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, nargs="+", default=[224, 320])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-e2e", action="store_true")
    p.add_argument("--e2e-repeat", type=int, default=4)
    p.add_argument("--dense-max-load", type=int, default=480, help="larger loads skip the dense path")
    p.add_argument("--bf16-load", type=int, default=112, help="load of the bf16 end-to-end probe (0: skip)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    t0 = time.time()
    from dinofeat import _native

    res = {"machine": {"cpu": cpu_info(), "platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "numpy": np.__version__,
                       "threads": {"torch": torch.get_num_threads(), "native_openmp": _native.max_threads()}},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": _loadavg()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every stage: a shared machine may stop the run; what was measured is kept
        res["loadavg_end"] = _loadavg()
        res["wall_s"] = time.time() - t0
        atomic_write_text(out / "bench_binned.json", json.dumps(res, indent=2, default=str) + "\n")

    res["bf16_gemm"] = bench_bf16_gemm()
    res["log_bin"] = bench_log_bin()
    res["loads"] = []
    for i, load in enumerate(a.loads):
        res["loads"].append(bench_load(load, a.repeat if load == 224 else 1, memory=True,
                                       skip_dense=load > a.dense_max_load))
        print(json.dumps(res["loads"][-1]["median_s"]), file=sys.stderr, flush=True)
        save()
        if i == 0 and not a.no_e2e:  # the paper pair before the larger loads
            res["end_to_end"] = bench_end_to_end(a.e2e_repeat)
            print(json.dumps(res["end_to_end"]["median_s"]), file=sys.stderr, flush=True)
            save()
    if a.bf16_load:
        res["bf16_end_to_end"] = bench_bf16_end_to_end(a.bf16_load)
        save()
    plot(res, out / "bench_binned.png")
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
