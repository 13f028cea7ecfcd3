"""Workload M: 12 images, all 66 unordered pairs — the naive `find_correspondences` loop vs `Matcher.match_pairs`
(cold feature store, warm on-disk store, with/without overlap), per-pair equality, peak RSS for 66 vs 264 pairs.

    python -m benchmarks.many_pairs [--load-size 112] [--naive-pairs 66] [--modes naive,cold,warm,...]

Images: examples/img_a.png, examples/img_b.png (CC0) + 10 images of scikit-image's data set (public domain /
CC0, see `SKIMAGE_IMAGES`), written as PNG into a temp folder at run time. Weights: the golden rule's
deterministic ViT-S/8 weights (`dinofeat.testing`; the speed does not depend on the values) unless --weights.
Each mode runs in its own process (peak RSS = that process's `ru_maxrss`, model included). Writes
`benchmarks/results/many_pairs_<load>.json` and `.png`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (skimage.data function, licence as stated in skimage/data/README.txt)
# (examples/img_a.png and img_b.png are scikit-image's chelsea and astronaut, so those two are not repeated)
SKIMAGE_IMAGES = (("camera", "CC0"), ("coffee", "CC0"), ("rocket", "public domain (SpaceX)"), ("brick", "CC0"),
                  ("grass", "CC0"), ("gravel", "CC0"), ("hubble_deep_field", "public domain (NASA)"),
                  ("clock", "public domain"), ("retina", "CC0"), ("microaneurysms", "CC0"))


def make_images(folder: Path) -> list[Path]:
    """The 12 images of workload M as files in `folder` (examples + scikit-image data)."""
    import shutil

    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("img_a.png", "img_b.png"):
        shutil.copy(ROOT / "examples" / name, folder / name)
        paths.append(folder / name)
    for name, _ in SKIMAGE_IMAGES:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def _child(args) -> dict:
    """One mode in this process: returns timings, counters, peak RSS and per-pair points."""
    import torch

    import dinofeat

    weights = args.weights
    if weights is None:
        from dinofeat.testing import deterministic_weights

        weights = deterministic_weights("dino_vits8")
    images = sorted(Path(args.images).glob("*.png"))
    pairs = list(itertools.combinations([str(p) for p in images], 2)) * args.repeat
    if args.limit:
        pairs = pairs[: args.limit]
    ex = dinofeat.Extractor(weights=weights, backend="torch", device=args.device, progress=False)
    out = {"mode": args.mode, "pairs": len(pairs), "images": len(images), "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    points = []
    if args.mode == "naive":
        for a, b in pairs:
            c = dinofeat.find_correspondences(a, b, load_size=args.load_size, extractor=ex)
            points.append([c.points1, c.points2, int(c.bbs_mask.sum())])
        out["forwards"] = 2 * len(pairs)
    else:
        m = dinofeat.Matcher(extractor=ex, load_size=args.load_size, cache_dir=args.cache_dir,
                             overlap=args.mode.endswith("overlap"))
        errors = 0
        for r in m.match_pairs(pairs, batch_size=args.batch_size, workers=args.workers):
            errors += r.error is not None
            c = r.result
            points.append(None if c is None else [c.points1, c.points2, int(c.bbs_mask.sum())])
        out.update(forwards=m.forwards, forward_calls=m.forward_calls, stage_seconds=m.stage_seconds,
                   store=m.store.stats, errors=errors)
    wall = time.perf_counter() - t0
    distinct = len({x for pair in pairs for x in pair})  # images/s: distinct images of the pairs per second
    out.update(wall_s=wall, pairs_per_s=len(pairs) / wall, images_per_s=distinct / wall,
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, points=points,
               cpu_s=sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
               loadavg_end=list(os.getloadavg()))
    return out


def _run_mode(mode: str, images: Path, cache_dir: Path, ns, repeat: int = 1, limit: int = 0) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.many_pairs", "--child", mode, "--images", str(images),
           "--load-size", str(ns.load_size), "--cache-dir", str(cache_dir), "--repeat", str(repeat),
           "--limit", str(limit), "--batch-size", str(ns.batch_size), "--workers", str(ns.workers),
           "--device", ns.device]
    if ns.weights:
        cmd += ["--weights", ns.weights]
    load = list(os.getloadavg())
    print(f"[many_pairs] {mode} (repeat {repeat}, limit {limit or '-'}) load {load}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return {"mode": mode, "skipped": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["loadavg_start"] = load
    print(f"[many_pairs] {mode}: {res['wall_s']:.1f} s, {res['pairs_per_s']:.3f} pairs/s, "
          f"forwards {res['forwards']}, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    return res


def compare(reference: list, other: list) -> dict:
    """Per-pair agreement of returned points on the pairs both ran."""
    n = min(len(reference), len(other))
    same = sum(1 for a, b in zip(reference[:n], other[:n], strict=True) if a == b)
    bb_same = sum(1 for a, b in zip(reference[:n], other[:n], strict=True) if a and b and a[2] == b[2])
    return {"pairs_compared": n, "pairs_identical": same, "pairs_same_num_best_buddies": bb_same}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in res["modes"] if "pairs_per_s" in res["modes"][m]]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].bar(modes, [res["modes"][m]["pairs_per_s"] for m in modes], color="tab:blue")
    ax[0].set_ylabel("pairs / s")
    cpu = res["environment"].get("cpu") or {}
    machine = f"{cpu.get('name', 'CPU')}, {cpu.get('logical cores', '?')} cores" if isinstance(cpu, dict) else cpu
    load = ", ".join(f"{v:.1f}" for v in res["loadavg_start"])
    ax[0].set_title(f"workload M, load size {res['load_size']} ({machine}; load avg {load})", fontsize=8)
    ax[1].bar(modes, [res["modes"][m]["peak_rss_bytes"] / 2**30 for m in modes], color="tab:orange")
    ax[1].set_ylabel("peak RSS (GiB)")
    for a in ax:
        a.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.many_pairs", description=__doc__.splitlines()[0])
    p.add_argument("--load-size", type=int, default=112)
    p.add_argument("--modes", default="naive,cold,warm,cold_overlap,warm_x4",
                   help="naive, cold, warm, cold_overlap, warm_x4 (264 pairs, warm store)")
    p.add_argument("--naive-pairs", type=int, default=0, help="run the naive loop on the first N pairs only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        ns.mode = ns.child
        print(json.dumps(_child(ns)))
        return 0
    from dinofeat.doctor import environment

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = {"schema": "dinofeat-many-pairs/1", "started_utc": started, "load_size": ns.load_size,
           "batch_size": ns.batch_size, "workers": ns.workers, "device": ns.device,
           "weights": ns.weights or "golden-rule deterministic dino_vits8 (dinofeat.testing)",
           "images": [["img_a.png", "CC0 (examples/)"], ["img_b.png", "CC0 (examples/)"]]
           + [[f"{n}.png", f"scikit-image data: {lic}"] for n, lic in SKIMAGE_IMAGES],
           "environment": environment(), "loadavg_start": list(os.getloadavg()), "modes": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dinofeat-many-pairs-") as tmp:
        images = Path(tmp) / "images"
        make_images(images)
        for mode in ns.modes.split(","):
            cache = Path(tmp) / ("cache_overlap" if mode == "cold_overlap" else "cache")
            repeat = 4 if mode == "warm_x4" else 1
            limit = ns.naive_pairs if mode == "naive" else 0
            res["modes"][mode] = _run_mode(mode.replace("_x4", ""), images, cache, ns, repeat, limit)
    res["wall_s"] = time.perf_counter() - t0
    res["loadavg_end"] = list(os.getloadavg())
    modes = res["modes"]
    if "naive" in modes and "points" in modes["naive"]:
        ref = modes["naive"]["points"]
        naive_pps = modes["naive"]["pairs_per_s"]
        for name, m in modes.items():
            if name != "naive" and "points" in m:
                m["vs_naive"] = compare(ref, m["points"])
                m["speedup_vs_naive"] = m["pairs_per_s"] / naive_pps
    if "points" in modes.get("cold", {}) and "points" in modes.get("warm", {}):
        modes["warm"]["vs_cold"] = compare(modes["cold"]["points"], modes["warm"]["points"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"many_pairs_{ns.load_size}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    plot(res, out.with_suffix(".png"))
    print(markdown(res))
    print(f"[many_pairs] wrote {out} and {out.with_suffix('.png')}")
    return 0


def markdown(res: dict) -> str:
    """The README table of one run."""
    lines = ["| mode | pairs | wall | pairs/s | images/s | forwards | decode / forward / match (s) | CPU s / pair | "
             "peak RSS | vs naive | points identical to naive |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["modes"].items():
        if "skipped" in m:
            lines.append(f"| {name} | skipped: {m['skipped'][:80]} ||||||||||")
            continue
        st = m.get("stage_seconds")
        stages = f"{st['decode']:.1f} / {st['forward']:.1f} / {st['match']:.1f}" if st else "–"
        cmp = m.get("vs_naive")
        same = f"{cmp['pairs_identical']}/{cmp['pairs_compared']}" if cmp else "(reference)"
        speed = f"{m['speedup_vs_naive']:.2f}×" if "speedup_vs_naive" in m else "1×"
        cpu = f"{m['cpu_s'] / m['pairs']:.1f}" if "cpu_s" in m else "–"
        lines.append(f"| {name} | {m['pairs']} | {m['wall_s']:.1f} s | {m['pairs_per_s']:.3f} | "
                     f"{m['images_per_s']:.3f} | {m['forwards']} | {stages} | {cpu} | "
                     f"{m['peak_rss_bytes'] / 2**30:.2f} GiB | {speed} | {same} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
