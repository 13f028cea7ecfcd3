"""Functional smoke tests of the benchmarks (tiny sizes): structure of the outputs, and the baseline agrees with
dinofeat numerically. Timings are never asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from testutil import EXAMPLES

import dinofeat
from dinofeat.testing import deterministic_weights

pytest.importorskip("benchmarks")
from benchmarks import baseline as BL  # noqa: E402

A, B = str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png")


@pytest.fixture(scope="module")
def weights():
    return deterministic_weights("dino_vits8")


@pytest.fixture(scope="module")
def original(weights):
    return BL.OriginalExtractor(weights, stride=4)


@pytest.fixture(scope="module")
def engine(weights):
    return dinofeat.Extractor(model="dino_vits8", stride=4, weights=weights, backend="torch", device="cpu",
                              progress=False)


def test_baseline_equals_dinofeat_on_a_tiny_pair(original, engine):
    """The whole original pipeline (full per-row loop) vs dinofeat: same descriptors, saliency, matches, points."""
    res = BL.find_correspondences(original, A, B, num_pairs=5, load_size=40, sim_rows=None)
    corr = dinofeat.find_correspondences(A, B, num_pairs=5, load_size=40, extractor=engine)
    f1 = engine.extract(engine.preprocess(A, 40)[0], layer=9, facet="key", bin=True, saliency=True)
    f2 = engine.extract(engine.preprocess(B, 40)[0], layer=9, facet="key", bin=True, saliency=True)
    d1, d2 = res["descriptors1"][0, 0], res["descriptors2"][0, 0]
    assert not d1.is_contiguous()  # the original's permuted view, as the loop reads it
    assert d1.shape == f1.descriptors[0].shape == (res["num_patches1"][0] * res["num_patches1"][1], 384 * 17)
    for got, want in ((d1, f1.descriptors[0]), (d2, f2.descriptors[0])):
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert float((res["saliency_map1"] - corr.saliency1).abs().max()) < 1e-5
    assert float((res["saliency_map2"] - corr.saliency2).abs().max()) < 1e-5
    assert float((res["sim_1"] - corr.sim_1).abs().max()) < 1e-5
    assert torch.equal(res["nn_1"], corr.nn_1) and torch.equal(res["nn_2"], corr.nn_2)
    assert torch.equal(res["bbs_mask"], corr.bbs_mask)
    assert res["points1"] == corr.points1 and res["points2"] == corr.points2
    assert res["similarity"]["full"] and res["similarity"]["scale"] == 1.0
    stages = BL.stage_times(res)
    assert set(stages) == {"preprocess", "forward", "log_bin", "best_buddies", "fg_filter_selection", "end_to_end"}
    assert stages["end_to_end"] == pytest.approx(sum(v for k, v in stages.items() if k != "end_to_end"))


def test_baseline_log_bin_loop_equals_the_kernel(original, engine):
    batch, _ = original.preprocess(A, 32)
    loop = original.extract_descriptors(batch, layer=9, facet="key", bin=True)[0, 0]
    raw = original.extract_descriptors(batch, layer=9, facet="key", bin=False)[0]
    fast = dinofeat.kernels.log_bin(raw, original.num_patches, impl="reference")[0]
    assert torch.equal(loop, fast)


def test_baseline_row_subset_is_scaled_to_all_rows(original):
    res = BL.find_correspondences(original, A, B, num_pairs=3, load_size=32, sim_rows=8)
    sim = res["similarity"]
    t1 = res["num_patches1"][0] * res["num_patches1"][1]
    assert sim["rows_measured"] == 8 and sim["rows_total"] == t1 and not sim["full"]
    assert sim["scale"] == pytest.approx(t1 / 8)
    assert sim["extrapolated_s"] == pytest.approx(sim["measured_s"] * t1 / 8)
    assert res["steps"]["similarity_loop"] == pytest.approx(sim["extrapolated_s"])
    assert sim["sampled_rows_argmax_equal_stand_in"] and sim["sampled_rows_max_abs_diff_vs_stand_in"] < 1e-5
    assert BL.sample_rows(t1, 8)[0] == 0 and BL.sample_rows(t1, 8)[-1] == t1 - 1


def _bench_args(tmp_path, *extra):
    from dinofeat.cli.bench import add_bench_arguments

    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    return p.parse_args(["--quick", "--no-kernel-bench", "--out", str(tmp_path), "--tag", "smoke", "-q",
                         "--threads", "1", *extra])


def test_runner_writes_json_markdown_and_plots(tmp_path):
    from dinofeat.bench import runner

    args = _bench_args(tmp_path)
    cfg = runner.config_from_args(args)
    # smaller than --quick: two tiny sizes, one matrix size, no ONNX export (it is tested elsewhere)
    cfg.sizes, cfg.batch_at, cfg.matrix_sizes, cfg.e2e_sizes, cfg.baseline_size = [24, 32], [24], [24], [24], 24
    cfg.backends = ["onnxruntime-cuda", "onnxruntime-trt", "tensorrt"]
    cfg.repeat, cfg.warmup, cfg.full_gc = 1, 1, False
    cfg.floor_shapes, cfg.floor_copy_bytes = [(128, 384, 256)], 4 << 20  # the real floor is ~400 GFLOP of GEMMs
    threads = torch.get_num_threads()
    try:
        result = runner.run(cfg)
    finally:
        torch.set_num_threads(threads)
    paths = runner.write_outputs(result, cfg)
    data = json.loads(open(paths["json"]).read())
    for key in ("schema", "command", "config", "environment", "machine", "model", "images", "floor", "cases",
                "skipped", "baseline", "paper_setting", "scaling", "precision_agreement", "wall_s"):
        assert key in data, key
    assert data["model"]["weights_sha256"] and data["environment"]["torch"] == torch.__version__
    assert data["floor"]["gemm"]["fp32"]["rate_flops"] > 0 and data["floor"]["gemm"]["bf16"]["rate_flops"] > 0
    cases = data["cases"]
    for c in cases:
        t = c["time"]
        assert t["n"] >= 1 and t["median_s"] > 0 and t["p90_s"] >= t["min_s"], c
    for size in (24, 32):
        for precision in ("fp32", "bf16"):
            stages = {c["stage"] for c in cases if c["kind"] == "stage" and c["size"] == size
                      and c["precision"] == precision}
            assert stages == {"preprocess", "forward", "log_bin", "best_buddies", "fg_filter_selection", "end_to_end"}
    fwd = next(c for c in cases if c["kind"] == "stage" and c["stage"] == "forward" and c["size"] == 32)
    assert fwd["flops"] > 0 and 0 < fwd["fraction_of_floor_fp32"] and "peak_delta_bytes" in fwd["memory"]
    assert {c["batch"] for c in cases if c["kind"] == "images" and c.get("source") == "batch pipeline"} == {1, 2}
    assert any(c["kind"] == "e2e_public" and c["points_equal_staged"] for c in cases)
    kinds = {(c["kind"], c.get("impl")) for c in cases}
    assert {("kernel", "reference"), ("alternative", "torch_dense"), ("alternative", "kornia_match_mnn"),
            ("alternative", "faiss_flat_ip")} <= kinds
    for c in cases:
        if c["kind"] == "alternative":
            assert c["agreement_vs_dinofeat"]["jaccard"] == 1.0
        if c["kind"] == "kernel" and c["stage"] == "best_buddies" and c["precision"] == "fp32":
            assert c["agreement_vs_fp32_pipeline"]["jaccard"] == 1.0
    # skipped with reasons: fp16 on this CPU (unless the CPU is fast at it), GPU-only backends without a GPU
    skipped = {s["what"]: s["reason"] for s in data["skipped"]}
    assert all(skipped.values())
    if not torch.cuda.is_available():
        assert any(w.startswith("tensorrt") for w in skipped) and "kernels impl=cuda" in skipped
    # baseline: numerically the same as dinofeat on the same inputs
    base = data["baseline"]
    agree = base["agreement_vs_dinofeat_fp32"]
    assert agree["descriptors1_rel"] < 1e-5 and agree["descriptors2_rel"] < 1e-5
    assert agree["saliency1_abs"] < 1e-5 and agree["saliency2_abs"] < 1e-5
    assert agree["nn_1_equal"] and agree["nn_2_equal"] and agree["bbs_mask_equal"] and agree["points_equal"]
    assert base["similarity"]["full"]  # --quick runs the whole loop
    ps = data["paper_setting"]
    assert ps["size"] == 24 and not ps["is_paper_setting"]
    for stage in ("preprocess", "forward", "log_bin", "best_buddies", "fg_filter_selection", "end_to_end"):
        row = ps["stages"][stage]
        assert row["baseline_s"] > 0 and row["fp32_s"] > 0 and row["ratio_baseline_over_fp32"] > 0
    assert ps["speedup_fp32"] > 0 and "bf16_agreement_vs_fp32" in ps
    assert set(data["scaling"]["fp32"]) >= {"forward", "best_buddies", "end_to_end"}
    md = open(paths["markdown"]).read()
    for text in ("Measured on", cfg.command, "| stage | baseline", "### Resolutions", "### Scaling",
                 "### Skipped here, and why", "smoke_stages.png"):
        assert text in md, text
    for key in ("stages", "resolution", "scaling"):
        png = open(paths[key], "rb").read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the README section is regenerated in place between its markers
    from benchmarks import report

    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n")
    for _ in range(2):
        assert report.main([paths["json"], "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title") and text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert "## Benchmarks" in text and cfg.command in text and "(./smoke_stages.png)" in text


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "dinofeat", "bench", "--help"],
                                 [sys.executable, "-m", "benchmarks", "--help"]])
def test_cli_entry_points(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--sizes", "--baseline-rows", "--full-baseline", "--matrix-sizes", "--precisions", "--out"):
        assert flag in proc.stdout


def test_scaling_exponent_fit():
    from dinofeat.bench.measures import fit_exponent

    t = np.array([1000.0, 2000.0, 4000.0])
    assert fit_exponent(t, 3e-9 * t**2) == pytest.approx(2.0)
    assert fit_exponent([1000.0], [1.0]) is None
