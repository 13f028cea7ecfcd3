"""Extractor: API contract, facets, layers, binning, precision and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testutil import EXAMPLES, rel_err

import dinofeat
from dinofeat.errors import InputError


@pytest.fixture(scope="module")
def small_batch(extractor):
    batch, _ = extractor.preprocess(EXAMPLES / "img_b.png", load_size=64)
    return batch


def test_extract_shapes_and_layout(extractor, small_batch):
    f = extractor.extract(small_batch, layer=9, facet="key")
    assert f.num_patches == (15, 15) and f.descriptors.shape == (1, 225, 384) and f.saliency is None
    fb = extractor.extract(small_batch, layer=9, facet="key", bin=True, saliency=True)
    assert fb.descriptors.shape == (1, 225, 384 * 17)
    assert torch.equal(fb.descriptors[..., 4 * 384 : 5 * 384], f.descriptors)  # bin 4 is the centre
    assert fb.saliency.shape == (1, 225) and float(fb.saliency.min()) == 0.0 and float(fb.saliency.max()) == 1.0


def test_facets_follow_the_original_hook(extractor, small_batch):
    """query/key/value are thirds of block L's qkv(norm1(x)); token is the block output."""
    vit = extractor.backend.model
    feats = {fc: extractor.extract(small_batch, layer=3, facet=fc).descriptors for fc in ("query", "key", "value")}
    tok2 = extractor.extract(small_batch, layer=2, facet="token").descriptors
    tok3 = extractor.extract(small_batch, layer=3, facet="token").descriptors
    # Recompute layer 3's qkv from layer 2's token output (CLS re-added from a full run).
    with torch.no_grad():
        pos = vit.position_embedding(64, 64)
        x = vit.patch_embed(small_batch)
        x = torch.cat([vit.cls_token.expand(1, -1, -1), x], 1) + pos
        for blk in vit.blocks[:3]:
            x = blk(x)
        assert rel_err(x[:, 1:], tok2) < 1e-5
        qkv = vit.blocks[3].attn.qkv(vit.blocks[3].norm1(x)).reshape(1, -1, 3, 6, 64)
        for i, fc in enumerate(("query", "key", "value")):
            ref = qkv[:, 1:, i].permute(0, 1, 3, 2).reshape(1, -1, 384)  # channel d*6 + h
            assert rel_err(feats[fc], ref) < 1e-5
        assert rel_err(vit.blocks[3](x)[:, 1:], tok3) < 1e-5


def test_several_layers_concatenate(extractor, small_batch):
    f = extractor.extract(small_batch, layer=[5, 9], facet="key")
    assert f.descriptors.shape == (1, 225, 768) and set(f.per_layer) == {5, 9}
    assert torch.equal(f.descriptors[..., 384:], extractor.extract(small_batch, layer=9).descriptors)
    assert torch.equal(extractor.extract(small_batch, layer=-3).descriptors, f.per_layer[9])


def test_batch_of_two_equals_two_singles(extractor, small_batch):
    other = torch.flip(small_batch, dims=[-1])
    both = extractor.extract(torch.cat([small_batch, other]), layer=9, saliency=True)
    one = extractor.extract(other, layer=9, saliency=True)
    assert rel_err(both.descriptors[1], one.descriptors[0]) < 1e-5
    assert rel_err(both.saliency[1], one.saliency[0]) < 1e-5


def test_bf16_is_close_to_fp32(vits8_weights_file, extractor, small_batch):
    ex = dinofeat.Extractor(weights=str(vits8_weights_file), device="cpu", precision="bf16", progress=False)
    f16 = ex.extract(small_batch, layer=9).descriptors
    f32 = extractor.extract(small_batch, layer=9).descriptors
    assert f16.dtype == torch.float32
    assert 1e-5 < rel_err(f16, f32) < 0.1  # really ran in bf16, and still close


