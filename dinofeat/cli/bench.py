"""`dinofeat bench` and its sub-commands `latency` and `precision`: the arguments and the main functions the CLI
calls (the runner is imported when the command runs, so building the CLI's parser stays cheap).

`python -m benchmarks ...` (a source checkout) takes the same arguments as the bare `dinofeat bench`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench.checkout import ROOT
from ..config import ExtractorConfig, MatchConfig, add_arguments
from .common import add_match_arguments, add_model_arguments, resolve_stride

DEFAULT_SIZES = (224, 320, 480)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure every stage (preprocess, ViT forward, log-bin, Best Buddies, foreground filter + selection) and "
        "end-to-end pairs/s and images/s over resolutions, batch sizes, backends/precisions and kernel "
        "implementations, next to a re-implementation of the original code and the alternatives (kornia, faiss, "
        "dense torch), in one run. Writes JSON, a Markdown table and PNG plots. Whatever cannot run here is "
        "skipped with the reason recorded.")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    g = parser.add_argument_group("what to measure")
    g.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="load sizes (shorter image side) of the main pipeline")
    g.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="torch-backend precisions of the main pipeline (default: all three; fp16 on a CPU without "
                        "fast fp16 GEMM is skipped with the measured reason unless --cpu-fp16)")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2],
                   help="batch sizes of the images/s measurement (at --batch-at sizes)")
    g.add_argument("--batch-at", type=int, nargs="+", default=[224], help="load sizes where batches are measured")
    g.add_argument("--backends", nargs="+", default=["onnxruntime", "onnxruntime-cuda", "onnxruntime-trt",
                                                     "tensorrt"],
                   help="other backends to measure at --matrix-sizes (torch is the main pipeline)")
    g.add_argument("--impls", nargs="+", default=["reference", "cpu", "cuda"], choices=["reference", "cpu", "cuda"],
                   help="kernel implementations to measure at --matrix-sizes")
    g.add_argument("--alternatives", nargs="*", default=["torch_dense", "kornia_match_mnn", "faiss_flat_ip"],
                   help="Best-Buddies alternatives to measure at --matrix-sizes (none: skip)")
    g.add_argument("--matrix-sizes", type=int, nargs="+", default=[224, 320],
                   help="load sizes of the backend / kernel / alternative comparisons")
    g.add_argument("--e2e-sizes", type=int, nargs="+", default=[224],
                   help="load sizes where the public find_correspondences() is also timed end to end")
    g.add_argument("--cpu-fp16", action="store_true",
                   help="run torch fp16 on the CPU too (skipped by default when this CPU's fp16 GEMM is slow)")
    g.add_argument("--no-kernel-bench", action="store_true", help="skip benchmarks/bench_kernels.py's run() (a source checkout's)")

    g = parser.add_argument_group("baseline (re-implementation of the original code; needs a source checkout)")
    g.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    g.add_argument("--baseline-size", type=int, default=224, help="load size of the baseline (the paper: 224)")
    g.add_argument("--baseline-rows", type=int, default=64,
                   help="rows of the per-row cosine loop to time; the loop's time is scaled to all rows")
    g.add_argument("--full-baseline", action="store_true",
                   help="run the whole per-row loop (about 28 minutes at 224 on 2 cores)")

    g = parser.add_argument_group("model and inputs")
    _model_flags(g, "checkpoint file; default: deterministic weights (no download; timing does not depend on the "
                    "values)")
    g.add_argument("--image1", default=None, help="first image (default: examples/img_a.png)")
    g.add_argument("--image2", default=None, help="second image (default: examples/img_b.png)")
    add_arguments(g, MatchConfig, only=("layer", "facet", "num_pairs", "thresh"), help={
        "layer": "block of the descriptor facet", "num_pairs": "correspondences per pair",
        "thresh": "saliency threshold of the foreground"})
    add_arguments(g, ExtractorConfig, only=("device",))
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")

    g = parser.add_argument_group("protocol")
    g.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    g.add_argument("--repeat", type=int, default=5, help="timed calls per measurement (at most)")
    g.add_argument("--min-repeat", type=int, default=2, help="timed calls per measurement (at least)")
    g.add_argument("--budget", type=float, default=45.0,
                   help="stop repeating once the timed calls of a measurement took this many seconds")
    g.add_argument("--quick", action="store_true",
                   help="tiny smoke configuration (load sizes 40 and 56, few repeats, whole baseline loop)")

    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, help="output directory (default: ./dinofeat-bench-results, under the current directory; the project's "
                        "committed figures: --out benchmarks/results)")
    g.add_argument("--tag", default="bench", help="file stem of the outputs: TAG.json, TAG.md, TAG_*.png")
    g.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _model_flags(group, weights_help: str) -> None:
    """--model, --stride (default 4: the method's stride of dino_vits8), --weights (deterministic by default)."""
    add_arguments(group, ExtractorConfig, only=("model", "stride", "weights"), defaults={"stride": 4},
                  metavars={"weights": None}, help={"model": "zoo name", "stride": "patch-embedding stride",
                                                     "weights": weights_help})


def bench_main(args) -> int:
    """Bare `dinofeat bench`: the stage / throughput run (:mod:`dinofeat.bench.runner`)."""
    from ..bench.runner import main_from_args

    return main_from_args(args)


def add_bench_command(parser: argparse.ArgumentParser) -> None:
    """`dinofeat bench` (the arguments above) and its sub-commands (`dinofeat bench latency`)."""
    add_bench_arguments(parser)
    sub = parser.add_subparsers(dest="bench_command", metavar="{latency,precision}",
                                description="a bare `dinofeat bench` runs the stage / throughput benchmark above")
    p = sub.add_parser("latency", help="per-frame latency percentiles of the streaming API (dinofeat.stream)")
    add_latency_arguments(p)
    p.set_defaults(func=latency_main)
    p = sub.add_parser("precision", help="accuracy of each precision against fp32 (descriptors, saliency, Best "
                       "Buddies, PCK on WILLOW pairs) per backend")
    add_precision_arguments(p)
    p.set_defaults(func=precision_main)


def add_precision_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Descriptor cosine, saliency deviation, Best Buddies agreement (Jaccard) and keypoint-transfer "
                     "(PCK@0.1) change of each precision (fp32, tf32, bf16, fp16) against fp32, per backend, on "
                     "WILLOW pairs, plus speed. Writes DIR/precision.json and DIR/precision.md "
                     "(docs/dynamic_shapes.md).")
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: benchmarks/results/precision under the current directory)")
    p.add_argument("--data", default=None, help="WILLOW-ObjectClass root (default: ../shared/data/willow beside "
                   "the source checkout)")
    p.add_argument("--pairs-per-class", type=int, default=4, help="WILLOW pairs per class (Car, Duck, Winebottle)")
    add_arguments(p, ExtractorConfig, only=("load_size",),
                  help={"load_size": "load size (shorter side) of the precision run"})
    _model_flags(p, "checkpoint file; default: deterministic weights (the PCK rows then mean nothing; pass real "
                    "weights for them)")
    add_arguments(p, MatchConfig, only=("layer",), help={"layer": "layer whose keys are the descriptors"})
    add_arguments(p, ExtractorConfig, only=("device",))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_latency_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench import latency as L  # noqa: PLC0415

    p.description = ("Drive the streaming API (dinofeat.stream.FrameStream) over a real image sequence: frame 0 is "
                     "the keyframe, every later frame is matched to it. Writes DIR/latency.json (p50/p95/p99/max "
                     "latency, jitter, cold start, fps, dropped frames, peak memory, machine load) and "
                     "DIR/latency.png (histogram + timeline).")
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--tag", default="latency", help="file stem: DIR/TAG.json, DIR/TAG.png")
    p.add_argument("--rate", type=float, default=0.0, metavar="HZ",
                   help="camera rate: frames arrive every 1/HZ s, a frame arriving while busy replaces the queued "
                        "one (dropped); 0: as fast as possible")
    p.add_argument("--frames", type=int, default=L.DEFAULT_FRAMES, help="frames in the sequence (keyframe included)")
    p.add_argument("--max-seconds", type=float, default=L.DEFAULT_MAX_SECONDS,
                   help="stop the measured loop after this many seconds")
    p.add_argument("--input", default=None, metavar="DIR|BAG",
                   help="folder of images (sorted by name) or a bag; default: frames cut from examples/*.png")
    p.add_argument("--topic", default=None, help="image topic of a bag --input")
    p.add_argument("--frame-size", type=int, nargs=2, default=list(L.DEFAULT_FRAME_SIZE), metavar=("H", "W"),
                   help="size of the frames cut from the example images")
    p.add_argument("--previous", action="store_true", help="also match each frame to the previous one")
    p.add_argument("--compare", action="store_true",
                   help="also time find_correspondences(keyframe, frame) per frame (what a user would otherwise "
                        "call; interleaved, points compared); doubles the run time")
    add_match_arguments(p)
    p.add_argument("--no-plots", action="store_true", help="do not draw the PNG")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_model_arguments(p, weights_help="checkpoint file; default: deterministic weights (no download; the timing "
                    "does not depend on the values)")


