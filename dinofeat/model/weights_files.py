"""Where weights live: the cache directory and the ``<file>.sha256`` sidecars (sha256sum format).

Shared by `weights` (official files, downloads) and `weight_sources` (converted files), so neither imports the
other for paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..io import atomic_write_text


def cache_dir() -> Path:
    """$DINOFEAT_CACHE, else $XDG_CACHE_HOME/dinofeat, else ~/.cache/dinofeat (not created here)."""
    env = os.environ.get("DINOFEAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dinofeat"


def weights_dir() -> Path:
    """Where downloaded checkpoints live: cache_dir() / "weights"."""
    return cache_dir() / "weights"


def sidecar_path(path) -> Path:
    return Path(str(path) + ".sha256")


def read_sidecar(path) -> str | None:
    """The hash recorded in `<path>.sha256` (sha256sum format), or None if absent or unreadable."""
    try:
        text = sidecar_path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def write_sidecar(path, sha256: str) -> Path:
    """Record `sha256` for `path` in `<path>.sha256` (atomically; `sha256sum -c` can check it)."""
    path = Path(path)
    return atomic_write_text(sidecar_path(path), f"{sha256}  {path.name}\n")
