"""`dinofeat eval keypoints`: PCK arithmetic, the exact transfer geometry, the json / WILLOW readers, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from testutil import EXAMPLES, ROOT

from dinofeat.apps.keypoints import (
    ImageFeat,
    chance_hits,
    evaluate_keypoints,
    evaluate_pairs,
    keypoint_tokens,
    pck_correct,
    pck_size,
    token_centres,
)
from dinofeat.apps.kp_data import KeypointPair, load_keypoint_pairs, read_willow
from dinofeat.cli import main
from dinofeat.errors import InputError

WILLOW = ROOT.parent / "shared" / "data" / "willow"


def _pair(src_kps, trg_kps, trg_all=None, bbox=None, src="s", trg="t", cls="c"):
    src_kps, trg_kps = np.asarray(src_kps, float), np.asarray(trg_kps, float)
    return KeypointPair(cls=cls, name=f"{src}->{trg}", src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
                        trg_all=trg_kps if trg_all is None else np.asarray(trg_all, float), trg_bbox=bbox)


def test_pck_arithmetic():
    p = _pair([[0, 0]] * 3, [[10, 20], [50, 20], [30, 80]], bbox=(0, 0, 40, 100))
    assert pck_size(p, "kpbox", (300, 400)) == 60.0  # x extent 40, y extent 60
    assert pck_size(p, "bbox", (300, 400)) == 100.0
    assert pck_size(p, "image", (300, 400)) == 400.0
    with pytest.raises(InputError, match="pck-ref bbox"):
        pck_size(_pair([[0, 0]], [[1, 1]]), "bbox", (10, 10))
    pred = np.array([[10, 26], [50, 27], [30, 80]], float)  # errors 6, 7, 0
    assert pck_correct(pred, p.trg_kps, 0.1, 60.0).tolist() == [True, False, True]
    assert pck_correct(pred, p.trg_kps, 0.1, 70.0).tolist() == [True, True, True]  # <= is inclusive
    centres = np.array([[0, 0], [3, 4], [10, 0], [0, 30]], float)
    # distances from (0, 0): 0, 5, 10, 30 -> 3 of 4 within 10; from (10, 0): 10, ~8.06, 0, ~31.6 -> 3 of 4
    assert chance_hits(np.array([[0, 0], [10, 0]], float), centres, 0.1, 100.0) == pytest.approx(1.5)


@pytest.mark.parametrize("stride", [7, 14])
def test_window_centres_round_trip_non_square(stride):
    grid, scale, patch = (5, 9), (224 / 333.0, 161 / 241.0), 14
    tokens = np.arange(grid[0] * grid[1])
    centres = token_centres(tokens, scale, grid, stride, patch)
    assert np.array_equal(keypoint_tokens(centres, scale, grid, stride, patch), tokens)
    t = 2 * grid[1] + 3  # row 2, col 3
    assert centres[t] == pytest.approx([(3 * stride + 7) / scale[0], (2 * stride + 7) / scale[1]])
    # a point a third of a stride off a centre still goes to that token; far outside the grid clamps
    off = centres + np.array([stride / 3 / scale[0], -stride / 3 / scale[1]])
    assert np.array_equal(keypoint_tokens(off, scale, grid, stride, patch), tokens)
    far = keypoint_tokens(np.array([[-500.0, -500.0], [1e5, 1e5]]), scale, grid, stride, patch)
    assert far.tolist() == [0, grid[0] * grid[1] - 1]


def test_transfer_finds_a_shifted_copy_exactly():
    """Target descriptors are the source's moved one column right: each keypoint's prediction is the window centre
    one stride (in original pixels) to the right of the source's, whatever the scales of the two images."""
    g = torch.Generator().manual_seed(0)
    grid, stride, patch = (4, 6), 7, 14
    src = torch.randn(grid[0] * grid[1], 16, generator=g)
    trg = torch.randn(grid[0] * grid[1], 16, generator=g)
    trg.view(grid[0], grid[1], 16)[:, 1:] = src.view(grid[0], grid[1], 16)[:, :-1]
    feats = {"s": ImageFeat(src, grid, (0.5, 0.5), (100, 120)), "t": ImageFeat(trg, grid, (0.25, 0.4), (160, 240))}
    src_tokens = np.array([0, 7, 14, 22])  # columns 0, 1, 2, 4
    kps = token_centres(src_tokens, (0.5, 0.5), grid, stride, patch)
    truth = token_centres(src_tokens + 1, (0.25, 0.4), grid, stride, patch)
    wrong = truth + [[0, 0], [0, 0], [100, 0], [0, 100]]
    pairs = {"c": [_pair(kps, truth), _pair(kps, wrong)]}
    res = evaluate_pairs(pairs, feats.__getitem__, stride=stride, patch=patch, alpha=0.1, pck_ref="image",
                         bin=False)
    assert res.per_class == {"c": 6 / 8} and res.num_keypoints == {"c": 8} and res.num_pairs == {"c": 2}
    assert np.allclose(res.samples[0]["pred"], truth) and res.samples[1]["correct"].tolist() == [1, 1, 0, 0]
    t = feats["t"]
    every = token_centres(np.arange(24), t.scale, grid, stride, patch)
    assert res.chance == pytest.approx((chance_hits(truth, every, 0.1, 240) + chance_hits(wrong, every, 0.1, 240))
                                       / 8)


