"""`FeatureStore`: per-image features keyed by SHA-256, in an LRU bounded by bytes and optionally on disk.

An entry is one image's unbinned facet descriptors (one (T, C) float32 tensor per layer), saliency (T,), grid,
preprocessed size and resized image (H, W, 3) uint8; binning happens per pair (17x smaller entries).

Keys (`feature_key`): SHA-256 over the image digest (`image_digest`: the file's bytes, or an array's / PIL
image's pixels with shape and dtype) and the configuration that determines the features (model, weights
SHA-256, stride, load size, layer, facet, precision, backend, format version).

On disk (`cache_dir`): `<cache_dir>/<key[:2]>/<key>.safetensors`, written to a temp file and renamed. The
metadata holds the key and a SHA-256 of every tensor's bytes; an entry that does not open, names another key or
fails its checksum is counted in `stats["corrupt"]`, deleted and reported as a miss (the caller recomputes it).
Thread-safe (one lock); no side effects at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine.extractor import Features
from ..errors import InputError

FORMAT_VERSION = "1"


def image_digest(image, *, name: str = "image") -> str:
    """SHA-256 hex of an image's identity: a file's bytes, or an array's / PIL image's pixels + shape + dtype.

    Raises InputError for a missing file or an unsupported type (same wording as preprocessing).
    """
    h = hashlib.sha256()
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "file not found"
            raise InputError(f"{name}: {what}: {str(path)!r}")
        h.update(b"file:")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif isinstance(image, np.ndarray):
        h.update(f"array:{image.dtype.str}:{image.shape}:".encode())
        h.update(np.ascontiguousarray(image).tobytes())
    elif isinstance(image, Image.Image):
        h.update(f"pil:{image.mode}:{image.size}:".encode())
        h.update(image.tobytes())
        exif = image.getexif()
        h.update(f"orientation:{exif.get(0x0112, 1)}".encode())
    else:
        raise InputError(f"{name}: unsupported type {type(image).__name__}; pass a file path, a PIL.Image or an "
                         "HxWx3 uint8 array")
    return h.hexdigest()


def feature_key(digest: str, config: dict) -> str:
    """SHA-256 hex of (image digest, configuration dict); `config` values must be JSON-serialisable."""
    blob = json.dumps({"image": digest, "format": FORMAT_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def features_nbytes(f: Features) -> int:
    """Bytes held by an entry (tensors + resized image)."""
    n = sum(t.numel() * t.element_size() for t in f.per_layer.values())
    n += f.saliency.numel() * f.saliency.element_size() if f.saliency is not None else 0
    if f.image is not None:
        n += f.image.width * f.image.height * 3
    return n


class FeatureStore:
    """LRU of `Features` (B = 1, unbinned, with `image`) bounded by `cache_bytes`, plus an optional disk store.

    Args:
        cache_dir: folder of the on-disk entries (created on first write), or None for memory only.
        cache_bytes: bound of the in-memory LRU in bytes (0 disables it); an entry larger than the bound is
            not kept in memory.
    """

    def __init__(self, cache_dir=None, cache_bytes: int = 2 << 30):
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, np.integer)) or cache_bytes < 0:
            raise InputError(f"cache_bytes={cache_bytes!r}: expected an int >= 0 (bytes of the in-memory cache)")
        if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise InputError(f"cache_dir={str(cache_dir)!r}: exists and is not a directory")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_bytes = int(cache_bytes)
        self._lru: OrderedDict[str, tuple[Features, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "corrupt": 0, "disk_writes": 0}

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def path(self, key: str) -> Path | None:
        """On-disk file of `key` (None without cache_dir)."""
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> Features | None:
        """The entry of `key` from memory, else from disk (verified; then kept in memory), else None; counted in
        `stats` (memory_hits / disk_hits / misses)."""
        f, where = self.lookup(key)
        self.count(where)
        return f

    def lookup(self, key: str) -> tuple[Features | None, str]:
        """`get` without counting: (features or None, "memory" | "disk" | "miss"); the caller counts the outcome
        with `count` once per image it serves (a batch pipeline that looks an image up twice, or serves one
        forward to several pairs, counts what each pair got)."""
        with self._lock:
            hit = self._lru.get(key)
            if hit is not None:
                self._lru.move_to_end(key)
                return hit[0], "memory"
        f = self._read(key)
        if f is not None:
            self._remember(key, f)
        return f, "disk" if f is not None else "miss"

    def count(self, where: str) -> None:
        """Record one lookup outcome: "memory" | "disk" (hits) or "miss"."""
        name = {"memory": "memory_hits", "disk": "disk_hits", "miss": "misses"}[where]
        with self._lock:
            self.stats[name] += 1

    def put(self, key: str, f: Features, *, write: bool = True) -> None:
        """Keep `f` (B = 1, unbinned, `image` set) in memory and, with cache_dir and `write`, on disk."""
        self._remember(key, f)
        if write and self.cache_dir is not None:
            self._write(key, f)

    def _remember(self, key: str, f: Features) -> None:
        n = features_nbytes(f)
        with self._lock:
            if key in self._lru:
                self._bytes -= self._lru.pop(key)[1]
            if n > self.cache_bytes:
                return
            self._lru[key] = (f, n)
            self._bytes += n
            while self._bytes > self.cache_bytes:
                _, (_, old) = self._lru.popitem(last=False)
                self._bytes -= old

    def _write(self, key: str, f: Features) -> None:
        from safetensors.torch import save_file

        from ..viz import atomic_save

        tensors = {f"layer_{lyr}": t[0].detach().float().cpu().contiguous() for lyr, t in f.per_layer.items()}
        tensors["saliency"] = f.saliency[0].detach().float().cpu().contiguous()
        tensors["image"] = torch.from_numpy(np.asarray(f.image.convert("RGB"), dtype=np.uint8).copy())
        meta = {"key": key, "format": FORMAT_VERSION, "checksum": _checksum(tensors),
                "num_patches": json.dumps(list(f.num_patches)), "load_size": json.dumps(list(f.load_size)),
                "layers": json.dumps(list(f.per_layer))}
        atomic_save(self.path(key), lambda tmp: save_file(tensors, tmp, metadata=meta))
        with self._lock:
            self.stats["disk_writes"] += 1

    def _read(self, key: str) -> Features | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        seen = None  # the entry read here: another process may rename a fresh one into place meanwhile
        try:
            seen = os.stat(path)
            meta, tensors = _load_entry(path)
            if meta.get("key") != key or meta.get("checksum") != _checksum(tensors):
                raise ValueError("key or checksum mismatch")
            grid = tuple(json.loads(meta["num_patches"]))
            layers = json.loads(meta["layers"])
            per_layer = {int(lyr): tensors[f"layer_{lyr}"][None] for lyr in layers}
            sal = tensors["saliency"][None]
            if sal.shape[1] != grid[0] * grid[1] or any(t.shape[1] != sal.shape[1] for t in per_layer.values()):
                raise ValueError("shapes do not agree with the grid")
            image = Image.fromarray(tensors["image"].numpy(), mode="RGB")
            first = per_layer[int(layers[0])]
            desc = torch.cat([per_layer[int(lyr)] for lyr in layers], dim=-1) if len(layers) > 1 else first
            return Features(descriptors=desc, saliency=sal, num_patches=grid,
                            load_size=tuple(json.loads(meta["load_size"])), per_layer=per_layer, image=image)
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed, never used
            with self._lock:
                self.stats["corrupt"] += 1
            _unlink_if_same(path, seen)
            return None


def _load_entry(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, read whole. Not `safe_open(...).get_tensor`: with safetensors
    0.8.0 it keeps ~5 Python objects per tensor read for good (measured: +684 KiB over 15,000 reads), a slow leak
    in a store read thousands of times an hour."""
    from safetensors.torch import load

    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}, load(data)


def _unlink_if_same(path: Path, seen: os.stat_result | None) -> None:
    """Delete the unreadable entry `path` unless another process has meanwhile renamed a new file into place."""
    try:
        now = os.stat(path)
    except OSError:
        return
    if seen is None or (now.st_ino, now.st_dev, now.st_mtime_ns) == (seen.st_ino, seen.st_dev, seen.st_mtime_ns):
        path.unlink(missing_ok=True)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
