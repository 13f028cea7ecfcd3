"""`dinofeat eval homography`: ground-truth readers on the real files, the metrics on a known H, identity pairs
of a real photo end to end (deterministic weights), the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from testutil import ROOT

from dinofeat.apps.homography import (
    HomographyResult,
    evaluate_homography,
    folder_pairs,
    homography_metrics,
    pooled_metrics,
    project,
    read_homography,
)
from dinofeat.cli import main
from dinofeat.errors import InputError

GRAFFITI = ROOT.parent / "shared" / "data" / "graffiti"
H13 = [[7.6285898e-01, -2.9922929e-01, 2.2567123e02], [3.3443473e-01, 1.0143901e00, -7.6999973e01],
       [3.4663091e-04, -1.4364524e-05, 1.0]]


@pytest.fixture(scope="module")
def graffiti():
    if not GRAFFITI.is_dir():
        pytest.skip(f"Oxford graffiti pair not found at {GRAFFITI} (../shared/data, see its README)")
    return GRAFFITI


def test_filestorage_and_text_readers(graffiti, tmp_path):
    assert np.array_equal(read_homography(graffiti / "H1to3p.xml"), np.array(H13))
    text = tmp_path / "H_1_2"
    text.write_text("1 0 5.5\n0 1 -2\n0 0 1\n")  # HPatches: whitespace-separated 3x3
    assert np.array_equal(read_homography(text), [[1, 0, 5.5], [0, 1, -2], [0, 0, 1]])
    (tmp_path / "bad").write_text("1 2 3\n")
    for path, needle in ((tmp_path / "bad", "3x3"), (tmp_path / "missing", "not found")):
        with pytest.raises(InputError, match=needle):
            read_homography(path)
    (tmp_path / "empty.xml").write_text('<?xml version="1.0"?>\n<opencv_storage>\n</opencv_storage>\n')
    with pytest.raises(InputError, match="no matrix"):
        read_homography(tmp_path / "empty.xml")


def test_folder_layouts(graffiti, tmp_path):
    assert folder_pairs(graffiti) == [("1_3", graffiti / "graf1.png", graffiti / "graf3.png",
                                       graffiti / "H1to3p.xml")]
    for k in (1, 2, 3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{k}.ppm")
    for k in (2, 3, 4):  # H_1_4 without 4.ppm is not a pair
        (tmp_path / f"H_1_{k}").write_text("1 0 0\n0 1 0\n0 0 1\n")
    names = [(n, a.name, b.name, h.name) for n, a, b, h in folder_pairs(tmp_path)]
    assert names == [("1_2", "1.ppm", "2.ppm", "H_1_2"), ("1_3", "1.ppm", "3.ppm", "H_1_3")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no HPatches pairs"):
        folder_pairs(tmp_path / "empty")


def test_metrics_on_a_known_homography():
    H = np.array(H13)
    rng = np.random.default_rng(0)
    p1 = rng.uniform([0, 0], [800, 640], (40, 2))
    offsets = np.zeros((40, 2))
    offsets[30:] = np.array([[0.5, 0], [0, 2], [3, 4], [6, 8], [0, 30], [60, 80], [-40, 0], [0, 700], [2, 0],
                             [0, -12]])  # errors 0.5, 2, 5, 10, 30, 100, 40, 700, 2, 12
    p2 = project(H, p1) + offsets
    m, err, H_est = homography_metrics(p1, p2, H, (640, 800), (640, 800))
    assert err[30:] == pytest.approx([0.5, 2, 5, 10, 30, 100, 40, 700, 2, 12]) and err[:30].max() < 1e-9
    assert m["num_matches"] == 40
    assert m["within_px"] == {"1": 31 / 40, "3": 33 / 40, "5": 34 / 40, "10": 35 / 40}
    diag = np.hypot(640, 800)  # 1024.5: 1% 10.2 px, 5% 51.2 px, 10% 102.4 px
    assert diag == pytest.approx(1024.5, abs=0.1)
    assert m["within_diag"] == {"0.01": 35 / 40, "0.05": 38 / 40, "0.1": 39 / 40}
    assert m["median_px"] == 0.0 or m["median_px"] < 1e-9
    # inliers at 3 px: the 30 exact ones and the 0.5, 2 and 2 px ones; the refit on them moves corners < 1 px
    assert m["ransac_corner_error_px"] < 1.0 and m["ransac_inliers"] == 33
    empty, err0, none = homography_metrics(np.zeros((0, 2)), np.zeros((0, 2)), H, (640, 800), (640, 800))
    assert empty["num_matches"] == 0 and empty["within_px"]["1"] is None and empty["median_px"] is None
    assert none is None and empty["ransac_corner_error_px"] is None and err0.shape == (0,)
    r = HomographyResult(metrics=m, points1=p1, points2=p2, errors=err, H=H, H_est=H_est, size1=(640, 800),
                         size2=(640, 800))
    pooled = pooled_metrics([r, r])
    assert pooled["num_matches"] == 80 and pooled["within_px"] == m["within_px"] and pooled["pairs"] == 2


@pytest.fixture(scope="module")
def photo(graffiti, tmp_path_factory):
    """A 64x52 crop of graf1 (real content) saved twice (different bytes, same pixels)."""
    d = tmp_path_factory.mktemp("photo")
    im = Image.open(graffiti / "graf1.png").convert("RGB").resize((160, 128)).crop((40, 30, 104, 82))
    im.save(d / "1.png")
    im.save(d / "2.png", compress_level=1)
    (d / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1\n")
    return d


def test_identity_pair_end_to_end(photo, extractor):
    """The same photo twice under H = I: every foreground Best Buddy is a token and itself, error 0."""
    r = evaluate_homography(photo / "1.png", photo / "2.png", photo / "H_1_2", extractor=extractor, load_size=None,
                            thresh=0.0)
    m = r.metrics
    assert m["num_matches"] > 20 and m["within_px"]["1"] == 1.0 and m["median_px"] == 0.0
    assert m["ransac_corner_error_px"] < 1e-3 and r.size1 == (52, 64)
    assert np.array_equal(r.points1, r.points2) and (r.points1 % 4 == 0).all()  # centres 4 v + 4 at stride 4


def test_eval_homography_cli(photo, tmp_path, capsys, vits8_weights_file):
    out = tmp_path / "h"
    common = ["--weights", str(vits8_weights_file), "--load-size", "48", "-q", "--backend", "torch", "--device",
              "cpu", "--thresh", "0"]
    code = main(["eval", "homography", str(photo / "1.png"), str(photo / "2.png"), str(photo / "H_1_2"),
                 "--out", str(out), *common])
    data = json.loads((out / "homography.json").read_text())
    assert code == 0 and "best buddies" in capsys.readouterr().out
    assert set(data["within_px"]) == {"1", "3", "5", "10"} and set(data["within_diag"]) == {"0.01", "0.05", "0.1"}
    assert data["num_matches"] > 0 and data["within_px"]["1"] == 1.0 and data["ransac_corner_error_px"] < 1e-2
    assert Image.open(out / "homography.png").size[0] > 100
    for argv, needle in (([str(photo / "1.png"), str(photo / "2.png"), str(photo / "1.png")], "3x3"),
                         ([str(photo / "1.png"), str(photo / "2.png")], "IMG1 IMG2 H or FOLDER")):
        code = main(["eval", "homography", *argv, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_match_views_without_selection_keeps_every_best_buddy():
    import torch

    from dinofeat.correspondences import ImageView, match_views

    g = torch.Generator().manual_seed(0)
    keys = torch.randn(20, 8, generator=g)
    sal = torch.rand(20, generator=g)
    v1 = ImageView(keys=keys, saliency=sal, num_patches=(4, 5), image=Image.new("RGB", (28, 24)))
    v2 = ImageView(keys=keys + 0.01 * torch.randn(20, 8, generator=g), saliency=sal, num_patches=(4, 5),
                   image=Image.new("RGB", (28, 24)))
    full = match_views(v1, v2, num_pairs=3, bin=False, thresh=0.2)
    bare = match_views(v1, v2, num_pairs=3, bin=False, thresh=0.2, select=False)
    assert torch.equal(full.bbs_mask, bare.bbs_mask) and torch.equal(full.nn_1, bare.nn_1)
    assert len(full) == 3 and len(bare) == 0 and bare.kmeans_labels.shape == (0,)
