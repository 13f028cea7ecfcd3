"""Scale-out benchmark: Triton-served pairs vs in-process `find_correspondences`; Ray pairs/s vs single process.

    python -m benchmarks.serve [--size 96] [--requests 8 16 32] [--ray-load 64] [--ray-images 6] [--skip-ray]

Writes `benchmarks/results/serve.json` (config, machine, versions, load average, every latency) and `serve.png`.
The Triton part serves a generated Python-backend repository with the bundled CPU server (see README, Scale out):
requests/s and p50/p99 latency at concurrency 1, 4 and 16 (one HTTP client per thread), and the in-process
`find_correspondences` on the same images at the same size (one model, sequential: the in-process user's path).
The Ray part runs `dinofeat.distributed.match_pairs` on a local cluster (`ray.init(num_cpus=2)`) with 1 and 2
workers, and the single-process many-pairs path in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = Path(__file__).resolve().parents[1] / "examples"


def _pct(xs, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _summary(latencies: list[float], wall: float) -> dict:
    return {"requests": len(latencies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "p50_s": _pct(latencies, 50), "p99_s": _pct(latencies, 99), "mean_s": statistics.fmean(latencies),
            "latencies_s": latencies}


def _test_images(tmp: Path, n: int) -> list[str]:
    """The two example images and flipped / cropped / rotated variants of them (distinct content and sizes)."""
    from PIL import Image, ImageOps

    base = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("img_*.png"))]
    variants = [lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(90, expand=True),
                lambda im: im.crop((0, 0, im.width * 3 // 4, im.height * 3 // 4)), lambda im: im.resize(
                    (im.width // 2, im.height // 2))]
    paths = []
    for k in range(n):
        im = variants[(k // len(base)) % len(variants)](base[k % len(base)])
        paths.append(str(tmp / f"img{k}.png"))
        im.save(paths[-1])
    return paths


def _load(url: str, a, b, conc: int, n: int) -> dict:
    """`n` pair requests from `conc` threads, one HTTP client each; latency of every request."""
    from dinofeat.serve import Client

    lat: list[float] = []
    lock = threading.Lock()
    todo = iter(range(n))

    def worker():
        with Client(url) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                t = time.perf_counter()
                c.match(a, b)
                with lock:
                    lat.append(time.perf_counter() - t)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return _summary(lat, time.perf_counter() - t)


def bench_triton(weights: str, size: int, requests: list[int], concurrency=(1, 4, 16)) -> dict:
    import dinofeat
    from dinofeat.serve import Client, TritonServer
    from dinofeat.serve.repository import RepositoryOptions, write_repository

    a, b = sorted(IMAGES.glob("img_*.png"))[:2]
    out: dict = {"size": size}
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repo", RepositoryOptions(weights=weights, backend="python", height=size,
                                                                      width=size, max_batch=8, instance_kind="cpu"))
        t0 = time.perf_counter()
        with TritonServer(repo) as server:
            server.wait_ready(600)
            out["server_start_s"] = time.perf_counter() - t0
            with Client(server.http_url) as c:
                for _ in range(2):
                    c.match(a, b)  # warm-up: first call of each model instance
            for conc, n in zip(concurrency, requests, strict=True):
                out[f"triton_c{conc}"] = _load(server.http_url, a, b, conc, n)
                print(f"triton concurrency {conc}: {out[f'triton_c{conc}']['req_per_s']:.2f} req/s", flush=True)
    ex = dinofeat.Extractor(weights=weights, backend="torch", device="cpu", progress=False)
    dinofeat.find_correspondences(a, b, load_size=(size, size), extractor=ex)  # warm-up
    lat = []
    t = time.perf_counter()
    for _ in range(requests[0]):
        s = time.perf_counter()
        dinofeat.find_correspondences(a, b, load_size=(size, size), extractor=ex)
        lat.append(time.perf_counter() - s)
    out["in_process"] = _summary(lat, time.perf_counter() - t)
    print(f"in-process find_correspondences: {out['in_process']['req_per_s']:.2f} pairs/s", flush=True)
    return out


def bench_ray(weights: str, load: int, n_images: int) -> dict:
    import ray

    import dinofeat
    from dinofeat.distributed import match_pairs

    out: dict = {"load_size": load}
    with tempfile.TemporaryDirectory() as tmp:
        images = _test_images(Path(tmp), n_images)
        pairs = [(images[i], images[j]) for i in range(len(images)) for j in range(i + 1, len(images))]
        out["pairs"], out["images"] = len(pairs), len(images)
        t = time.perf_counter()
        ex = dinofeat.Extractor(weights=weights, backend="torch", device="cpu", progress=False)
        matcher = getattr(dinofeat, "Matcher", None)
        if matcher is not None:  # the single-process many-pairs path (issue 9)
            m = matcher(weights=weights, backend="torch", device="cpu", load_size=load)
            results = list(m.match_pairs(pairs))
            out["single_process_path"] = "dinofeat.Matcher.match_pairs"
            assert all(r.error is None for r in results)
        else:  # without the Matcher: one model, each pair through find_correspondences
            for a, b in pairs:
                dinofeat.find_correspondences(a, b, load_size=load, extractor=ex)
            out["single_process_path"] = "find_correspondences loop, one Extractor"
        wall = time.perf_counter() - t
        out["single_process"] = {"wall_s": wall, "pairs_per_s": len(pairs) / wall}
        print(f"single process: {len(pairs) / wall:.2f} pairs/s", flush=True)
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        out["ray_init_s"] = time.perf_counter() - t
        try:
            for workers in (1, 2):
                s = match_pairs(pairs, Path(tmp) / f"ray{workers}.parquet", num_workers=workers, weights=weights,
                                load_size=load)
                out[f"ray_{workers}"] = dict(s, pairs_per_s=s["pairs"] / s["seconds"])
                print(f"ray {workers} worker(s): {s['pairs'] / s['seconds']:.2f} pairs/s", flush=True)
        finally:
            ray.shutdown()
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = res.get("triton", {})
    labels, rps, p50, p99 = [], [], [], []
    for key, label in (("in_process", "in-process\nfind_corr."), ("triton_c1", "Triton c=1"),
                       ("triton_c4", "Triton c=4"), ("triton_c16", "Triton c=16")):
        if key in t:
            labels.append(label)
            rps.append(t[key]["req_per_s"])
            p50.append(t[key]["p50_s"])
            p99.append(t[key]["p99_s"])
    ax = axes[0]
    ax.bar(labels, rps, color="tab:blue")
    ax.set_ylabel("pairs / s")
    ax.set_title(f"Served pairs at {t.get('size')}x{t.get('size')} (p50 / p99 latency on bars)")
    for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
        ax.text(i, rps[i], f"{a:.2f}/{b:.2f} s", ha="center", va="bottom", fontsize=8)
    r = res.get("ray", {})
    labels = ["single process", "Ray 1 worker", "Ray 2 workers"]
    vals = [r.get("single_process", {}).get("pairs_per_s", 0), r.get("ray_1", {}).get("pairs_per_s", 0),
            r.get("ray_2", {}).get("pairs_per_s", 0)]
    axes[1].bar(labels, vals, color="tab:green")
    axes[1].set_ylabel("pairs / s")
    axes[1].set_title(f"Batch: {r.get('pairs')} pairs of {r.get('images')} images, load {r.get('load_size')}")
    fig.suptitle(f"{res['machine']['cpu']} ({res['machine']['cores']} cores), load avg {res['machine']['loadavg_start']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    import torch

    import dinofeat
    from dinofeat.doctor import cpu_name
    from dinofeat.testing import deterministic_weights
    from dinofeat.viz import atomic_save

    p = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    p.add_argument("--size", type=int, default=96, help="Triton repository size HxW (square)")
    p.add_argument("--requests", type=int, nargs=3, default=[8, 16, 32], help="requests at concurrency 1, 4, 16")
    p.add_argument("--ray-load", type=int, default=64)
    p.add_argument("--ray-images", type=int, default=6)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-triton", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = p.parse_args(argv)
    from importlib.metadata import version

    import ray

    res: dict = {"config": vars(args), "machine": {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"python": platform.python_version(), "dinofeat": dinofeat.__version__,
                     "torch": torch.__version__, "ray": ray.__version__, "tritonclient": version("tritonclient"),
                     "triton_server": "2.51 (nvidia-pytriton 0.7.0 bundle, Python backend)"},
        "weights": "deterministic (golden rule, dinofeat.testing)"}
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "w.pth")
        torch.save(deterministic_weights("dino_vits8"), weights)
        t = time.perf_counter()
        if not args.skip_triton:
            res["triton"] = bench_triton(weights, args.size, args.requests)
        if not args.skip_ray:
            res["ray"] = bench_ray(weights, args.ray_load, args.ray_images)
        res["wall_s"] = time.perf_counter() - t
    res["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    atomic_save(out, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=1)))
    atomic_save(out.with_suffix(".png"), lambda tmp: plot(res, Path(tmp)))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
