"""The numeric constants of the kernel sources (``#define DF_NAME <number>``), read from the files themselves.

The headers ``*_common.cuh`` hold the per-element logic and the limits that the C++ build (``bindings/``) and the
CUDA build (``*.cu``) share; each ``.cu`` defines its own launch contract (``DF_BB_TILE_ROWS``, ...). Python reads
those values here (parsed once, cached) instead of copying them, so a limit is written in exactly one place:
:data:`dinofeat.kernels.dispatch.MAX_HIERARCHY` is ``DF_LOG_BIN_MAX_LEVELS``, the tile sizes of
:mod:`dinofeat.kernels.cuda` are the kernels' own ``DF_*_TILE_ROWS``. Only literal numbers are read (a define
computed from others, like ``DF_BBB_GEOM_WORDS``, is recomputed by the Python that needs it and checked in
``tests/kernels/test_kernels_headers.py``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
SUFFIXES = (".cuh", ".cu")

# `#define DF_NAME 123`, `1e-8f`, `0x10` (a trailing // comment allowed); anything else is not a constant here
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(DF_\w+)[ \t]+([^\s/]+)[ \t]*(?://.*)?$", re.M)
_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?")


def _number(text: str) -> int | float | None:
    if _INT.fullmatch(text):
        return int(text.rstrip("uUlL"), 0)
    if _FLOAT.fullmatch(text):
        return float(text.rstrip("fF"))
    return None


@functools.cache
def defines() -> dict[str, int | float]:
    """Every ``#define DF_*`` with a literal number in the kernel sources of this package, by name.

    Raises:
        RuntimeError: a name is defined twice (two sources would disagree) or the sources are missing.
    """
    found: dict[str, int | float] = {}
    where: dict[str, str] = {}
    paths = sorted(p for p in KERNEL_DIR.iterdir() if p.suffix in SUFFIXES)
    if not paths:
        raise RuntimeError(f"no kernel sources (*.cuh, *.cu) in {KERNEL_DIR}: the installation is incomplete")
    for path in paths:
        for m in _DEFINE.finditer(path.read_text(encoding="utf-8")):  # the sources hold UTF-8 (x, >=)
            value = _number(m.group(2))
            if value is None:
                continue
            if m.group(1) in found:
                raise RuntimeError(f"{m.group(1)} is defined in both {where[m.group(1)]} and {path.name}")
            found[m.group(1)], where[m.group(1)] = value, path.name
    return found


def define(name: str) -> int | float:
    """The value of ``#define name`` in the kernel sources (KeyError naming the sources if absent)."""
    try:
        return defines()[name]
    except KeyError:
        raise KeyError(f"{name} is not #defined to a number in {KERNEL_DIR}/*.cuh, *.cu") from None
