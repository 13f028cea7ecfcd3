"""`dinofeat bench latency`: per-frame latency of `FrameStream` over a real image sequence, with its tail.

The keyframe (frame 0) goes through `set_reference`; every later frame through `match`, and its latency runs until
its result has been read (the pairs on the host: what a consumer of the result waits for). The keyframe is
reported apart as `cold_ms` (first forward: position tables, allocations), the first match apart as
`first_match_ms` (first k-means, first Best-Buddies plan); `latency_ms` percentiles are over the other frames.
`cpu_ms_per_frame` is the process CPU time per frame (all threads, spin-waiting included): on a shared machine
latency far above cpu_ms / threads means the frame waited for a core held by other processes.

With ``--rate HZ`` frames arrive on a camera clock (frame k at k / HZ); a frame that arrives while the stream is
busy waits in a one-frame queue and is replaced (dropped) by a newer one, as a ROS subscription with depth 1
does. Latency then runs from a frame's arrival to its result, queueing included. Without ``--rate`` frames are fed
back to back (nothing dropped).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from ..config import ExtractorConfig, MatchConfig
from ..errors import InputError
from ..stream.stream import FrameStream
from .checkout import ROOT

DEFAULT_FRAMES = 24
DEFAULT_MAX_SECONDS = 120.0  # the measured loop stops here (<= 2 minutes by default)
DEFAULT_FRAME_SIZE = (240, 320)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def example_frames(count: int, size=DEFAULT_FRAME_SIZE) -> list[np.ndarray]:
    """`count` rgb8 frames of `size` cut from the bundled example images: a window panning across img_a, then
    across img_b (each image scaled so the window moves over it by a few pixels a frame)."""
    from PIL import Image

    root = ROOT / "examples"
    paths = [root / "img_a.png", root / "img_b.png"]
    if not all(p.is_file() for p in paths):
        raise InputError(f"the example images are not in {root} (an installed wheel ships none); pass --input "
                         "DIR with a sequence of images")
    height, width = size
    out = []
    per_image = [count - count // 2, count // 2]
    for path, n in zip(paths, per_image, strict=True):
        if n == 0:
            continue
        im = Image.open(path).convert("RGB")
        scale = max(height * 1.25 / im.height, width * 1.25 / im.width)
        im = im.resize((max(width, round(im.width * scale)), max(height, round(im.height * scale))), Image.LANCZOS)
        arr = np.asarray(im)
        for k in range(n):
            t = k / max(n - 1, 1)
            y = round(t * (arr.shape[0] - height) * 0.5)
            x = round(t * (arr.shape[1] - width))
            out.append(np.ascontiguousarray(arr[y:y + height, x:x + width]))
    return out


def folder_frames(path: Path, count: int) -> list[np.ndarray]:
    """Up to `count` images of a folder (sorted by name) as rgb8 arrays."""
    from ..engine.preprocess import load_image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise InputError(f"--input {str(path)!r}: expected a folder with at least 2 images "
                         f"({', '.join(IMAGE_SUFFIXES)}), found {len(files)}")
    return [np.asarray(load_image(p, name="--input")) for p in files[:count]]


def bag_frames(path: Path, count: int, topic: str | None) -> list[np.ndarray]:
    """Frames of a rosbag / MCAP file through the replay reader (issue 24 item 3), when it is installed."""
    try:
        from ..robotics.bag import read_frames  # noqa: PLC0415 - optional: the replay module is a separate feature
    except ImportError as e:
        raise InputError(f"--input {str(path)!r}: reading bags needs dinofeat.robotics ({e}); pass a folder of "
                         "images instead") from None
    from ..stream.frames import as_tensor, to_rgb_hwc

    out = []
    for _, frame, encoding in read_frames(path, topic=topic):
        out.append(np.ascontiguousarray(to_rgb_hwc(as_tensor(frame), encoding).numpy()))
        if len(out) == count:
            break
    return out


def check_run_args(rate: float, frames: int, max_seconds: float, input_path=None, baseline: bool = False) -> None:
    """The run's arguments, checked before anything is loaded."""
    if not (rate >= 0 and np.isfinite(rate)):
        raise InputError(f"--rate {rate}: expected a frame rate in Hz > 0 (or 0: as fast as possible)")
    if baseline and rate:
        raise InputError("--compare: only without --rate (the baseline's time would drop camera frames)")
    if frames < 3:
        raise InputError(f"--frames {frames}: expected at least 3 (the keyframe, a warm-up match, one measured)")
    if not max_seconds > 0:
        raise InputError(f"--max-seconds {max_seconds}: expected a number of seconds > 0")
    if input_path is not None and not Path(input_path).exists():
        raise InputError(f"--input {str(input_path)!r}: not found; pass a folder of images or a bag")


