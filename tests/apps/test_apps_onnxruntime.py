"""The applications on the ONNX Runtime backend (issue 20): the CLS descriptor, the stride-8 saliency extractor
and every application through public `Extractor` API, equal to the torch backend's within float32 tolerance.

Two same-size tiny images (one graph size per extractor: 48x32 at stride 4, 24x16 at stride 8) keep the ONNX
exports few; they go to the session's export cache."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LOAD
from PIL import Image
from testutil import EXAMPLES, rel_err

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import dinofeat  # noqa: E402
from dinofeat.apps.common import extract_features  # noqa: E402
from dinofeat.cli import main  # noqa: E402
from dinofeat.model.vit import Request  # noqa: E402

SAMPLE = 4


# The session's export cache as $DINOFEAT_CACHE (conftest). Integration: the full 12-block ViT is exported to ONNX
# at two strides (about 35 s on 2 cores); CI runs it with `pytest -m integration`.
pytestmark = [pytest.mark.usefixtures("ort_cache"), pytest.mark.integration]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """img_a and its mirror image: two 48x32 images after resizing."""
    d = tmp_path_factory.mktemp("ort_apps")
    a = Image.open(EXAMPLES / "img_a.png").convert("RGB")
    a.save(d / "a.png")
    a.transpose(Image.FLIP_LEFT_RIGHT).save(d / "a_mirror.png")
    return [str(d / "a.png"), str(d / "a_mirror.png")]


@pytest.fixture(scope="module")
def ort_extractor(vits8_weights_file, ort_cache):
    return dinofeat.Extractor(model="dino_vits8", stride=4, weights=str(vits8_weights_file), backend="onnxruntime",
                              device="cpu", progress=False)


def test_cls_saliency_and_derived_stride_match_torch(ort_extractor, extractor, image_files):
    """What co-segmentation with remove_outliers reads (the graphs are shared with the CLI test below)."""
    got = extract_features(ort_extractor, image_files, LOAD, 11, "key", False, include_cls=True)
    ref = extract_features(extractor, image_files, LOAD, 11, "key", False, include_cls=True)
    for g, r in zip(got, ref, strict=True):
        assert g.num_patches == r.num_patches == (7, 11) and g.cls.shape == r.cls.shape == (384,)
        for name in ("descriptors", "cls"):
            assert rel_err(getattr(g, name), getattr(r, name)) < 1e-4, name
    session = ort_extractor.backend.session_for(32, 48, Request(facets=((11, "key"),), cls=True))
    assert "_ort_" in session.onnx_path  # the transformer-fused graph, checked against the plain one when made
    s8 = ort_extractor.with_stride(8)
    assert s8 is ort_extractor.with_stride(8) and s8.backend_name == "onnxruntime" and s8.stride == 8
    assert s8.weights_sha256 == ort_extractor.weights_sha256
    low = s8.extract_many(image_files, layer=11, saliency=True, load_size=(16, 24))
    ref_low = extractor.with_stride(8).extract_many(image_files, layer=11, saliency=True, load_size=(16, 24))
    for g, r in zip(low, ref_low, strict=True):
        assert g.num_patches == (2, 3) and rel_err(g.saliency, r.saliency) < 1e-4


def test_pca_and_parts_match_torch(ort_extractor, extractor, image_files):
    got = dinofeat.pca(image_files, load_size=LOAD, n_components=3, extractor=ort_extractor)
    ref = dinofeat.pca(image_files, load_size=LOAD, n_components=3, extractor=extractor)
    for g, r in zip(got, ref, strict=True):
        signs = np.sign((g.components * r.components).sum(axis=(0, 1)))
        assert np.abs(g.components - r.components * signs).max() <= 1e-3 * np.abs(r.components).max()
    kw = dict(load_size=LOAD, sample_interval=SAMPLE, num_parts=2, crf="torch")
    got = dinofeat.part_cosegment(image_files, extractor=ort_extractor, **kw)
    ref = dinofeat.part_cosegment(image_files, extractor=extractor, **kw)
    for g, r in zip(got, ref, strict=True):
        assert g.num_parts == r.num_parts
        np.testing.assert_array_equal(g.grid_parts, r.grid_parts)


def test_coseg_cli_remove_outliers_on_onnxruntime(tmp_path, capsys, vits8_weights_file, image_files):
    """`dinofeat coseg IMG... --backend onnxruntime --remove-outliers -o DIR` writes its PNGs, and the masks
    equal the torch backend's."""
    saved = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        code = main(["coseg", *image_files, "-o", str(out), "--backend", backend, "--remove-outliers",
                     "--outliers-thresh", "0.5", "--sample-interval", str(SAMPLE), "--weights",
                     str(vits8_weights_file), "--load-size", str(LOAD), "--device", "cpu", "-q",
                     "--save", str(tmp_path / f"{backend}.npz")])
        text, err = capsys.readouterr()
        assert code == 0, (text, err)
        assert {p.name for p in out.iterdir()} >= {"a_coseg.png", "a_mask.png", "a_mirror_coseg.png",
                                                   "a_mirror_mask.png"}
        assert Image.open(out / "a_mask.png").size == (48, 32)
        with np.load(tmp_path / f"{backend}.npz") as z:
            saved[backend] = {k: z[k] for k in z.files}
    assert saved["onnxruntime"].keys() == saved["torch"].keys()
    for key, value in saved["torch"].items():
        if key.startswith(("mask", "grid_mask", "labels", "inlier")):
            np.testing.assert_array_equal(saved["onnxruntime"][key], value, err_msg=key)
