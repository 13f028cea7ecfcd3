"""Files, once: the atomic write every output and cache entry goes through.

Base layer: imports only `dinofeat.errors` and the standard library, so every layer may write files through it.

* `atomic_path(path)`: a context manager yielding a temporary path beside `path` (same directory, so the final
  rename is atomic); on a clean exit the file gets the permissions `open()` would give and is renamed onto
  `path`, on any exception it is removed and an existing file at `path` is left as it was.
* `atomic_write_bytes` / `atomic_write_text`: the common cases of it.
* `atomic_save(path, write, flag)`: the user-output form (CLI files): `write(tmp_path)`, and OSErrors become one
  `OutputError` naming the flag and the path.
* `temp_path(directory, name)`: a fresh temporary file for writers that manage the rename themselves.
* `file_sha256(path)`: the one file hash (weights sidecars, cache manifests).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputError


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# What open() would give; mkstemp's 0600 would hide shared caches and outputs from other users.
FILE_MODE = _file_mode()


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in `chunk`-byte blocks (weights, cache entries, packages)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def unlink_quiet(path) -> None:
    """Remove `path` if it exists (best effort: a file that cannot be removed is left)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_path(directory, name: str, suffix: str = ".tmp") -> Path:
    """A fresh, empty temporary file ``<directory>/.<name>.XXXX<suffix>`` (directory created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds.

    The temporary name keeps `path`'s suffix (``.<stem>.XXXX.tmp<suffix>``) so writers that pick a format from
    the extension (PIL, numpy) write the right one. The directory is created if missing.
    """
    path = Path(path)
    tmp = temp_path(path.parent, path.stem, suffix=".tmp" + path.suffix)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        unlink_quiet(tmp)  # nothing left after the rename; removes the partial file on an exception


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` through `atomic_path` (never a half-written file)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, *, fsync: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_path`."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save(path: str | os.PathLike, write: Callable[[str], object], flag: str = "output") -> Path:
    """Call ``write(tmp_path)`` on a temp file beside `path`, then rename it into place.

    A missing directory is created. OSErrors (a file in the way, a read-only directory, a full disk) raise
    `OutputError` naming `flag` and the path; the temp file is removed and an existing file at `path` survives.
    """
    path = Path(path)
    existed = path.exists()
    try:
        tmp = temp_path(path.parent, path.stem, suffix=".tmp" + path.suffix)
    except OSError as e:
        raise OutputError(f"{flag} {str(path)!r}: cannot create the file or its directory ({e})") from None
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{flag} {str(path)!r}: writing failed ({e}); nothing was written"
                          + (", the previous file is unchanged" if existed else "")) from None
    finally:
        unlink_quiet(tmp)
    return path
