"""On-disk cache of exported ONNX graphs and TensorRT engines: keyed, atomic, hash-verified.

An entry is one or more files ``<key>.<suffix>`` plus a manifest ``<key>.json`` that records every file's SHA-256
and the fields the key was made from. Files are written to a temporary name in the same directory and renamed into
place (atomic on POSIX and Windows); the manifest is written last, so an entry exists only once all its files do.
`lookup` re-hashes the files: an entry whose files are missing or fail their hash is deleted and reported as
absent, so the caller rebuilds it and never uses it.

Cache root: `dinofeat.model.weights_files.cache_dir()` ($DINOFEAT_CACHE, else $XDG_CACHE_HOME/dinofeat, else
~/.cache/dinofeat), with ``onnx/`` and ``trt/`` below it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

from ..io import FILE_MODE, atomic_write_bytes, file_sha256, unlink_quiet
from ..model.weights_files import cache_dir

MANIFEST_SUFFIX = ".json"


def cache_root() -> Path:
    return Path(cache_dir())


def cache_subdir(kind: str, root=None) -> Path:
    """``<root>/<kind>`` (kind: "onnx" or "trt"), created if missing."""
    path = (Path(root) if root is not None else cache_root()) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_key(fields: dict) -> str:
    """A stable 32-hex-digit key: SHA-256 of the fields as canonical JSON."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


sha256_file = file_sha256  # the one file hash (dinofeat.io)


def atomic_move(src, dst) -> Path:
    """Rename `src` onto `dst` (same filesystem: both live in the cache directory)."""
    dst = Path(dst)
    os.replace(src, dst)
    return dst


@contextlib.contextmanager
def entry_lock(directory, key: str):
    """Hold an exclusive lock on entry `key` across processes (POSIX `flock` on ``.<key>.lock``).

    Callers wrap lookup + build + store in it, so N processes asking for the same missing entry build it once:
    the first builds, the others wait and then find it. The lock file stays (removing it would race); it is
    hidden and empty. Where `fcntl` is missing (Windows) there is no lock: the atomic renames still guarantee
    whole files, the entry may just be built more than once.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f".{key}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def manifest_path(directory, key: str) -> Path:
    return Path(directory) / f"{key}{MANIFEST_SUFFIX}"


def lookup(directory, key: str) -> dict | None:
    """The manifest of entry `key` if every file it lists exists and matches its SHA-256, else None.

    A broken entry (missing file, hash mismatch, unreadable manifest) is deleted with a warning: the caller then
    rebuilds it.
    """
    mpath = manifest_path(directory, key)
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
        problems = []
        for name, sha in files.items():
            path = Path(directory) / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif sha256_file(path) != sha:
                problems.append(f"{name} fails its SHA-256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        problems = [f"unreadable manifest ({e})"]
        files = {}
    if problems:
        warnings.warn(f"dinofeat cache entry {mpath} is broken ({'; '.join(problems)}): deleting it and rebuilding",
                      RuntimeWarning, stacklevel=3)
        remove(directory, key, files)
        return None
    manifest["paths"] = {name: str(Path(directory) / name) for name in files}
    return manifest


def store(directory, key: str, files: dict[str, bytes | os.PathLike | str], meta: dict) -> dict:
    """Commit entry `key`: `files` maps a file name to its bytes or to a finished temporary file to move in.

    Returns the manifest (as `lookup` would).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, content in files.items():
        dest = directory / name
        if isinstance(content, (bytes, bytearray, memoryview)):
            atomic_write_bytes(dest, bytes(content), fsync=True)
        else:
            atomic_move(content, dest)
        hashes[name] = sha256_file(dest)
    manifest = {"key": key, "files": hashes, "meta": meta}
    atomic_write_bytes(manifest_path(directory, key), json.dumps(manifest, indent=1, sort_keys=True).encode(),
                       fsync=True)
    manifest["paths"] = {name: str(directory / name) for name in hashes}
    return manifest


def remove(directory, key: str, files=()) -> None:
    unlink_quiet(manifest_path(directory, key))
    for name in files:
        unlink_quiet(Path(directory) / name)