def test_non_square_stride_and_size(vits8_weights_file):
    ex = dinofeat.Extractor(stride=8, weights=str(vits8_weights_file), device="cpu", progress=False)
    batch, pil = ex.preprocess(np.zeros((50, 70, 3), np.uint8), load_size=None)
    f = ex.extract(batch, layer=11, facet="token", saliency=True)
    assert f.num_patches == (6, 8) and f.descriptors.shape == (1, 48, 384)
    assert pil.size == (70, 50)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"model": "dino_vits9"}, "not in the model zoo"), ({"stride": 3}, "must be a positive int dividing"),
     ({"stride": 0}, "must be a positive int dividing"), ({"precision": "int8"}, "precision='int8' is unknown"),
     ({"backend": "tflite"}, "backend='tflite' is unknown"), ({"device": "tpu"}, "device='tpu'"),
     ({"device": "cuda"}, "no CUDA GPU")],
)
def test_constructor_errors(vits8_weights_file, kwargs, message):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU exists here")
    with pytest.raises(InputError, match=message):
        dinofeat.Extractor(weights=str(vits8_weights_file), **{"device": "cpu", **kwargs})


def test_extract_errors(extractor, small_batch):
    with pytest.raises(InputError, match="layer=12 is out of range"):
        extractor.extract(small_batch, layer=12)
    with pytest.raises(InputError, match="facet='keys' is not supported"):
        extractor.extract(small_batch, facet="keys")
    with pytest.raises(InputError, match=r"expected shape \(B, 3, H, W\), got \(3, 64, 64\)"):
        extractor.extract(small_batch[0])
    with pytest.raises(InputError, match="call `batch, pil = ex.preprocess"):
        extractor.extract(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="smaller than the patch size 8"):
        extractor.extract(torch.zeros(1, 3, 4, 64))
    with pytest.raises(InputError, match="load_size=4"):
        extractor.preprocess(EXAMPLES / "img_b.png", load_size=4)


@pytest.mark.parametrize("model", ["dinov2_vits14_reg", "dinov3_vits16"])
def test_torch_backend_positions_follow_the_family(model):
    """The backend's cached positions (antialiased table for DINOv2 _reg, RoPE for DINOv3) equal the model's own."""
    from dinofeat.model.vit import Request
    from dinofeat.testing import deterministic_state_dict

    ex0 = dinofeat.Extractor(model=model, stride=7 if "v2" in model else 8,
                             weights=_native_weights(model, deterministic_state_dict), device="cpu", progress=False)
    vit = ex0.backend.model
    batch = torch.randn(1, 3, 70, 98, generator=torch.Generator().manual_seed(0))
    f = ex0.extract(batch, layer=[3, 11], facet="key", saliency=True)
    with torch.no_grad():
        k3, k11, sal = vit.forward_features(batch, Request(((3, "key"), (11, "key")), True))
    assert torch.equal(f.per_layer[11], k11) and torch.equal(f.per_layer[3], k3)
    assert torch.allclose(f.saliency, sal)


def _native_weights(model, rule):
    from dinofeat.model.vit import StridedViT
    from dinofeat.model.zoo import get_model_spec

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in StridedViT(get_model_spec(model)).state_dict().items()}
    return rule(shapes)


def test_default_stride_is_half_the_patch():
    """Extractor(model=...) without a stride runs the method's stride: 4 for dino_vits8, 7 for dinov2_vits14."""
    from dinofeat.testing import deterministic_weights

    ex = dinofeat.Extractor(model="dinov2_vits14", weights=deterministic_weights("dinov2_vits14"), device="cpu",
                            progress=False)
    assert ex.stride == 7
    batch = torch.zeros(1, 3, 28, 42)
    assert ex.extract(batch, layer=0, facet="key", bin=False, saliency=False).num_patches == (3, 5)
    assert dinofeat.Extractor(model="dinov2_vits14", stride=None, weights=deterministic_weights("dinov2_vits14"),
                              device="cpu", progress=False).stride == 14