def load_frames(input_path, count: int, frame_size, topic=None) -> tuple[list[np.ndarray], str]:
    if input_path is None:
        return example_frames(count, frame_size), f"examples/img_a.png + img_b.png, panned {frame_size} windows"
    path = Path(input_path)
    frames = folder_frames(path, count) if path.is_dir() else bag_frames(path, count, topic)
    if len(frames) < 2:
        raise InputError(f"--input {str(path)!r}: {len(frames)} frame(s); the benchmark needs at least 2")
    return frames, str(path)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is missing), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(latencies_ms: list[float]) -> dict:
    """p50 / p95 / p99 / max (numpy's linear percentiles) and jitter (std, p99 - p50) of latencies, ms."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"latency_ms": {"p50": nan, "p95": nan, "p99": nan, "max": nan, "mean": nan},
                "jitter_ms": {"std": nan, "p99_minus_p50": nan}}
    p50, p95, p99 = (float(np.percentile(a, q)) for q in (50, 95, 99))
    return {"latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": float(a.max()), "mean": float(a.mean())},
            "jitter_ms": {"std": float(a.std()), "p99_minus_p50": p99 - p50}}


def run_latency(stream: FrameStream, frames: list[np.ndarray], *, rate: float = 0.0,
                max_seconds: float = DEFAULT_MAX_SECONDS, previous: bool = False, baseline: bool = False) -> dict:
    """Drive `stream` over `frames` (frame 0: the keyframe); returns the measurement (see the module docstring).

    baseline: after each frame, also time what a user would otherwise call, ``find_correspondences(keyframe,
    frame)`` with the same extractor and settings (interleaved, so both see the same machine load), and check
    that it returns the same points; its time is left out of the stream's latency and fps.
    """
    check_run_args(rate, len(frames), max_seconds, baseline=baseline)
    sync = _device_sync(stream.device)
    t0 = time.perf_counter()
    stream.set_reference(frames[0])
    sync()
    cold_ms = (time.perf_counter() - t0) * 1e3
    rows, dropped, paused = [], 0, 0.0
    start = loop_start = time.perf_counter()
    period = 1.0 / rate if rate > 0 else 0.0
    k = 1
    while k < len(frames):
        now = time.perf_counter() - start
        if period:
            newest = int(now / period)  # frame j arrives at j * period
            if newest < k:  # idle until frame k arrives
                time.sleep(k * period - now)
            elif newest > k:  # frames k .. newest - 1 came while busy: only the newest waits in the queue
                newest = min(newest, len(frames) - 1)
                dropped += newest - k
                k = newest
            arrival = k * period
        else:
            arrival = now
        cpu0 = time.process_time()
        r = stream.match(frames[k], previous=previous)
        pairs = len(r)  # reads the result: the host has it
        if r.previous is not None:
            r.previous.wait()
        done = time.perf_counter() - start
        rows.append({"frame": k, "arrival_s": round(arrival, 6), "done_s": round(done, 6),
                     "latency_ms": (done - arrival) * 1e3, "cpu_ms": (time.process_time() - cpu0) * 1e3,
                     "pairs": pairs})
        if baseline:
            seconds, same = _baseline(stream, frames[0], frames[k], r)
            rows[-1].update(baseline_ms=seconds * 1e3, baseline_same_points=same)
            paused += seconds
            start += seconds  # the stream's clock skips the baseline's time
        k += 1
        if time.perf_counter() - loop_start > max_seconds:  # the baseline's time included
            break
    wall = time.perf_counter() - start  # `start` moved past the baseline's time
    steady = [r["latency_ms"] for r in rows[1:]]
    cpu = [r["cpu_ms"] for r in rows[1:]]
    out = {"cold_ms": cold_ms, "first_match_ms": rows[0]["latency_ms"] if rows else None, **summarize(steady),
           "cpu_ms_per_frame": {"p50": float(np.median(cpu)) if cpu else float("nan"),
                                "mean": float(np.mean(cpu)) if cpu else float("nan")},
           "fps": len(rows) / wall if wall > 0 else 0.0, "frames_matched": len(rows), "frames_in_percentiles":
           len(steady), "dropped": dropped, "stopped_at_max_seconds": k < len(frames), "loop_seconds": wall,
           "frames": rows}
    if baseline:
        base = [r["baseline_ms"] for r in rows[1:]]
        out["baseline"] = {"what": "find_correspondences(keyframe, frame) per frame, same extractor and settings "
                                   "(interleaved with the stream)", **summarize(base),
                           "same_points_all_frames": all(r["baseline_same_points"] for r in rows),
                           "ratio_p50": float(np.median([r["baseline_ms"] / r["latency_ms"] for r in rows[1:]]))
                           if len(rows) > 1 else float("nan"),  # per frame: baseline / stream (paired)
                           "seconds": paused}
    return out


def _baseline(stream: FrameStream, keyframe, frame, result) -> tuple[float, bool]:
    """Seconds of one `find_correspondences(keyframe, frame)` and whether its points equal the stream's."""
    from ..correspondences import find_correspondences

    mc = stream.match_config
    t0 = time.perf_counter()
    corr = find_correspondences(keyframe, frame, load_size=stream.extractor_config.load_size, layer=mc.layer,
                                facet=mc.facet, extractor=stream.extractor, **mc.match_kwargs())
    seconds = time.perf_counter() - t0
    same = (np.asarray(corr.points1).reshape(-1, 2).tolist() == result.points1.cpu().tolist()
            and np.asarray(corr.points2).reshape(-1, 2).tolist() == result.points2.cpu().tolist())
    return seconds, same


