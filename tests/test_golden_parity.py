"""Parity with the original implementation's outputs (shared/golden), on the deterministic weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testutil import EXAMPLES, rel_err

import dinofeat


@pytest.mark.parametrize("img", ["a", "b"])
def test_preprocess_is_bit_exact(extractor, golden, img):
    g = golden(f"golden_img_{img}_224")
    batch, pil = extractor.preprocess(EXAMPLES / f"img_{img}.png", load_size=224)
    assert tuple(pil.size) == tuple(g["pil_size_wh"])
    np.testing.assert_array_equal(batch.numpy(), g["input"])


@pytest.fixture(scope="module")
def golden_features(extractor, golden):
    """Unbinned layer-9 keys + saliency of the golden input batches of images a and b (one forward each)."""
    return {img: extractor.extract(torch.from_numpy(golden(f"golden_img_{img}_224")["input"]), layer=9, facet="key",
                                   bin=False, saliency=True) for img in ("a", "b")}


@pytest.mark.parametrize("img", ["a", "b"])
def test_keys_and_saliency_match_golden(golden_features, golden, img):
    g = golden(f"golden_img_{img}_224")
    f = golden_features[img]
    assert f.num_patches == tuple(g["num_patches"])
    assert f.load_size == tuple(g["load_size"])
    ref = g["desc_unbinned"][:, 0]
    assert f.descriptors.shape == ref.shape
    assert rel_err(f.descriptors, ref) < 1e-4
    assert rel_err(f.saliency, g["saliency"]) < 1e-4
    # The layout: channel d*6 + h of token t is head h, dim d of key token 1 + t (CLS first in the hook).
    keys = g["keys_raw_bhtd"][0]  # (6, T+1, 64)
    t, d, h = 17, 5, 3
    assert abs(float(f.descriptors[0, t, d * 6 + h]) - keys[h, 1 + t, d]) < 1e-4 * np.abs(keys).max()


@pytest.fixture(scope="module")
def pair(extractor, golden):
    return dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", num_pairs=10,
                                         load_size=224, layer=9, facet="key", bin=True, thresh=0.05,
                                         extractor=extractor)


def test_pair_stages_match_golden(pair, golden, extractor):
    g = golden("golden_pair_ab_224_t0.05")
    assert pair.num_patches1 == tuple(g["num_patches1"]) and pair.num_patches2 == tuple(g["num_patches2"])
    assert rel_err(pair.saliency1, g["saliency_map1"]) < 1e-4
    assert rel_err(pair.saliency2, g["saliency_map2"]) < 1e-4
    np.testing.assert_array_equal(pair.fg_mask1.numpy(), g["fg_mask1"])
    np.testing.assert_array_equal(pair.fg_mask2.numpy(), g["fg_mask2"])
    for mine, ref, sim_mine, sim_ref in ((pair.nn_1, g["nn_1"], pair.sim_1, g["sim_1"]),
                                         (pair.nn_2, g["nn_2"], pair.sim_2, g["sim_2"])):
        mine, sim_mine = mine.numpy(), sim_mine.numpy()
        agree = mine == ref
        assert agree.mean() >= 0.995
        assert np.all(np.abs(sim_mine[~agree] - sim_ref[~agree]) <= 1e-5)  # disagreements are near-ties
        assert rel_err(sim_mine, sim_ref) < 1e-4
    assert (pair.bbs_mask.numpy() == g["bbs_mask"]).mean() >= 0.995
    assert int(pair.bbs_mask.sum()) == int(g["bbs_mask"].sum()) == 131


def test_binned_descriptor_rows_match_golden(extractor, golden):
    """Extractor.extract(bin=True) on image b (image a's binned rows: the kernels' own tests, same code)."""
    g = golden("golden_pair_ab_224_t0.05")
    for k, img in ((2, "b"),):
        batch, _ = extractor.preprocess(EXAMPLES / f"img_{img}.png", 224)
        f = extractor.extract(batch, layer=9, facet="key", bin=True)
        assert tuple(f.descriptors.shape[1:]) == tuple(g[f"descriptors{k}_shape"])
        rows = f.descriptors[0, g[f"descriptors{k}_rows"]].numpy()
        assert rel_err(rows, g[f"descriptors{k}_sampled"]) < 1e-4


@pytest.fixture(scope="module")
def views(extractor, golden_features):
    """The pair's extracted data as `match_views` takes it: the golden inputs' features (the golden inputs are
    bit-exactly what `preprocess` gives, test_preprocess_is_bit_exact) with the resized images."""
    from dinofeat.correspondences import view_of

    return [view_of(golden_features[k], 0, 9, extractor.preprocess(EXAMPLES / f"img_{k}.png", 224)[1])
            for k in ("a", "b")]


@pytest.mark.parametrize("name", ["golden_pair_ab_224_t0.05", "golden_pair_ab_224_t-1"])
def test_points_given_golden_kmeans_labels(views, golden, name):
    """The per-pair step `find_correspondences` runs (`match_views`), given the golden k-means labels."""
    from dinofeat.correspondences import match_views

    g = golden(name)
    thresh = 0.05 if name.endswith("0.05") else -1.0
    corr = match_views(*views, num_pairs=10, thresh=thresh, kmeans_labels=g["kmeans_labels"])
    np.testing.assert_array_equal(corr.bbs_mask.numpy(), g["bbs_mask"])
    np.testing.assert_array_equal(corr.indices1, g["indices_to_show"])
    assert corr.points1 == [tuple(map(int, p)) for p in g["points1_yx"]]
    assert corr.points2 == [tuple(map(int, p)) for p in g["points2_yx"]]
    assert all(isinstance(v, int) for p in corr.points1 + corr.points2 for v in p)


def test_kmeans_runs_like_the_original(pair, golden):
    """Our own k-means (scikit-learn, random_state=0) on our descriptors: same labels as the golden run when
    the installed scikit-learn has the golden's defaults (n_init='auto', lloyd)."""
    g = golden("golden_pair_ab_224_t0.05")
    assert pair.kmeans_labels.shape == g["kmeans_labels"].shape
    assert len(pair.points1) == len(pair.points2) == 10
    same = (pair.kmeans_labels == g["kmeans_labels"]).mean()
    assert same >= 0.99, f"k-means labels differ from the golden run on {1 - same:.1%} of pairs"
    assert pair.points1 == [tuple(map(int, p)) for p in g["points1_yx"]]
