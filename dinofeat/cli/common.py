"""What every command shares: the parser class, the model and matching flags (generated from
`dinofeat.config`), and the checks and writes done before and after the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EXPORT_PRECISIONS, ExtractorConfig, MatchConfig, add_arguments
from ..errors import DinofeatError, InputError

EPILOG = "Docs: README.md. Weights: --weights FILE, or downloaded to the cache (`dinofeat weights download`)."

# The `ExtractorConfig` fields of the "model" group, in the order `--help` lists them.
MODEL_FLAGS = ("model", "stride", "weights", "backend", "onnx", "device", "precision", "pos_interp", "load_size")
# The `MatchConfig` fields of `dinofeat match` (also replay, bench latency), in the order `--help` lists them.
MATCH_FLAGS = ("num_pairs", "layer", "facet", "bin", "thresh")
# `dinofeat export` and the Triton repository write graphs: fp32 or fp16 only.
EXPORT_CHOICES = {"precision": EXPORT_PRECISIONS}


def add_match_arguments(p, **variations) -> None:
    """The matching flags of `dinofeat match` (also `dinofeat replay`, `dinofeat bench latency`); `variations`
    are `config.add_arguments`' per-command keywords (only=, defaults=, help=, ...)."""
    add_arguments(p, MatchConfig, **{"only": MATCH_FLAGS, **variations})


def add_model_arguments(p, weights_help: str | None = None, **variations) -> None:
    """The model flags of every command that runs the ViT (--model, --stride, --weights, ..., --load-size), in an
    argument group "model"; `weights_help` replaces --weights' help (e.g. bench: deterministic weights)."""
    helps = dict(variations.pop("help", None) or {}, **({"weights": weights_help} if weights_help else {}))
    add_arguments(p.add_argument_group("model"), ExtractorConfig, **{"only": MODEL_FLAGS, "help": helps,
                                                                      **variations})


def add_descriptor_arguments(p, layer: int, bin_default: bool) -> None:
    """The descriptor flags of the applications (pca, coseg, parts, eval spair): --layer (this default), --facet,
    --bin or --no-bin (by `bin_default`), -q, and the model flags."""
    add_arguments(p, MatchConfig, only=("layer", "facet", "bin"), defaults={"layer": layer, "bin": bin_default},
                  dests={"bin": "bin"}, help={"layer": f"block of the descriptor facet (default {layer})",
                                               "bin": "unbinned descriptors" if bin_default else
                                               "log-binned descriptors (17 bins)"})
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)


def resolve_stride(args) -> None:
    """`--stride` not given: the model's zoo default (half its patch); sets args.stride."""
    from ..model.zoo import get_model_spec

    if getattr(args, "stride", 0) is None:
        args.stride = get_model_spec(args.model).default_stride


def precheck(args, layer) -> None:
    """Arguments the model would reject, checked before it is loaded (seconds) or downloaded."""
    from ..engine.preprocess import check_load_size
    from ..model.vit import check_request, with_pos_interp
    from ..model.zoo import get_model_spec

    spec = with_pos_interp(get_model_spec(args.model), getattr(args, "pos_interp", None))
    resolve_stride(args)
    check_request(spec, layer, args.facet)
    check_load_size(args.load_size, spec.patch_size)


def extractor_config(args, **overrides) -> ExtractorConfig:
    """The `ExtractorConfig` of a command's model flags (--stride resolved to the zoo default)."""
    resolve_stride(args)
    return ExtractorConfig.from_args(args, **overrides)


def _extractor(args):
    """The `Extractor` of a command's model flags; --onnx graphs added (with --backend onnxruntime only)."""
    from .. import progress as status
    from ..engine.extractor import Extractor

    onnx_files = getattr(args, "onnx", None)
    if onnx_files and args.backend != "onnxruntime":
        raise DinofeatError(f"--onnx {onnx_files[0]}: only with --backend onnxruntime")
    ex = Extractor.from_config(extractor_config(args, onnx=()), progress=not getattr(args, "quiet", False))
    status.note(f"weights: {ex.weights_origin or ex.weights_source}")
    for path in onnx_files or ():
        h, w, outputs = ex.backend.add_graph(path)
        status.note(f"--onnx {path}: runs {h}x{w} inputs, outputs {','.join(outputs)}")
    return ex


def _check_suffix(path: str, allowed: tuple[str, ...], flag: str) -> None:
    """Check the output's suffix and (before any work is done) that its directory can be created and written."""
    from ..viz import check_output_path

    if not str(path).lower().endswith(allowed):
        raise DinofeatError(f"{flag} {path!r}: expected a file ending in {' or '.join(allowed)}")
    check_output_path(path, flag)


def _check_images(named_paths) -> None:
    """Fail before loading the model: every image argument must be a readable image (decoded once here)."""
    from ..engine.preprocess import load_image

    for name, path in named_paths:
        if not Path(path).exists():
            raise DinofeatError(f"{name}: file not found: {path!r}")
        load_image(path, name=name)


def _save(path, write, flag: str) -> Path:
    """`viz.atomic_save`, saying so when it created the output's missing directory."""
    from ..viz import atomic_save

    parent = Path(path).parent
    missing = not parent.exists()
    out = atomic_save(path, write, flag)
    if missing:
        print(f"created the directory {parent} for {flag}", file=sys.stderr)
    return out


def parse_size(text: str) -> tuple[int, int]:
    """"224x336" -> (224, 336) as (H, W); "224" -> (224, 224)."""
    import re

    m = re.match(r"^\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*$", str(text))
    if not m:
        raise InputError(f"--size {text!r}: expected HxW in pixels, e.g. 224x224 or 224x336 (or one number)")
    h = int(m.group(1))
    return h, int(m.group(2)) if m.group(2) else h


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (when it has one and the text does not already say it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`dinofeat match: error: ...`, exit 2) instead of usage + error; help texts
    with defaults (every subcommand's parser is one of these)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
