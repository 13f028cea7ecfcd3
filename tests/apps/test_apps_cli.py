"""`dinofeat pca | coseg | parts` end to end on the bundled examples (deterministic weights, tiny load size)."""

from __future__ import annotations

import numpy as np
from conftest import LOAD
from PIL import Image
from testutil import EXAMPLES

from dinofeat.cli import main

IMAGES = [str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png")]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pca_coseg_parts_cli(tmp_path, capsys, vits8_weights_file):
    common = ["--weights", str(vits8_weights_file), "--load-size", str(LOAD), "--backend", "torch", "--device",
              "cpu", "-q"]
    out_dir = tmp_path / "new" / "pca"  # created, parents too
    code, out, _ = _run(capsys, "pca", *IMAGES, "-o", str(out_dir), "--save", str(tmp_path / "pca.npz"), *common)
    assert code == 0, out
    assert Image.open(out_dir / "img_a_pca_rgb.png").size == (48, 32)
    assert {p.name for p in out_dir.iterdir()} == {f"img_{x}_pca_{c}.png" for x in "ab" for c in ("0", "1", "2", "3",
                                                                                                  "rgb")}
    with np.load(tmp_path / "pca.npz") as z:
        assert z["components_0"].shape == (7, 11, 4) and z["components_1"].shape == (7, 7, 4)
        assert list(z["names"]) == ["img_a", "img_b"]
    code, out, _ = _run(capsys, "coseg", str(EXAMPLES), "-o", str(tmp_path / "coseg"), "--sample-interval", "4",
                        "--save", str(tmp_path / "coseg.npz"), *common)
    assert code == 0, out
    assert (tmp_path / "coseg" / "img_a_coseg.png").is_file() and (tmp_path / "coseg" / "img_b_mask.png").is_file()
    assert "img_a: the mask covers" in out and "img_b: the mask covers" in out, out  # coverage of every image
    with np.load(tmp_path / "coseg.npz") as z:
        assert z["mask_0"].shape == (32, 48) and z["mask_0"].dtype == bool and z["grid_mask_1"].shape == (7, 7)
    # --thresh 2: no cluster's mean saliency (in [0, 1]) can win a vote, so every image is all background
    # (a typed empty result; the original crashes in k-means there). The normal path is in test_apps.py.
    code, out, _ = _run(capsys, "parts", *IMAGES, "-o", str(tmp_path / "parts"), "--sample-interval", "4",
                        "--num-parts", "3", "--thresh", "2", "--save", str(tmp_path / "parts.npz"), *common)
    assert code == 0, out
    assert Image.open(tmp_path / "parts" / "img_b_parts.png").size == (32, 32)
    with np.load(tmp_path / "parts.npz") as z:
        assert z["parts_0"].shape == (32, 48) and (z["parts_0"] == -1).all() and (z["grid_parts_1"] == -1).all()
        assert int(z["num_parts_0"]) == 0
    assert not [p for p in tmp_path.rglob(".*")]  # atomic writes leave no temp files


def test_cli_bad_input_one_line(tmp_path, capsys, vits8_weights_file):
    code, _, err = _run(capsys, "pca", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--weights",
                        str(vits8_weights_file), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.png" in err
    code, _, err = _run(capsys, "coseg", *IMAGES, "-o", str(tmp_path / "o"), "--save", "x.txt", "-q")
    assert code == 2 and "--save" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