@pytest.fixture(scope="module")
def json_root(tmp_path_factory):
    """A non-square photo and a byte-different copy of it (same pixels) in the json layout, keypoints anywhere."""
    root = tmp_path_factory.mktemp("kp_json")
    im = Image.open(EXAMPLES / "img_a.png").convert("RGB").resize((61, 45))
    im.save(root / "a.png")
    im.save(root / "b.png", compress_level=1)
    kps = {"p0": [3.2, 4.9], "p1": [30.0, 22.5], "p2": [50.0, 36.0], "p3": [12.0, 38.0]}
    data = {"images": [{"file": "a.png", "class": "photo", "keypoints": kps},
                       {"file": "b.png", "class": "photo", "keypoints": {**kps, "only_b": [1, 1]}}]}
    (root / "keypoints.json").write_text(json.dumps(data))
    return root


def test_json_layout_identity_pairs_are_exact(json_root, extractor):
    """A pair of identical images: every nearest neighbour is the keypoint's own token, so the prediction is the
    nearest window centre mapped back to original pixels, and features are computed once per image."""
    res = evaluate_keypoints(json_root, "json", extractor=extractor, load_size=32, bin=True, pck_ref="image")
    assert res.num_pairs == {"photo": 2} and res.num_keypoints == {"photo": 8} and res.settings["forwards"] == 2
    s = res.samples[0]
    scale = (43 / 61, 32 / 45)  # 61x45 -> 43x32 (shorter side 32)
    grid = (1 + (32 - 8) // 4, 1 + (43 - 8) // 4)
    expected = token_centres(keypoint_tokens(s["src_kps"], scale, grid, 4, 8), scale, grid, 4, 8)
    assert np.allclose(s["pred"], expected)
    assert (np.abs(s["pred"] - s["trg_kps"]) <= np.array([2, 2]) / scale + 1e-9).all()  # within half a stride
    assert res.per_class == {"photo": 1.0} and 0 < res.chance < 1
    strict = evaluate_keypoints(json_root, "json", extractor=extractor, load_size=32, alpha=0.001)
    assert strict.pck_ref == "kpbox" and strict.per_class["photo"] < 1.0


def test_eval_keypoints_cli(json_root, tmp_path, capsys, vits8_weights_file):
    out = tmp_path / "res"
    code = main(["eval", "keypoints", str(json_root), "--layout", "json", "--out", str(out), "--weights",
                 str(vits8_weights_file), "--load-size", "32", "--pck-ref", "image", "-q", "--backend", "torch",
                 "--device", "cpu"])
    text = capsys.readouterr().out
    data = json.loads((out / "pck.json").read_text())
    assert code == 0 and "| photo | 2 | 8 | 100.00 |" in text
    assert data["per_class"] == {"photo": 1.0} and data["mean"] == 1.0 and data["alpha"] == 0.1
    assert data["pck_ref"] == "image" and data["pairs"] == 2
    assert "| mean |" in (out / "pck.md").read_text()
    assert Image.open(out / "pck_samples.png").size[1] > 32
    for argv, needle in ((["--layout", "json", "--pck-ref", "bbox"], "no object boxes"),
                         (["--layout", "willow"], "WILLOW"), (["--layout", "spair"], "JPEGImages"),
                         (["--layout", "json", "--alpha", "-1"], "--alpha")):
        code = main(["eval", "keypoints", str(json_root if "json" in argv else tmp_path), *argv, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_json_reader_errors(tmp_path):
    with pytest.raises(InputError, match="keypoints.json"):
        load_keypoint_pairs(tmp_path, "json")
    (tmp_path / "keypoints.json").write_text(json.dumps({"images": [{"file": "a.png", "keypoints": {"x": [1]}}]}))
    with pytest.raises(InputError, match=r"\[x, y\]"):
        load_keypoint_pairs(tmp_path, "json")
    with pytest.raises(InputError, match="layout"):
        load_keypoint_pairs(tmp_path, "pascal")


def test_willow_reader_on_the_real_files():
    if not WILLOW.is_dir():
        pytest.skip(f"WILLOW-ObjectClass not found at {WILLOW} (../shared/data, see its README)")
    images = read_willow(WILLOW)
    assert {c: len(v) for c, v in images.items()} == {"Car": 40, "Duck": 50, "Winebottle": 66}
    first = images["Car"][0]
    with Image.open(first.path) as im:
        w, h = im.size
    kps = np.array(list(first.keypoints.values()))
    assert kps.shape == (10, 2) and (kps >= 0).all() and (kps[:, 0] <= w).all() and (kps[:, 1] <= h).all()
    every = load_keypoint_pairs(WILLOW, "willow", ["Car"])
    assert len(every["Car"]) == 40 * 39 and every["Car"][0].src_kps.shape == (10, 2)
    a = load_keypoint_pairs(WILLOW, "willow", pairs_per_class=5, seed=3)
    b = load_keypoint_pairs(WILLOW, "willow", pairs_per_class=5, seed=3)
    assert [p.name for v in a.values() for p in v] == [p.name for v in b.values() for p in v]
    assert {c: len(v) for c, v in a.items()} == {"Car": 5, "Duck": 5, "Winebottle": 5}
    assert all(p.src != p.trg for v in a.values() for p in v)
    with pytest.raises(InputError, match="--classes: Dog"):
        load_keypoint_pairs(WILLOW, "willow", ["Dog"])
