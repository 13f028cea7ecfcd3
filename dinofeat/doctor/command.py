"""`dinofeat doctor`: its arguments, the printed report (versions, devices, caches, then the self-tests) and the
optional JSON; ``--gpu`` runs the GPU check (:mod:`.gpu_check`) instead. Exit code 1 if any self-test failed, 0
otherwise (skipped is not failed)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..bench.environment import environment
from . import gpu_check, selftests
from .selftests import Check


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print versions (python, torch, CUDA, cuDNN, onnxruntime, tensorrt, cupy, NVRTC, driver), "
                          "GPUs and cache directories, then self-test every backend and kernel that can run here "
                          "against the CPU reference (deterministic weights, no download). Exit code 1 if any "
                          "test fails; skipped tests are not failures.")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON")
    parser.add_argument("--no-selftest", action="store_true", help="only print versions, devices and caches")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"],
                        help="auto: also test CUDA paths when a GPU is visible; cpu: CPU paths only")
    parser.add_argument("--model", default="dino_vits8", help="zoo model for the backend tests (default dino_vits8)")
    parser.add_argument("--load-size", type=int, default=40, help="test image's shorter side (default 40)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU check instead (dinofeat.doctor.gpu_check; "
                        "also python -m benchmarks.gpu_check in a source checkout): self-tests, ViT/Best-Buddies/"
                        "log-bin rates, pytest -m gpu; minutes")
    parser.add_argument("--out", default="gpu_check", help="with --gpu: directory of gpu_check.json / .md")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: print the rows it would measure")
    parser.add_argument("--budget-s", type=float, default=gpu_check.BUDGET_S,
                        help="with --gpu: time budget of the whole check (s)")
    parser.add_argument("--sections", nargs="+", default=None, choices=[name for name, _ in gpu_check.SECTIONS],
                        help="with --gpu: run only these sections")


def _print_env(env: dict, out) -> None:
    width = 22
    print("Versions", file=out)
    for key in ("python", "platform", "dinofeat", "dinofeat._native", "torch", "torch CUDA build", "cuDNN",
                "torch threads", "torch CPU capability", "numpy", "pillow", "scikit-learn", "onnxruntime",
                "onnxruntime providers", "tensorrt", "cupy", "CUDA runtime (cupy)", "NVRTC", "CUDA driver", "nvcc"):
        if key in env:
            v = env[key]
            print(f"  {key:<{width}} {', '.join(v) if isinstance(v, list) else v}", file=out)
    print("Devices", file=out)
    cpu = env["cpu"]
    print(f"  {'CPU':<{width}} {cpu['name']}, {cpu['logical cores']} logical cores, {cpu['memory GB']} GB RAM",
          file=out)
    if env["gpus"]:
        for g in env["gpus"]:
            print(f"  {'GPU ' + str(g['index']):<{width}} {g['name']}, compute capability "
                  f"{g['compute capability']}, {g['memory GB']} GB", file=out)
    else:
        print(f"  {'GPU':<{width}} none: {env['gpu note']}", file=out)
    print("Caches", file=out)
    for label, d in env["caches"].items():
        if d.get("path") is None:
            print(f"  {label:<{width}} {d.get('note')}", file=out)
        elif d["exists"]:
            print(f"  {label:<{width}} {d['path']} ({d['files']} files, {d['bytes'] / 2**20:.1f} MiB)", file=out)
        else:
            print(f"  {label:<{width}} {d['path']} (not created yet)", file=out)


def _format_check(c: Check) -> str:
    tag = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[c.status]
    secs = f"  [{c.seconds:.1f} s]" if c.status != "skip" else ""
    return f"  {tag}  {c.name:<44} {c.detail}{secs}"


def doctor_main(args) -> int:
    if getattr(args, "gpu", False):
        budget_s = getattr(args, "budget_s", gpu_check.BUDGET_S)
        return gpu_check.run_check(args.out, dry_run=args.dry_run, budget_s=budget_s,
                                   sections=getattr(args, "sections", None))
    out = sys.stdout
    t0 = time.perf_counter()
    from ..version import __version__

    print(f"dinofeat doctor (dinofeat {__version__})", file=out)
    env = environment()
    _print_env(env, out)
    checks: list[Check] = []
    what = ""
    if not args.no_selftest:
        print("Self-tests against the CPU reference", file=out)
        out.flush()

        def say(c):
            print(_format_check(c), file=out, flush=True)

        checks, what = selftests.self_tests(model=args.model, load_size=args.load_size, device=args.device,
                                            progress=say)
        print(f"  input: {what}", file=out)
    n = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    wall = time.perf_counter() - t0
    verdict = "FAILED" if n["fail"] else "OK"
    print(f"Summary: {verdict}: {n['pass']} passed, {n['fail']} failed, {n['skip']} skipped ({wall:.1f} s)",
          file=out)
    if args.json:
        report = {"environment": env, "selftest_input": what, "checks": [asdict(c) for c in checks],
                  "summary": n, "seconds": wall}
        from ..io import atomic_write_text

        path = Path(args.json)
        atomic_write_text(path, json.dumps(report, indent=2, default=str, allow_nan=True))
        print(f"report written to {path}", file=out)
    return 1 if n["fail"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dinofeat doctor")
    add_doctor_arguments(parser)
    return doctor_main(parser.parse_args(argv))