def latency_main(args) -> int:
    from ..bench import latency as L

    L.check_run_args(args.rate, args.frames, args.max_seconds, args.input, args.compare)  # before the model
    resolve_stride(args)
    weights = args.weights
    if weights is None:
        from ..testing import deterministic_weights

        weights = deterministic_weights(args.model)
    ec = ExtractorConfig.from_object(args, weights=weights)
    mc = MatchConfig.from_object(args, bin=not args.no_bin)
    doc = L.measure(ec, mc, frames=args.frames, frame_size=tuple(args.frame_size), input_path=args.input,
                    topic=args.topic, rate=args.rate, max_seconds=args.max_seconds, previous=args.previous,
                    baseline=args.compare, progress=not args.quiet)
    if args.weights is None:
        doc["config"]["weights"] = f"deterministic ({args.model}, dinofeat.testing)"
    paths = L.write_outputs(doc, args.out, args.tag, plots=not args.no_plots)
    lat, jit = doc["latency_ms"], doc["jitter_ms"]
    print(f"{doc['frames_in_percentiles']} frames: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f}, p99 "
          f"{lat['p99']:.1f}, max {lat['max']:.1f}; jitter std {jit['std']:.1f} ms; cold {doc['cold_ms']:.1f} ms; "
          f"{doc['fps']:.2f} fps; dropped {doc['dropped']}; peak {doc['peak_mb']:.0f} MB "
          f"({doc['config']['backend']}, {doc['config']['device']})")
    if "baseline" in doc:
        b = doc["baseline"]
        print(f"baseline find_correspondences(keyframe, frame): p50 {b['latency_ms']['p50']:.1f} ms, p99 "
              f"{b['latency_ms']['p99']:.1f}, {b['ratio_p50']:.2f}x the stream's (median of per-frame ratios); "
              f"same points on every frame: {b['same_points_all_frames']}")
    if doc["stopped_at_max_seconds"]:
        print(f"stopped at --max-seconds {args.max_seconds:g} after {doc['frames_matched']} matched frame(s); raise "
              "--max-seconds or lower --load-size for more frames in the percentiles")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def precision_main(args) -> int:
    """`dinofeat bench precision --out DIR`: see :mod:`dinofeat.bench.precision`."""
    from ..bench.precision import run_precision_bench
    from ..errors import InputError

    data = Path(args.data) if args.data else ROOT.parent / "shared" / "data" / "willow"
    if not data.is_dir():
        raise InputError(f"--data {str(data)!r} is not a directory; pass the WILLOW-ObjectClass root")
    if args.pairs_per_class < 1:
        raise InputError(f"--pairs-per-class {args.pairs_per_class}: expected >= 1")
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / "precision"
    device = "cuda" if args.device == "auto" and _cuda() else ("cpu" if args.device == "auto" else args.device)
    doc = run_precision_bench(model=args.model, stride=args.stride, weights=args.weights, data=data, out=out,
                              pairs_per_class=args.pairs_per_class, load_size=args.load_size, layer=args.layer,
                              device=device, progress=not args.quiet)
    measured = sum(r["status"] == "measured" for r in doc["rows"])
    print(f"wrote {out / 'precision.json'} and {out / 'precision.md'} ({measured} rows measured, "
          f"{len(doc['rows']) - measured} not measured here, with the reason)")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
