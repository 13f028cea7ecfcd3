"""`Extractor.extract_many` (the one grouping / batching / forwarding loop), the CLS output and `with_stride`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from testutil import EXAMPLES, rel_err

import dinofeat
from dinofeat.engine.many import ImageFailure
from dinofeat.errors import InputError

LOAD = 32  # img_a: 48x32, img_b: 32x32


@pytest.fixture(scope="module")
def images():
    a = Image.open(EXAMPLES / "img_a.png").convert("RGB")
    b = Image.open(EXAMPLES / "img_b.png").convert("RGB")
    return [a, b, a.transpose(Image.FLIP_LEFT_RIGHT), str(EXAMPLES / "img_b.png")]


def test_equals_one_extract_per_image_in_input_order(extractor, images):
    calls = []
    got = extractor.extract_many(images, layer=[5, 11], facet="key", bin=True, saliency=True, cls=True,
                                 load_size=LOAD, batch_size=8, on_forward=lambda idx, s: calls.append(idx))
    assert calls == [[0, 2], [1, 3]]  # one forward per preprocessed size, in order of first appearance
    for img, f in zip(images, got, strict=True):
        batch, pil = extractor.preprocess(img, LOAD)
        ref = extractor.extract(batch, layer=[5, 11], facet="key", bin=True, saliency=True, cls=True)
        assert f.image.size == pil.size and f.load_size == ref.load_size and f.num_patches == ref.num_patches
        assert f.descriptors.shape[0] == 1 and f.cls.shape == (1, 2 * 384)
        for name in ("descriptors", "saliency", "cls"):  # batched vs single: float32 summation order only
            assert rel_err(getattr(f, name), getattr(ref, name)) < 1e-5, name
        assert all(rel_err(f.per_layer[k], ref.per_layer[k]) < 1e-5 for k in (5, 11))
    pair = torch.cat([extractor.preprocess(images[i], LOAD)[0] for i in (0, 2)])  # the same forward: bit-equal
    ref = extractor.extract(pair, layer=[5, 11], facet="key", bin=True, saliency=True, cls=True)
    for b, i in enumerate((0, 2)):
        for name in ("descriptors", "saliency", "cls"):
            assert torch.equal(getattr(got[i], name), getattr(ref, name)[b:b + 1]), name


def test_batch_size_preprocessed_items_and_defaults(extractor, images):
    calls = []
    prepared = [extractor.preprocess(img, LOAD) for img in images]
    got = extractor.extract_many(prepared, layer=11, load_size=None, batch_size=1,
                                 on_forward=lambda idx, s: calls.append(idx))
    assert calls == [[0], [2], [1], [3]]
    assert all(f.cls is None and f.saliency is None for f in got)
    assert torch.equal(got[0].descriptors, extractor.extract(prepared[0][0], layer=11).descriptors)  # B = 1
    assert extractor.extract_many([], layer=11) == []


def test_one_bad_image_is_that_images_failure(extractor, images):
    nan = (torch.full((1, 3, 32, 32), float("nan")), None)
    items = [images[1], str(EXAMPLES / "missing.png"), nan, images[3]]
    with pytest.raises(InputError, match="missing.png"):
        extractor.extract_many(items, layer=11, load_size=LOAD)
    got = extractor.extract_many(items, layer=11, load_size=LOAD, errors="return")
    assert isinstance(got[1], ImageFailure) and got[1].stage == "preprocess" and "missing.png" in got[1].message
    assert isinstance(got[2], ImageFailure) and got[2].stage == "forward" and "NaN" in got[2].message
    ref = extractor.extract(extractor.preprocess(images[1], LOAD)[0], layer=11).descriptors
    assert torch.equal(got[0].descriptors, ref) and torch.equal(got[3].descriptors, ref)  # the batch-mates complete


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"errors": "skip"}, "errors"),
                                             ({"facet": "attn"}, "facet")])
def test_argument_errors(extractor, images, kwargs, message):
    with pytest.raises(InputError, match=message):
        extractor.extract_many(images[:1], load_size=LOAD, **kwargs)


def test_with_stride(extractor, images, vits8_weights_file):
    assert extractor.with_stride(extractor.stride) is extractor
    s8 = extractor.with_stride(8)
    assert s8 is extractor.with_stride(8) and s8.stride == 8 and s8.weights_sha256 == extractor.weights_sha256
    assert (s8.backend_name, s8.precision, s8.device) == (extractor.backend_name, extractor.precision, extractor.device)
    with pytest.raises(InputError, match="stride=3"):
        extractor.with_stride(3)
    # weights given in memory: taken from the running model, the same as an Extractor built at stride 8
    state = torch.load(vits8_weights_file, weights_only=True)
    mem = dinofeat.Extractor(model="dino_vits8", stride=4, weights=state, backend="torch", device="cpu",
                             progress=False)
    batch, _ = s8.preprocess(images[0], LOAD)
    ref = s8.extract(batch, layer=11, saliency=True, cls=True)
    got = mem.with_stride(8).extract(batch, layer=11, saliency=True, cls=True)
    for name in ("descriptors", "saliency", "cls"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
