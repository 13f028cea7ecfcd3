"""Applications benchmark: seconds per image set for `dinofeat.pca / cosegment / part_cosegment` against the
original's structure, in the same run, on the same deterministic weights and images.

The original's structure (what `pca.py`, `cosegmentation.py`, `part_cosegmentation.py` run): per image a separate
full forward of DINO's ViT with materialised attention and a hook for the descriptors (`benchmarks.baseline.
OriginalExtractor`), and for co-segmentation a second forward of a stride-8 extractor at half size for the
saliency; then faiss k-means (niter 300, nredo 10) with the elbow, votes, GrabCut, pydensecrf — the same downstream
functions dinofeat runs (the algorithms are identical; the faiss / OpenCV / pydensecrf calls are the original's).
dinofeat: one forward per image, same-size images batched, the stride-8 extractor derived once.
Model creation is excluded on both sides.

    python -m benchmarks.apps [--load-size 96] [--repeat 1]      # ~3-8 min on 2 loaded cores

writes benchmarks/results/apps.json and apps.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _images() -> list[Image.Image]:
    a = Image.open(EXAMPLES / "img_a.png").convert("RGB")
    b = Image.open(EXAMPLES / "img_b.png").convert("RGB")
    return [a, b, a.transpose(Image.FLIP_LEFT_RIGHT), b.transpose(Image.FLIP_LEFT_RIGHT)]


def _original_extract(orig, orig8, images, load_size, layer, saliency: bool):
    """Per image: preprocess from a file as the original, one hooked forward for the descriptors, one stride-8
    forward at half size for the saliency (resized NEAREST to the grid)."""
    import tempfile

    from torchvision import transforms

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, img in enumerate(images):
            path = Path(tmp) / f"{i}.png"
            img.save(path)
            batch, pil = orig.preprocess(path, load_size)
            desc = orig.extract_descriptors(batch, layer, "key", False).cpu().numpy()[0, 0]
            grid, size = orig.num_patches, orig.load_size
            sal = None
            if saliency:
                low, _ = orig8.preprocess(path, (size[0] // 2, size[1] // 2))
                s = orig8.extract_saliency_maps(low).cpu().numpy()
                sal_img = Image.fromarray(s.reshape(orig8.num_patches))
                sal = np.array(transforms.Resize(grid, transforms.InterpolationMode.NEAREST)(sal_img)).flatten()
            out.append({"pil": pil, "desc": desc, "sal": sal, "grid": grid})
    return out


def baseline_pca(orig, images, load_size):
    from sklearn.decomposition import PCA

    feats = _original_extract(orig, None, images, load_size, 11, saliency=False)
    x = np.concatenate([f["desc"] for f in feats])
    return PCA(n_components=4).fit(x).transform(x)


def baseline_coseg(orig, orig8, images, load_size, sample_interval=100, parts: bool = False):
    import cv2

    from dinofeat.apps.common import elbow_kmeans, l2_normalized, train_kmeans
    from dinofeat.apps.coseg import grabcut_refine, vote_salient
    from dinofeat.apps.parts import part_energies, smooth_parts

    feats = _original_extract(orig, orig8, images, load_size, 11, saliency=True)
    normed = [l2_normalized(f["desc"]) for f in feats]
    km, lab, _ = elbow_kmeans(np.concatenate(normed), np.concatenate([n[::sample_interval] for n in normed]), 0.975,
                              range(1, 15))
    labels = np.split(lab, np.cumsum([n.shape[0] for n in normed])[:-1])
    _, salient = vote_salient(labels, [f["sal"] for f in feats], km.centroids.shape[0] + 1, 0.065, 75, len(feats))
    grids = [np.isin(lab_i, salient).reshape(f["grid"]) for lab_i, f in zip(labels, feats, strict=True)]
    if not parts:
        cv2.setRNGSeed(0)
        return [grabcut_refine(f["pil"], g) for f, g in zip(feats, grids, strict=True)]
    fg = [g.reshape(-1) for g in grids]
    x = np.concatenate([n[m] for n, m in zip(normed, fg, strict=True)])
    part_km = train_kmeans(np.concatenate([n[m][::sample_interval] for n, m in zip(normed, fg, strict=True)]), 4)
    del x
    bg = km.centroids[[c for c in range(km.centroids.shape[0]) if c not in set(salient.tolist())]]
    return [smooth_parts(part_energies(n, part_km.centroids, bg, f["grid"]), f["pil"], "pydensecrf")
            for n, f in zip(normed, feats, strict=True)]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(load_size: int = 96, repeat: int = 1) -> dict:
    import torch

    import dinofeat
    from benchmarks.baseline import OriginalExtractor, OriginalViT, _fix_pos_enc
    from dinofeat.apps.common import derived_extractor
    from dinofeat.doctor import environment
    from dinofeat.testing import deterministic_weights

    sd = deterministic_weights("dino_vits8")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    orig, orig8 = OriginalExtractor(sd, stride=4), OriginalExtractor(sd, stride=8)
    # at stride = patch DINO's own interpolate_pos_encoding runs; it computes what _fix_pos_enc(8, (8, 8)) does
    orig8.model.interpolate_pos_encoding = _fix_pos_enc(8, (8, 8)).__get__(orig8.model, OriginalViT)
    ex = dinofeat.Extractor(weights=sd, backend="torch", device="cpu", progress=False)
    derived_extractor(ex, 8)  # made once, like the original's second extractor (not timed on either side)
    images = _images()
    rows = []
    with torch.inference_mode():
        cases = [
            ("pca", lambda: baseline_pca(orig, images, load_size),
             lambda: dinofeat.pca(images, load_size=load_size, extractor=ex), None),
            ("cosegment", lambda: baseline_coseg(orig, orig8, images, load_size),
             lambda: dinofeat.cosegment(images, load_size=load_size, extractor=ex), "mask"),
            ("cosegment kmeans=torch (fast mode)", None,
             lambda: dinofeat.cosegment(images, load_size=load_size, extractor=ex, kmeans="torch"), "mask"),
            ("part_cosegment", lambda: baseline_coseg(orig, orig8, images, load_size, parts=True),
             lambda: dinofeat.part_cosegment(images, load_size=load_size, extractor=ex), "parts"),
        ]
        reference = {}
        for name, base, ours, field in cases:
            row = {"app": name, "images": len(images), "load_size": load_size}
            if base is not None:
                times = []
                for _ in range(repeat):
                    dt, base_out = _timed(base)
                    times.append(dt)
                row["original_structure_s"] = float(np.median(times))
                reference[field] = base_out
            times = []
            for _ in range(repeat):
                dt, out = _timed(ours)
                times.append(dt)
            row["dinofeat_s"] = float(np.median(times))
            if field and field in reference:
                same = [np.array_equal(getattr(r, field), b) for r, b in zip(out, reference[field], strict=True)]
                row[f"{field}_identical_to_original_structure"] = same
            if "original_structure_s" in row:
                row["speedup"] = row["original_structure_s"] / row["dinofeat_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"schema": "dinofeat-bench-apps/1", "started": started, "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()), "torch_threads": torch.get_num_threads(),
            "environment": environment(), "rows": rows,
            "notes": "deterministic weights (dinofeat.testing), examples img_a, img_b and their mirrors; "
                     "model creation excluded; the machine is shared (see loadavg)"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    y = np.arange(len(rows))
    base = [r.get("original_structure_s", 0) for r in rows]
    ours = [r["dinofeat_s"] for r in rows]
    ax.barh(y + 0.2, base, 0.4, label="original's structure", color="#999999")
    ax.barh(y - 0.2, ours, 0.4, label="dinofeat", color="#1f77b4")
    ax.set_yticks(y, [r["app"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds per set of {rows[0]['images']} images (load {rows[0]['load_size']}, CPU)")
    la = result["loadavg_start"]
    ax.set_title(f"applications, deterministic weights; load average at start {la[0]:.1f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.apps", description=__doc__.split("\n")[0])
    p.add_argument("--load-size", type=int, default=96)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    res = run(args.load_size, args.repeat)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "apps.json").write_text(json.dumps(res, indent=2, default=str))
    plot(res, out / "apps.png")
    print(f"wrote {out / 'apps.json'} and {out / 'apps.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
