"""Coverage-guided fuzzing (atheris / libFuzzer) of the image loader and the checkpoint loader, for a bounded time.

``python -m benchmarks.fuzz [--seconds 300] [--targets image checkpoint] [--out benchmarks/results/fuzz]``

Each target runs in its own child process (``python -m benchmarks.fuzz --child TARGET``) under
``atheris.instrument_imports`` of dinofeat, Pillow and safetensors (torch's unpickler is C++ and not
instrumented, but runs on every checkpoint input), seeded with small valid files made here. The contract under test is the project's bad-input rule:
every input either loads or raises a `dinofeat.errors.DinofeatError`; any other exception is a **crash**, saved
as ``<out>/<target>/crash-<sha1>.bin`` (+ ``.txt`` with the traceback), one per distinct (exception type,
innermost frame), and fuzzing goes on. A hang beyond ``--timeout`` s or memory beyond ``--rss-mb`` stops the child
(libFuzzer's own limits) and is reported. Results: ``<out>/fuzz.json`` (executions, coverage, crashes, machine,
load average). Not part of CI; each crash found becomes a corpus test in ``tests/reliability/test_fuzz_*.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp", ".ppm", ".ico")
CKPT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
MAX_PREPROCESS_PIXELS = 1 << 20  # image target: larger decoded images are loaded but not resized (see _Target.load)


# ------------------------------------------------------------------------------------------------ seeds
def image_seeds() -> list[bytes]:
    """Small valid images in every format the suffix byte selects (first byte = suffix index)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    out = []
    for i, (suffix, mode) in enumerate(zip(IMAGE_SUFFIXES, ("RGBA", "RGB", "P", "L", "I;16", "RGB", "RGB", "RGBA"),
                                           strict=True)):
        im = Image.fromarray(arr).convert("RGBA" if mode == "RGBA" else "RGB")
        if mode in ("P", "L"):
            im = im.convert(mode)
        elif mode == "I;16":
            im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
        buf = io.BytesIO()
        im.save(buf, format={".jpg": "JPEG", ".tiff": "TIFF", ".ppm": "PPM", ".ico": "ICO"}.get(suffix,
                                                                                             suffix[1:].upper()))
        out.append(bytes([i]) + buf.getvalue())
    return out


def checkpoint_seeds() -> list[bytes]:
    import torch
    from safetensors.torch import save as st_save

    sd = {"cls_token": torch.zeros(1, 1, 4), "blocks.0.attn.qkv.weight": torch.ones(12, 4),
          "rope_embed.periods": torch.tensor([1.0, 1.3359375])}
    out = []
    for i, obj in enumerate(({"model": sd}, sd, {"teacher": {"backbone.norm.weight": torch.ones(4)}})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        out.append(bytes([i % 3]) + buf.getvalue())
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)  # legacy (non-zip) pickle format
    out.append(bytes([0]) + buf.getvalue())
    out.append(bytes([3]) + st_save(sd))
    return out


# ------------------------------------------------------------------------------------------------ targets
class _Target:
    """One fuzz target: writes the input to a file with the suffix its first byte picks and loads it."""

    def __init__(self, name: str, out_dir: Path):
        self.name = name
        self.out = out_dir
        self.tmp = Path(tempfile.mkdtemp(prefix=f"dinofeat-fuzz-{name}-"))
        self.seen: set[str] = set()
        self.outcomes: dict[str, int] = {}
        self.runs = 0
        suffixes = IMAGE_SUFFIXES if name == "image" else CKPT_SUFFIXES
        self.paths = [self.tmp / f"input{s}" for s in suffixes]

    def load(self, path: Path) -> str:
        if self.name == "image":
            from dinofeat.engine.preprocess import load_image, preprocess
            from dinofeat.model.zoo import IMAGENET_MEAN, IMAGENET_STD

            pil = load_image(str(path))
            if pil.width * pil.height > MAX_PREPROCESS_PIXELS:
                # e.g. a 13 x 4194313 TIFF: resizing its short side to 16 px makes a 16 x 5.2M image, seconds of
                # LANCZOS per input; the extreme-aspect token budget (issue 15 section 1) is where that is refused.
                return f"loaded, not resized ({pil.width} x {pil.height} > {MAX_PREPROCESS_PIXELS} px)"
            preprocess(pil, 16, IMAGENET_MEAN, IMAGENET_STD)
        else:
            from dinofeat.model.weights import load_weights

            load_weights("dino_vits8", str(path), progress=False)
        return "loaded"

    def __call__(self, data: bytes) -> None:
        from dinofeat.errors import DinofeatError

        if not data:
            return
        path = self.paths[data[0] % len(self.paths)]
        path.write_bytes(data[1:])
        try:
            outcome = self.load(path)
            if outcome.startswith("loaded, not resized"):
                outcome = "loaded, not resized (large)"
        except DinofeatError as e:
            outcome = type(e).__name__
        except Exception as e:  # noqa: BLE001 - this is what a fuzzer looks for
            outcome = "CRASH " + type(e).__name__
            self._record(data, e)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.runs += 1
        if self.runs % 100 == 1 or outcome.startswith("CRASH"):  # libFuzzer exits without atexit handlers
            (self.out / "outcomes.json").write_text(json.dumps({"runs": self.runs, "outcomes": self.outcomes,
                                                                "crashes": sorted(self.seen)}, indent=1))

    def _record(self, data: bytes, exc: BaseException) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        key = f"{type(exc).__name__} at {where}"
        if key in self.seen:
            return
        self.seen.add(key)
        sha = hashlib.sha1(data).hexdigest()
        (self.out / f"crash-{sha}.bin").write_bytes(data)
        (self.out / f"crash-{sha}.txt").write_text(
            f"{key}\nsuffix {self.paths[data[0] % len(self.paths)].suffix}\n\n"
            + "".join(traceback.format_exception(exc)))
        print(f"\n== new crash: {key} (saved crash-{sha}.bin)", file=sys.stderr, flush=True)