def _device_sync(device):
    if device.type == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def machine_info() -> dict:
    import torch

    from ..version import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "dinofeat": __version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def measure(extractor_config: ExtractorConfig, match_config: MatchConfig, *, frames: int = DEFAULT_FRAMES,
            frame_size=DEFAULT_FRAME_SIZE, input_path=None, topic=None, rate: float = 0.0,
            max_seconds: float = DEFAULT_MAX_SECONDS, previous: bool = False, baseline: bool = False,
            progress: bool = False) -> dict:
    """Load the frames, build the stream and run the measurement; returns the latency.json document."""
    check_run_args(rate, frames, max_seconds, input_path, baseline)
    seq, source = load_frames(input_path, frames, frame_size, topic)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    stream = FrameStream(extractor_config, match_config, frame_size=seq[0].shape[:2], dynamic=True,
                         progress=progress)
    load_s = time.perf_counter() - t0
    result = run_latency(stream, seq, rate=rate, max_seconds=max_seconds, previous=previous, baseline=baseline)
    ex = stream.extractor
    doc = {
        "command": "dinofeat bench latency",
        **{k: v for k, v in result.items() if k != "frames"},
        "peak_mb": peak_rss_mb(),
        "model_load_s": load_s,
        "config": {"model": ex.model_name, "stride": ex.stride, "backend": ex.backend.name, "device": str(ex.device),
                   "precision": ex.precision, "weights": ex.weights_source, "load_size": extractor_config.load_size,
                   "frame_size": list(seq[0].shape[:2]), "resized_size": list(stream.resized_size),
                   "layer": match_config.layer, "facet": match_config.facet, "bin": match_config.bin,
                   "thresh": match_config.thresh, "num_pairs": match_config.num_pairs,
                   "match_previous": previous, "rate_hz": rate or None, "max_seconds": max_seconds},
        "input": source,
        "machine": {**machine_info(), "load_average_start": list(load_before),
                    "load_average_end": list(os.getloadavg()),
                    "note": "CPU shared with other processes: compare runs of the same load only"},
        "frames": result["frames"],
    }
    if ex.device.type == "cuda":
        import torch

        doc["peak_gpu_mb"] = torch.cuda.max_memory_allocated(ex.device) / 2**20
    return doc


def write_outputs(doc: dict, out_dir, tag: str = "latency", plots: bool = True) -> list[Path]:
    """DIR/<tag>.json (and DIR/<tag>.png: histogram + timeline), each written atomically."""
    from ..viz import atomic_save

    out_dir = Path(out_dir)
    paths = []
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            doc["plot"] = "skipped: matplotlib is not installed (pip install 'dinofeat[viz]')"
        else:
            png = out_dir / f"{tag}.png"
            paths.append(atomic_save(png, lambda tmp: _plot(doc, tmp), "--out"))
            doc["plot"] = png.name
    text = json.dumps(doc, indent=1, default=str) + "\n"
    paths.insert(0, atomic_save(out_dir / f"{tag}.json", lambda tmp: Path(tmp).write_text(text), "--out"))
    return paths


def _plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["frames"]
    lat = [r["latency_ms"] for r in rows[1:]]
    c = doc["config"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.hist(lat, bins=min(30, max(5, len(lat) // 2)), color="tab:blue")
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        v = doc["latency_ms"][key]
        if np.isfinite(v):
            ax1.axvline(v, color="k", linestyle=style, label=f"{key} {v:.0f} ms")
    ax1.set_xlabel("latency per frame (ms)")
    ax1.set_ylabel("frames")
    if lat:
        ax1.legend()
    ax2.plot([r["frame"] for r in rows], [r["latency_ms"] for r in rows], marker="o", ms=3, label="FrameStream.match")
    if rows and "baseline_ms" in rows[0]:
        ax2.plot([r["frame"] for r in rows], [r["baseline_ms"] for r in rows], marker="s", ms=3,
                 label="find_correspondences(keyframe, frame)")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("frame")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title(f"cold (keyframe) {doc['cold_ms']:.0f} ms, {doc['fps']:.2f} fps, dropped {doc['dropped']}",
                  fontsize=9)
    load = doc["machine"]["load_average_start"][0]
    fig.suptitle(f"FrameStream latency: {c['model']} s{c['stride']} {c['backend']} {c['device']} {c['precision']}, "
                 f"{c['frame_size'][0]}x{c['frame_size'][1]} -> {c['resized_size'][0]}x{c['resized_size'][1]}, "
                 f"load avg {load:.1f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
