"""The batch forms of `dinofeat match`: Parquet rows, exit codes 0/1/2, resume, all-pairs, one to many."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from testutil import EXAMPLES

from dinofeat.cli import main
from dinofeat.pipeline.results import COLUMNS, RESULT_SCHEMA


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A folder of three small images (two sizes) and a non-image file."""
    d = tmp_path_factory.mktemp("gallery")
    arr = np.asarray(Image.open(EXAMPLES / "img_a.png").convert("RGB"))
    Image.fromarray(arr[:120, :120]).save(d / "c1.png")
    Image.fromarray(arr[150:270, 100:220]).save(d / "c2.png")
    Image.fromarray(arr[:90, :150]).save(d / "c3.jpg")
    (d / "notes.txt").write_text("not an image")
    return d


def _common(weights):
    return ["--weights", str(weights), "--backend", "torch", "--device", "cpu", "--load-size", "32",
            "--num-pairs", "3", "-q"]


def test_pairs_csv_errors_then_resume(tmp_path, gallery, vits8_weights_file, capsys):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("c1.png", "c2.png"):
        shutil.copy(gallery / name, work / name)
    csv = work / "pairs.csv"
    csv.write_text(f"image1,image2\nc1.png,c2.png\nc2.png,late.png\n{gallery / 'c3.jpg'},c1.png\nc1.png,c2.png\n")
    out, draw = tmp_path / "r.parquet", tmp_path / "draw"
    cache = tmp_path / "cache"
    args = ["match", "--pairs", str(csv), "--out", str(out), "--cache-dir", str(cache), *_common(vits8_weights_file)]
    proc = subprocess.run([sys.executable, "-m", "dinofeat", *args, "--draw", str(draw)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "3 pairs: 2 succeeded (0 kept from before), 1 failed" in proc.stdout
    # 5 images of the 3 pairs (late.png is missing): c1, c2, c3 through the ViT once each, c1 and c2 reused
    assert "3 images through the ViT; feature store: 2 hits (0 from disk), 3 misses" in proc.stdout, proc.stdout
    table = pq.read_table(out)
    assert table.schema.names == list(COLUMNS) and table.schema.equals(RESULT_SCHEMA)
    rows = table.to_pylist()
    assert [(r["image1"], r["image2"]) for r in rows] == [("c1.png", "c2.png"), ("c2.png", "late.png"),
                                                          (str(gallery / "c3.jpg"), "c1.png")]
    ok, bad = rows[0], rows[1]
    assert bad["error"].startswith("image2: file not found") and bad["points1"] is None
    assert ok["error"] is None and len(ok["points1"]) == len(ok["points2"]) == len(ok["similarities"]) > 0
    assert all(len(p) == 2 for p in ok["points1"]) and ok["num_best_buddies"] >= len(ok["points1"])
    assert all(-1 <= s <= 1 for s in ok["similarities"]) and ok["seconds"] > 0
    assert len(list(draw.glob("*.png"))) == 2
    # the missing image appears; --resume keeps the two good rows and redoes only the failed pair
    Image.open(gallery / "c2.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(work / "late.png")
    assert main(["match", *args[1:], "--resume"]) == 0
    text = capsys.readouterr().out
    assert "3 pairs: 3 succeeded (2 kept from before), 0 failed" in text
    # only late.png: c2.png comes from the feature store on disk
    assert "1 images through the ViT; feature store: 1 hits (1 from disk), 1 misses" in text, text
    rows2 = pq.read_table(out).to_pylist()
    assert len(rows2) == 3 and all(r["error"] is None for r in rows2)
    assert {(r["image1"], r["image2"]) for r in rows2} == {(r["image1"], r["image2"]) for r in rows}
    assert rows2[0] == ok  # kept as it was
    assert main(["match", *args[1:], "--resume"]) == 0  # nothing left to do
    assert "0 images through the ViT" in capsys.readouterr().out


def test_all_pairs_and_one_to_many(tmp_path, gallery, vits8_weights_file, capsys):
    out = tmp_path / "all.parquet"
    assert main(["match", str(gallery), "--all-pairs", "--out", str(out), *_common(vits8_weights_file)]) == 0
    rows = pq.read_table(out).to_pylist()
    names = [str(gallery / n) for n in ("c1.png", "c2.png", "c3.jpg")]
    assert [(r["image1"], r["image2"]) for r in rows] == [(names[0], names[1]), (names[0], names[2]),
                                                          (names[1], names[2])]
    one = tmp_path / "one.parquet"
    query = str(EXAMPLES / "img_b.png")
    assert main(["match", query, str(gallery), "--out", str(one), *_common(vits8_weights_file)]) == 0
    rows = pq.read_table(one).to_pylist()
    assert [(r["image1"], r["image2"]) for r in rows] == [(query, n) for n in names]
    assert all(r["error"] is None and r["points1"] for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--pairs", "nope.csv", "--out", "r.parquet"], "--pairs: file not found"),
     (["--pairs", "{csv}", "--out", "r.csv"], "expected a file ending in .parquet"),
     (["--pairs", "{bad_csv}", "--out", "r.parquet"], "line 1: expected two image paths"),
     (["{gallery}", "--all-pairs"], "expected a file ending in .parquet"),
     (["{gallery}/c1.png", "--all-pairs", "--out", "r.parquet"], "not a directory"),
     (["--pairs", "{csv}", "--out", "r.parquet", "--batch-size", "0"], "--batch-size 0: expected"),
     (["{gallery}/c1.png", "{gallery}/c2.png", "--resume"], "--out/--resume: only with")],
)
def test_bad_arguments_exit_2(tmp_path, gallery, vits8_weights_file, capsys, args, message):
    csv, bad_csv = tmp_path / "p.csv", tmp_path / "bad.csv"
    csv.write_text(f"{gallery / 'c1.png'},{gallery / 'c2.png'}\n")
    bad_csv.write_text("a.png,b.png,c.png\n")
    args = [a.format(csv=csv, bad_csv=bad_csv, gallery=gallery) for a in args]
    assert main(["match", *args, *_common(vits8_weights_file)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
