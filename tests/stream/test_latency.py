"""`dinofeat bench latency`: the measurement loop (fast and camera-rate modes), the summary, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamutil import LOAD

from dinofeat.bench.latency import example_frames, run_latency, summarize
from dinofeat.cli import main
from dinofeat.stream import ExtractorConfig, FrameStream, MatchConfig


def test_summarize_percentiles_and_jitter():
    s = summarize(list(range(1, 101)))  # 1..100 ms
    assert s["latency_ms"]["p50"] == pytest.approx(50.5)
    assert s["latency_ms"]["p95"] == pytest.approx(95.05)
    assert s["latency_ms"]["p99"] == pytest.approx(99.01)
    assert s["latency_ms"]["max"] == 100
    assert s["jitter_ms"]["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert s["jitter_ms"]["p99_minus_p50"] == pytest.approx(48.51)
    assert np.isnan(summarize([])["latency_ms"]["p50"])


@pytest.fixture(scope="module")
def stream(extractor):
    return FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(num_pairs=3), frame_size=(60, 80),
                       extractor=extractor)


def test_as_fast_as_possible(stream, frames):
    out = run_latency(stream, frames)  # keyframe, warm-up match, one measured
    assert out["frames_matched"] == 2 and out["frames_in_percentiles"] == 1 and out["dropped"] == 0
    lat = out["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert out["cold_ms"] > 0 and out["first_match_ms"] > 0 and out["fps"] > 0
    assert out["cpu_ms_per_frame"]["p50"] > 0
    assert [r["frame"] for r in out["frames"]] == [1, 2] and all(r["pairs"] > 0 for r in out["frames"])
    # latencies are wall time between a frame's arrival and its read result: they tile the loop
    assert sum(r["latency_ms"] for r in out["frames"]) <= out["loop_seconds"] * 1e3 + 1e-6


def test_camera_rate_drops_frames_that_arrive_while_busy(stream, frames):
    """At 1 kHz every frame after the first arrives while the first is matched: the queue keeps the newest."""
    seq = [frames[k % 3] for k in range(4)]
    out = run_latency(stream, seq, rate=1000.0)
    assert out["dropped"] > 0
    assert out["frames_matched"] + out["dropped"] == len(seq) - 1
    assert out["frames"][-1]["frame"] == len(seq) - 1
    for row in out["frames"]:  # frame k arrives at k ms; its latency counts from there
        assert row["arrival_s"] == pytest.approx(row["frame"] / 1000.0)
        assert row["latency_ms"] == pytest.approx((row["done_s"] - row["arrival_s"]) * 1e3, abs=1e-3)


def test_example_frames_pan_over_both_images():
    seq = example_frames(6, (48, 64))
    assert len(seq) == 6 and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in seq)
    assert not np.array_equal(seq[0], seq[1]) and not np.array_equal(seq[2], seq[3])


def test_command_writes_json_and_png(tmp_path, vits8_weights_file, capsys):
    rc = main(["bench", "latency", "--out", str(tmp_path), "--frames", "3", "--load-size", "24", "--frame-size",
               "36", "48", "--weights", str(vits8_weights_file), "--backend", "torch", "--device", "cpu", "-q",
               "--compare"])
    assert rc == 0
    doc = json.loads((tmp_path / "latency.json").read_text())
    for key in ("p50", "p95", "p99", "max"):
        assert doc["latency_ms"][key] > 0
    assert set(doc["jitter_ms"]) >= {"std", "p99_minus_p50"}
    assert doc["cold_ms"] > 0 and doc["fps"] > 0 and doc["dropped"] == 0 and doc["peak_mb"] > 0
    assert doc["config"]["backend"] == "torch" and doc["config"]["resized_size"] == [24, 32]
    assert len(doc["machine"]["load_average_start"]) == 3
    # the same run timed find_correspondences(keyframe, frame) and found the stream's points
    assert doc["baseline"]["same_points_all_frames"] is True and doc["baseline"]["latency_ms"]["p50"] > 0
    rows = doc["frames"][1:]
    assert doc["baseline"]["ratio_p50"] == pytest.approx(np.median([r["baseline_ms"] / r["latency_ms"]
                                                                    for r in rows]))
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p50" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--rate", "-1"], "--rate -1.0: expected a frame rate"),
    (["--frames", "2"], "--frames 2: expected at least 3"),
    (["--input", "/nonexistent/frames"], "--input '/nonexistent/frames': not found"),
    (["--compare", "--rate", "10"], "--compare: only without --rate"),
])
def test_command_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["bench", "latency", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_bare_bench_still_parses():
    from dinofeat.cli import build_parser

    args = build_parser().parse_args(["bench", "--sizes", "224", "--quick"])
    assert args.func.__name__ == "bench_main" and args.sizes == [224]
    # latency flags that are prefixes of `dinofeat bench` flags (--backend(s), --precision(s)) reach latency
    args = build_parser().parse_args(["bench", "latency", "--out", "d", "--compare", "--backend", "onnxruntime",
                                      "--precision", "fp16", "--frames", "5"])
    assert args.func.__name__ == "latency_main"
    assert (args.compare, args.backend, args.precision, args.frames) == (True, "onnxruntime", "fp16", 5)


def test_folder_and_bag_inputs(tmp_path):
    from PIL import Image

    from dinofeat.bench.latency import load_frames
    from dinofeat.errors import InputError

    seq = example_frames(3, (24, 32))
    for i, f in enumerate(seq):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got, source = load_frames(tmp_path, 10, None)
    assert source == str(tmp_path) and len(got) == 3
    assert all(np.array_equal(a, b) for a, b in zip(got, seq, strict=True))
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(seq[0]).save(one / "a.png")
    with pytest.raises(InputError, match=r"at least 2 images .* found 1"):
        load_frames(one, 10, None)
    bag = tmp_path / "empty.mcap"
    bag.write_bytes(b"")
    with pytest.raises(InputError, match=r"BAG .*empty.mcap': cannot open"):
        load_frames(bag, 10, None)
    from dinofeat.robotics.bag import write_image_bag  # the replay reader (dinofeat.robotics.bag.read_frames)

    bag = write_image_bag(tmp_path / "run.mcap", [(k, f[..., ::-1].copy(), "bgr8") for k, f in enumerate(seq)])
    got, _ = load_frames(bag, 10, None)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, seq, strict=True))  # bgr8 -> rgb
