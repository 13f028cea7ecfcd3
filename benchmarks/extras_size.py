"""What each install extra costs on disk: the installed size of the distributions it pulls beyond dinofeat's core
(torch, timm, numpy, ...), read from the current environment's metadata (every extra must be installed in it).

    python -m benchmarks.extras_size [--out benchmarks/results/extras_size.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _installed() -> dict:
    return {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}


def _size(dist) -> int:
    total = 0
    for f in dist.files or []:
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass
    return total


def closure(requirements: list[str], dists: dict, missing: set) -> set[str]:
    """Names of the installed distributions `requirements` pull, transitively (markers evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        if name not in dists:
            missing.add(name)
            continue
        seen.add(name)
        for line in dists[name].requires or []:
            sub = Requirement(line)
            if sub.marker and not any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                continue
            todo.append(sub)
    return seen


def measure() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def expand(extra: str) -> list[str]:
        out = []
        for line in extras[extra]:
            req = Requirement(line)
            out += [x for e in req.extras for x in expand(e)] if canonicalize_name(req.name) == "dinofeat" else [line]
        return out

    dists, missing = _installed(), set()
    core = closure(list(project["dependencies"]), dists, missing)
    rows = {"core (torch, timm, numpy, ...)": {"mb": round(sum(_size(dists[n]) for n in core) / 1e6),
                                              "distributions": len(core)}}
    for extra in extras:
        names = closure(expand(extra), dists, missing) - core
        rows[f"[{extra}]"] = {"mb": round(sum(_size(dists[n]) for n in names) / 1e6), "distributions": len(names),
                              "largest": sorted(names, key=lambda n: -_size(dists[n]))[:5]}
    return {"command": "python -m benchmarks.extras_size", "python": sys.version.split()[0],
            "platform": platform.platform(), "not installed here (not counted)": sorted(missing), "extras": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/extras_size.json", help="JSON file to write")
    args = p.parse_args(argv)
    result = measure()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["extras"].items():
        print(f"{name:<34} {row['mb']:>6} MB  {row['distributions']:>3} distributions")
    print(f"not installed here: {', '.join(result['not installed here (not counted)']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
