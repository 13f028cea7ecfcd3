"""Soak run: many pairs through the many-pairs path at a small load size; RSS, fds and threads over time.

    python -m benchmarks.soak --pairs 10000 --load-size 32 --max-minutes 60 --threads 1

Deterministic weights (no download), pairs made from the bundled example images (random crops and flips, a fixed
seed, so every pair differs). `--path matcher` (default) writes the crops as PNG files and feeds the pairs of file
paths through `Matcher.match_pairs` in chunks of `--sample-every`, with an on-disk feature store and an in-memory
LRU too small for all images (so entries are evicted, re-read from disk, and decode threads open files all the
time); every `--bad-every`-th pair names a missing file and must come back as that pair's error.
`--path find_correspondences` loops `find_correspondences` with one reused `Extractor`. Every `--sample-every` pairs it records the
process RSS, open file descriptors, threads, elapsed time and load average. The verdict: after the warm-up (the
first `--warmup` fraction of the samples), RSS stays within `--tolerance` (5%) of the first post-warm-up sample,
and the fd / thread counts do not grow. Writes `<out>.json` (every sample, machine, versions, verdict) and
`<out>.png` (the curves). Stops at `--pairs` or `--max-minutes`, whichever comes first, and records which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _sample(proc, pairs: int, t0: float) -> dict:
    import threading

    return {"pairs": pairs, "elapsed_s": round(time.perf_counter() - t0, 3), "rss_bytes": proc.memory_info().rss,
            "fds": proc.num_fds() if hasattr(proc, "num_fds") else len(proc.open_files()),
            "os_threads": proc.num_threads(), "py_threads": threading.active_count(), "loadavg": _loadavg()}


def make_images(n_images: int, seed: int = 0) -> list[np.ndarray]:
    """n_images distinct HxWx3 uint8 crops (64..160 px sides) of the bundled examples, some flipped."""
    from PIL import Image

    examples = Path(__file__).resolve().parents[1] / "examples"
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(examples.glob("img_*.png"))]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        src = sources[i % len(sources)]
        h, w = int(rng.integers(64, min(160, src.shape[0]) + 1)), int(rng.integers(64, min(160, src.shape[1]) + 1))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        crop = src[y:y + h, x:x + w]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def verdict(samples: list[dict], warmup: float, tolerance: float) -> dict:
    """Flatness after the warm-up: RSS within tolerance of the first post-warm-up sample; fds/threads no growth."""
    if len(samples) < 3:
        return {"ok": None, "reason": f"only {len(samples)} samples: run more pairs"}
    start = max(1, int(round(len(samples) * warmup)))
    after = samples[start:]
    base = after[0]["rss_bytes"]
    rss = [s["rss_bytes"] for s in after]
    drift = (max(rss) - base) / base
    dip = (base - min(rss)) / base
    fds = [s["fds"] for s in after]
    threads = [s["os_threads"] for s in after]
    ok = drift <= tolerance and dip <= tolerance and max(fds) <= fds[0] and max(threads) <= threads[0]
    return {"ok": bool(ok), "warmup_samples": start, "warmup_pairs": samples[start]["pairs"],
            "rss_base_bytes": base, "rss_max_growth_frac": round(drift, 5), "rss_max_drop_frac": round(dip, 5),
            "rss_last_vs_base_frac": round((rss[-1] - base) / base, 5), "tolerance": tolerance,
            "fds": [min(fds), max(fds)], "os_threads": [min(threads), max(threads)],
            "rss_slope_bytes_per_1000_pairs": _slope(after)}


def _slope(samples: list[dict]) -> float:
    x = np.array([s["pairs"] for s in samples], dtype=np.float64)
    y = np.array([s["rss_bytes"] for s in samples], dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return round(float(np.polyfit(x, y, 1)[0] * 1000), 1)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dinofeat.viz import atomic_save

    s = result["samples"]
    pairs = [v["pairs"] for v in s]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(pairs, [v["rss_bytes"] / 2**20 for v in s], marker=".", label="RSS")
    v = result["verdict"]
    if v.get("ok") is not None:
        base = v["rss_base_bytes"] / 2**20
        axes[0].axvline(v["warmup_pairs"], color="gray", ls=":", label="end of warm-up")
        for f in (1 - v["tolerance"], 1 + v["tolerance"]):
            axes[0].axhline(base * f, color="red", ls="--", lw=0.8)
    axes[0].set_xlabel("pairs")
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].set_title(f"RSS, +-{100 * result['config']['tolerance']:.0f}% band after warm-up")
    axes[0].legend()
    axes[1].plot(pairs, [v["fds"] for v in s], label="open fds")
    axes[1].plot(pairs, [v["os_threads"] for v in s], label="OS threads")
    axes[1].set_xlabel("pairs")
    axes[1].legend()
    axes[1].set_title("file descriptors and threads")
    c = result["config"]
    fig.suptitle(f"soak: {result['pairs_done']} pairs, load {c['load_size']}, {c['model']} stride {c['stride']}, "
                 f"{result['wall_s'] / 60:.1f} min ({result['machine']['cpu']})", fontsize=9)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run(pairs: int, load_size: int, sample_every: int, max_minutes: float, warmup: float, tolerance: float,
        threads: int | None, n_images: int = 64, path: str = "matcher", bad_every: int = 50) -> dict:
    import psutil
    import torch

    import dinofeat
    from dinofeat.doctor import cpu_name
    from dinofeat.testing import deterministic_weights

    if threads:
        torch.set_num_threads(threads)
    proc = psutil.Process()
    ex = dinofeat.Extractor(model="dino_vits8", stride=4, weights=deterministic_weights("dino_vits8"),
                            backend="torch", device="cpu", progress=False)
    images = make_images(n_images)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    load_start = _loadavg()
    samples = [_sample(proc, 0, t0)]
    found = []
    errors = {"expected": 0, "got": 0, "unexpected": []}
    stop = "pairs"
    done = 0
    with tempfile.TemporaryDirectory(prefix="dinofeat-soak-") as tmp:
        if path == "matcher":
            from PIL import Image

            files = []
            for k, im in enumerate(images):
                files.append(str(Path(tmp) / f"crop_{k:03d}.png"))
                Image.fromarray(im).save(files[-1])
            # an LRU of ~1/4 of the images' features: evictions and disk hits all the time
            matcher = dinofeat.Matcher(extractor=ex, load_size=load_size, num_pairs=10,
                                       cache_dir=Path(tmp) / "store", cache_bytes=2 << 20)
        while done < pairs:
            n = min(sample_every, pairs - done)
            chunk = [tuple(int(v) for v in rng.choice(len(images), 2, replace=False)) for _ in range(n)]
            if path == "matcher":
                bad = {k for k in range(n) if bad_every and (done + k + 1) % bad_every == 0}
                items = [(files[i], str(Path(tmp) / "missing.png") if k in bad else files[j])
                         for k, (i, j) in enumerate(chunk)]
                errors["expected"] += len(bad)
                for r in matcher.match_pairs(items):
                    if r.error is None:
                        found.append(len(r.result))
                    elif r.index in bad:
                        errors["got"] += 1
                    else:
                        errors["unexpected"].append(r.error)
            else:
                for i, j in chunk:
                    corr = dinofeat.find_correspondences(images[i], images[j], num_pairs=10, load_size=load_size,
                                                         extractor=ex)
                    found.append(len(corr))
            done += n
            samples.append(_sample(proc, done, t0))
            last = samples[-1]
            print(f"{done} pairs, {last['elapsed_s']:.0f} s, RSS {last['rss_bytes'] / 2**20:.1f} MiB, "
                  f"fds {last['fds']}, threads {last['os_threads']}, load {last['loadavg']}", flush=True)
            if time.perf_counter() - t0 > max_minutes * 60:
                stop = f"time limit ({max_minutes} min)"
                break
        store_stats = dict(matcher.store.stats) if path == "matcher" else None
    if samples[-1]["pairs"] != done:
        samples.append(_sample(proc, done, t0))
    wall = time.perf_counter() - t0
    return {
        "config": {"path": path, "bad_every": bad_every if path == "matcher" else None,
                   "pairs_requested": pairs, "load_size": load_size, "sample_every": sample_every,
                   "max_minutes": max_minutes, "warmup_fraction": warmup, "tolerance": tolerance,
                   "model": "dino_vits8", "stride": 4, "weights": "deterministic (golden rule, seed 0)",
                   "images": f"{n_images} crops of examples/img_*.png, 64..160 px", "num_pairs": 10},
        "pairs_done": done, "stopped_by": stop, "wall_s": round(wall, 1),
        "seconds_per_pair": round(wall / max(done, 1), 4),
        "pairs_returned": {"min": int(min(found, default=0)), "max": int(max(found, default=0)),
                           "mean": round(float(np.mean(found)) if found else 0.0, 2)},
        "errors": errors if path == "matcher" else None, "feature_store": store_stats,
        "samples": samples, "verdict": verdict(samples, warmup, tolerance),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "loadavg_start": load_start, "loadavg_end": _loadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "dinofeat": dinofeat.__version__, "psutil": psutil.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10_000)
    p.add_argument("--load-size", type=int, default=32)
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the samples that is warm-up")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--path", choices=("matcher", "find_correspondences"), default="matcher")
    p.add_argument("--bad-every", type=int, default=50, help="matcher path: every N-th pair names a missing file")
    p.add_argument("-o", "--out", default=str(RESULTS / "soak"), help="output stem (.json and .png are added)")
    args = p.parse_args(argv)
    from dinofeat.viz import atomic_save

    result = run(args.pairs, args.load_size, args.sample_every, args.max_minutes, args.warmup, args.tolerance,
                 args.threads, path=args.path, bad_every=args.bad_every)
    out = Path(args.out)
    atomic_save(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    plot(result, out.with_suffix(".png"))
    v = result["verdict"]
    print(f"{result['pairs_done']} pairs in {result['wall_s'] / 60:.1f} min ({result['seconds_per_pair']} s/pair, "
          f"stopped by {result['stopped_by']}); verdict {v}")
    errs = result["errors"]
    if errs is not None:
        print(f"errors: {errs['got']} of {errs['expected']} injected bad pairs reported, "
              f"{len(errs['unexpected'])} unexpected")
    return 0 if v.get("ok") and (errs is None or (errs["got"] == errs["expected"] and not errs["unexpected"])) else 1


if __name__ == "__main__":
    sys.exit(main())
