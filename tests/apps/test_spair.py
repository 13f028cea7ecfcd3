"""PCK evaluation on a tiny synthetic data set written in SPair-71k's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dinofeat.apps.spair import evaluate_spair
from dinofeat.cli import main
from dinofeat.errors import InputError

# (x, y) keypoints well inside the 48x40 images
KPS = [[10.0, 8.0], [30.0, 20.0], [20.0, 30.0], [38.0, 12.0]]


def _pair(cat, src, trg, src_kps, trg_kps, bbox=(0, 0, 48, 40)):
    return {"category": cat, "src_imname": src, "trg_imname": trg, "src_kps": src_kps, "trg_kps": trg_kps,
            "src_bndbox": list(bbox), "trg_bndbox": list(bbox), "src_imsize": [48, 40, 3], "trg_imsize": [48, 40, 3]}


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory):
    """Two categories; pairs of an image with itself, so nearest neighbours are exact, with some target
    annotations moved 20 px away (counted wrong), one pair naming a missing image."""
    root = tmp_path_factory.mktemp("SPair-71k")
    rng = np.random.default_rng(0)
    pairs = {}
    for cat in ("bird", "car"):
        (root / "JPEGImages" / cat).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                root / "JPEGImages" / cat / f"{cat}{i}.jpg", quality=95)
    moved = [[x + 20 if x < 24 else x - 20, y] for x, y in KPS]
    pairs["000001-bird0-bird0:bird"] = _pair("bird", "bird0.jpg", "bird0.jpg", KPS, KPS)  # 4 / 4
    pairs["000002-bird1-bird1:bird"] = _pair("bird", "bird1.jpg", "bird1.jpg", KPS, KPS[:2] + moved[2:])  # 2 / 4
    pairs["000003-car0-car0:car"] = _pair("car", "car0.jpg", "car0.jpg", KPS[:2], moved[:1] + KPS[1:2])  # 1 / 2
    pairs["000004-car1-gone:car"] = _pair("car", "car1.jpg", "gone.jpg", KPS, KPS)  # missing image: an error
    ann = root / "PairAnnotation" / "test"
    ann.mkdir(parents=True)
    for name, pair in pairs.items():
        (ann / f"{name}.json").write_text(json.dumps(pair))
    return root


def test_pck_counts_and_errors(spair_root, extractor):
    res = evaluate_spair(spair_root, load_size=32, extractor=extractor)
    assert res.num_keypoints == {"bird": 8, "car": 2} and res.num_pairs == {"bird": 2, "car": 1}
    assert res.per_category == {"bird": 6 / 8, "car": 1 / 2}
    assert res.mean == pytest.approx((6 / 8 + 1 / 2) / 2)
    assert len(res.errors) == 1 and res.errors[0][0].startswith("000004") and "gone.jpg" in res.errors[0][1]
    assert res.settings["layer"] == 9 and res.settings["bin"] is True and res.settings["stride"] == 4
    # bounding-box normalisation: a 2-px box makes alpha * 2 = 0.2 px, which the window centres miss
    small = evaluate_spair(spair_root, categories=["bird"], load_size=32, extractor=extractor, normalize="bbox",
                           pairs_per_category=1, seed=3)
    assert small.num_pairs == {"bird": 1} and small.per_category["bird"] <= 1.0
    with pytest.raises(InputError, match="categories"):
        evaluate_spair(spair_root, categories=["dog"], extractor=extractor)


def test_sampling_is_seeded(spair_root):
    from dinofeat.apps.spair import spair_pairs

    a = spair_pairs(spair_root, pairs_per_category=1, seed=5)
    b = spair_pairs(spair_root, pairs_per_category=1, seed=5)
    assert [p.name for p in a["bird"]] == [p.name for p in b["bird"]]
    assert {len(v) for v in spair_pairs(spair_root, pairs_per_category=20, seed=0).values()} == {2}


def test_eval_cli(spair_root, tmp_path, capsys, vits8_weights_file):
    out = tmp_path / "pck.json"
    code = main(["eval", "spair", "--root", str(spair_root), "--weights", str(vits8_weights_file), "--load-size",
                 "32", "--categories", "bird", "--json", str(out), "-q", "--backend", "torch", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and "bird" in text and "75.00" in text
    assert json.loads(out.read_text())["per_category"] == {"bird": 0.75}
    code = main(["eval", "spair", "--root", str(tmp_path / "nope"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "JPEGImages" in err and len(err.strip().splitlines()) == 1


def test_eval_keypoints_spair_layout_agrees(spair_root, extractor):
    """`eval keypoints --layout spair` reads the same pairs and scores them with the same transfer and PCK."""
    from dinofeat.apps.keypoints import evaluate_keypoints

    res = evaluate_keypoints(spair_root, "spair", extractor=extractor, load_size=32, pck_ref="image")
    assert res.per_class == {"bird": 6 / 8, "car": 1 / 2} and res.num_pairs == {"bird": 2, "car": 1}
    assert len(res.errors) == 1 and "gone.jpg" in res.errors[0][1]
    assert evaluate_keypoints(spair_root, "spair", extractor=extractor, load_size=32).pck_ref == "bbox"
