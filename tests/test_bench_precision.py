"""`dinofeat bench precision` on a tiny configuration: the table's structure and the metrics' meaning (the fp32
row is the reference, bf16 moves the descriptors a little, rows that cannot run here say why). Timings and the
real-weights PCK rows are never asserted here (benchmarks/results/precision holds the measured table)."""

from __future__ import annotations

import json

import pytest
from testutil import ROOT

from dinofeat.bench.precision import run_precision_bench, willow_pairs

WILLOW = ROOT.parent / "shared" / "data" / "willow"


@pytest.fixture(scope="module")
def willow():
    if not WILLOW.is_dir():
        pytest.skip(f"../shared/data/willow is absent ({WILLOW}); the real pair set lives in the shared folder")
    return WILLOW


def test_precision_table_on_deterministic_weights(willow, tmp_path):
    rows = (("torch", "fp32"), ("torch", "bf16"), ("torch", "tf32"), ("tensorrt", "fp16"))
    doc = run_precision_bench(model="dino_vits8", stride=8, weights=None, data=willow, out=tmp_path,
                              pairs_per_class=1, load_size=48, layer=3, device="cpu", rows=rows, progress=False)
    assert json.loads((tmp_path / "precision.json").read_text()) == doc
    md = (tmp_path / "precision.md").read_text()
    assert "| torch | bf16 |" in md and "not measured: TensorRT needs an NVIDIA GPU" in md
    ref, bf16, tf32, trt = doc["rows"]
    assert ref["status"] == bf16["status"] == "measured" and ref["pairs"] == 3 and ref["images"] == 6
    assert ref["cosine_min"] > 0.99999 and ref["bb_jaccard_min"] == 1.0 and ref["saliency_max_dev"] == 0.0
    assert 0.9 < bf16["cosine_min"] < 1.0 and bf16["cosine_mean"] < 1.0 and 0 < bf16["bb_jaccard_mean"] <= 1
    assert "pck" not in bf16  # deterministic weights: no keypoint semantics, PCK not reported
    assert tf32["status"] == trt["status"] == "not measured" and "tensor-core" in tf32["reason"]


@pytest.mark.integration
def test_onnxruntime_fp16_row_runs_the_dynamic_graph(willow, tmp_path):
    """The fp16 dynamic graph on ORT's CPU EP: one session for every image size, finite, close to fp32."""
    rows = (("torch", "fp32"), ("onnxruntime", "fp16"))
    doc = run_precision_bench(model="dino_vits8", stride=8, weights=None, data=willow, out=tmp_path,
                              pairs_per_class=1, load_size=48, layer=3, device="cpu", rows=rows, progress=False)
    ort16 = doc["rows"][1]
    assert ort16["status"] == "measured" and "CPU EP" in ort16["note"] and not ort16["nan"]
    assert ort16["cosine_min"] > 0.999 and ort16["bb_jaccard_mean"] > 0.5


def test_pairs_and_errors(willow, tmp_path, capsys):
    from dinofeat.cli import main

    pairs = willow_pairs(willow, 2)
    assert len(pairs) == 6 and all(a.parent == b.parent and a != b for a, b in pairs)
    assert main(["bench", "precision", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