def _instrument_module_functions(modules, atheris) -> int:
    """Patch every function / method defined in `modules` with atheris' coverage instrumentation."""
    import inspect

    count = 0
    for mod in modules:
        for _, obj in inspect.getmembers(mod):
            members = [obj] + ([m for _, m in inspect.getmembers(obj)] if inspect.isclass(obj) else [])
            for fn in members:
                if inspect.isfunction(fn) and fn.__module__ == mod.__name__:
                    atheris.instrument_func(fn)
                    count += 1
    return count


def child(target: str, seconds: int, out_dir: Path, timeout: int, rss_mb: int) -> int:
    import atheris
    import numpy  # noqa: F401 - imported (uninstrumented) before the instrumented modules pull them in
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["PIL", "safetensors"]):
        import PIL.Image  # noqa: F401
        import safetensors.torch  # noqa: F401
    # dinofeat is usually installed editable (a custom import loader, which instrument_imports does not cover):
    # instrument the code objects of its functions and methods in place instead.
    import dinofeat.engine.preprocess
    import dinofeat.model.dinov3
    import dinofeat.model.layouts
    import dinofeat.model.weights

    _instrument_module_functions([dinofeat.engine.preprocess, dinofeat.model.weights, dinofeat.model.layouts,
                                  dinofeat.model.dinov3], atheris)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, seed in enumerate(image_seeds() if target == "image" else checkpoint_seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    fuzz = _Target(target, out_dir)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", f"-timeout={timeout}",
            f"-rss_limit_mb={rss_mb}", "-print_final_stats=1", f"-artifact_prefix={out_dir}/"]
    atheris.Setup(argv, fuzz)
    atheris.Fuzz()
    return 0


def _parse_stats(log: str) -> dict:
    stats = {}
    done = [line for line in log.splitlines() if re.match(r"#\d+\s+(DONE|pulse|NEW|REDUCE|INITED)", line)]
    if done:
        last = done[-1]
        stats["last_status"] = last.strip()
        for key in ("cov", "ft", "corp", "exec/s"):
            m = re.search(rf"{re.escape(key)}: (\d+)", last)
            if m:
                stats[key] = int(m.group(1))
        m = re.match(r"#(\d+)", last)
        stats["executions"] = int(m.group(1)) if m else None
    for line in log.splitlines():
        m = re.match(r"stat::(\w+):\s+(\d+)", line)
        if m:
            stats[m.group(1)] = int(m.group(2))
    for marker in ("ERROR: libFuzzer: timeout", "ERROR: libFuzzer: out-of-memory", "ERROR: libFuzzer: deadly signal",
                   "Uncaught Python exception"):
        if marker in log:
            stats.setdefault("libfuzzer_errors", []).append(marker)
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=300, help="fuzzing time per target")
    p.add_argument("--targets", nargs="+", default=["image", "checkpoint"], choices=["image", "checkpoint"])
    p.add_argument("--out", default="benchmarks/results/fuzz")
    p.add_argument("--timeout", type=int, default=60, help="seconds one input may take (libFuzzer -timeout)")
    p.add_argument("--rss-mb", type=int, default=4096, help="memory limit of a child (libFuzzer -rss_limit_mb)")
    p.add_argument("--child", choices=["image", "checkpoint"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.child:
        return child(args.child, args.seconds, out / args.child, args.timeout, args.rss_mb)
    try:
        import atheris  # noqa: F401
    except ImportError as e:
        print(f"atheris cannot be imported here ({e}); pip install atheris", file=sys.stderr)
        return 2
    results = {"command": " ".join([sys.executable, "-m", "benchmarks.fuzz", *(argv or sys.argv[1:])]),
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "targets": {}}
    for target in args.targets:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--child", target, "--seconds",
                               str(args.seconds), "--out", str(out), "--timeout", str(args.timeout), "--rss-mb",
                               str(args.rss_mb)], capture_output=True, text=True,
                              timeout=args.seconds + 600)
        log = proc.stdout + proc.stderr
        (out / target).mkdir(parents=True, exist_ok=True)
        (out / target / "fuzz.log").write_text(log[-200_000:])
        summary_file = out / target / "outcomes.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        results["targets"][target] = {"wall_s": round(time.time() - t0, 1), "exit_code": proc.returncode,
                                      **_parse_stats(log), **summary}
        print(f"{target}: {json.dumps(results['targets'][target])}")
    results["machine"]["loadavg_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'fuzz.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
