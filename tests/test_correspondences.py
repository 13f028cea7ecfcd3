"""find_correspondences beyond the goldens: empty results, filters, coordinates, argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testutil import EXAMPLES

import dinofeat
from dinofeat.correspondences import foreground_filter, select_pairs, token_to_pixel
from dinofeat.errors import InputError


def test_threshold_above_one_gives_typed_empty_result(extractor):
    corr = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", load_size=64,
                                         thresh=1.0, extractor=extractor)
    assert corr.points1 == [] and corr.points2 == [] and len(corr) == 0
    assert corr.kmeans_labels.dtype == np.int32 and corr.kmeans_labels.shape == (0,)
    assert corr.indices1.dtype == np.int64 and corr.bbs_mask.dtype == torch.bool and not corr.bbs_mask.any()
    assert corr.mutual_mask.any()  # there were best buddies, all filtered as background
    arrays = corr.to_numpy()
    assert arrays["points1"].shape == (0, 2)


def test_fewer_best_buddies_than_pairs(extractor):
    corr = dinofeat.find_correspondences(EXAMPLES / "img_b.png", EXAMPLES / "img_b.png", load_size=32,
                                         num_pairs=1000, extractor=extractor)
    n_bb = int(corr.bbs_mask.sum())
    assert 0 < n_bb < 1000 and len(corr) == n_bb  # every surviving pair is shown
    # Identical images: every best buddy maps a patch to itself, so points coincide.
    assert corr.points1 == corr.points2


def test_foreground_filter_is_the_originals_loose_test():
    mutual = torch.tensor([True, True, True, False])
    nn_2 = torch.tensor([0, 1, 1, 3, 2])
    fg1 = torch.tensor([True, True, True, True])
    fg2 = torch.tensor([False, True, False, False, True])
    # i=0: no fg j with nn_2[j]==0 -> dropped; i=1: j=1 fg -> kept; i=2: j=4 fg -> kept; i=3 not mutual.
    assert foreground_filter(mutual, nn_2, fg1, fg2).tolist() == [False, True, True, False]


def test_selection_strict_greater_keeps_earliest_and_orders_by_label():
    scores = np.array([0.5, 0.9, 0.9, 0.1], np.float32)
    labels = np.array([1, 0, 0, 1])
    chosen, lab = select_pairs(np.zeros((4, 2)), np.zeros((4, 2)), scores, 2, labels)
    assert chosen.tolist() == [1, 0] and lab.dtype == np.int32


def test_token_to_pixel_is_window_centre():
    assert token_to_pixel(np.array([0, 1, 83, 2395]), (55, 83), 4, 8) == [(4, 4), (4, 8), (8, 4), (4 * 28 + 4, 4 * 71 + 4)]
    assert token_to_pixel(np.array([5]), (4, 4), 14, 14) == [(14 + 7, 14 + 7)]


@pytest.mark.parametrize(("kwargs", "message"), [({"num_pairs": 0}, "num_pairs=0"), ({"thresh": "high"}, "thresh='high'"),
                                                 ({"num_pairs": 2.5}, "num_pairs=2.5")])
def test_argument_errors(extractor, kwargs, message):
    with pytest.raises(InputError, match=message):
        dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", extractor=extractor, **kwargs)


def test_bad_image_path_names_the_file(extractor, tmp_path):
    with pytest.raises(InputError, match="file not found.*nope.png"):
        dinofeat.find_correspondences(tmp_path / "nope.png", EXAMPLES / "img_b.png", extractor=extractor)


def test_match_precision_bf16_is_an_option_close_to_fp32(extractor):
    kw = dict(load_size=64, extractor=extractor)
    exact = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", **kw)
    fast = dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", match_precision="bf16", **kw)
    assert (fast.nn_1 == exact.nn_1).float().mean() > 0.8
    assert not torch.equal(fast.sim_1, exact.sim_1)  # really computed in bf16
    with pytest.raises(InputError, match="precision"):
        dinofeat.find_correspondences(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png", match_precision="int4", **kw)
