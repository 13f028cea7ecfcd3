"""`dinofeat ros2 run` with real rclpy: a publisher of camera frames (real photos warped by known homographies),
the node process, a subscriber of its PointCloud2; then SIGINT and a clean exit.

Runs with the ROS 2 venv's python (`.ci/ros2_venv.sh` builds it; DINOFEAT_ROS2_PYTHON or .venv-ros2/bin/python),
with DDS kept on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and FASTDDS_BUILTIN_TRANSPORTS=SHM.
The node logic itself (messages, parameters, references) is also tested without rclpy (test_node_core.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import robotics_scenes as scenes
from PIL import Image
from testutil import ROOT

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
LOAD = 64
DDS_LOCAL = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "FASTDDS_BUILTIN_TRANSPORTS": "SHM"}


@pytest.fixture(scope="module")
def ros_python() -> str:
    path = Path(os.environ.get("DINOFEAT_ROS2_PYTHON") or ROOT / ".venv-ros2" / "bin" / "python")
    if not path.exists():
        pytest.skip(f"no ROS 2 venv at {path}: build it with `bash .ci/ros2_venv.sh` (or set DINOFEAT_ROS2_PYTHON)")
    return str(path)


def ros_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "FASTDDS_", "RMW_"))}
    env.update(DDS_LOCAL, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]), PYTHONUNBUFFERED="1",
               ROS_DOMAIN_ID=str(40 + os.getpid() % 150))  # a domain of this run only
    return env


def test_node_publishes_correspondences_with_the_input_header_and_exits_cleanly(ros_python, vits8_weights_file,
                                                                                extractor, tmp_path):
    from dinofeat.config import ExtractorConfig, MatchConfig
    from dinofeat.stream import FrameStream

    photo = scenes.photos()["coffee"][::2, ::2].copy()  # 200 x 300
    seq, _ = scenes.warped_sequence(photo, 4)
    frames = np.stack(seq[1:])
    stamps = np.array([1_700_000_000_000_000_000 + k * 50_000_000 for k in range(1, 4)], dtype=np.int64)
    np.savez(tmp_path / "frames.npz", frames=frames, stamps=stamps)
    Image.fromarray(seq[0]).save(tmp_path / "reference.png")
    prefix = "/dinofeat_test"
    params = {"weights": str(vits8_weights_file), "backend": "torch", "device": "cpu", "load_size": LOAD,
              "num_pairs": 6, "reference": str(tmp_path / "reference.png"), "image_topic": f"{prefix}/image",
              "output_topic": f"{prefix}/correspondences", "camera_info_topic": f"{prefix}/camera_info",
              "debug_image": True}
    ros_args = ["--ros-args"] + [a for k, v in params.items() for a in ("-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}")]
    env = ros_env()
    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen([ros_python, "-m", "dinofeat", "ros2", "run", *ros_args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "dinofeat node ready" not in (tmp_path / "node.log").read_text():
            assert node.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "node not ready in 120 s: " + (tmp_path / "node.log").read_text()
            time.sleep(0.2)
        peer = subprocess.run([ros_python, str(HERE / "ros2_peer.py"), str(tmp_path / "frames.npz"),
                               str(tmp_path / "got.json"), prefix, "90"], env=env, capture_output=True, text=True,
                              timeout=150)
        assert peer.returncode == 0, peer.stderr
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            rc = node.wait(timeout=60)  # the worker finishes the frame it is matching first
        except subprocess.TimeoutExpired:
            node.kill()
            rc = "killed 60 s after SIGINT"
        log.close()
    text = (tmp_path / "node.log").read_text()
    got = json.loads((tmp_path / "got.json").read_text())
    assert rc == 0, (text, f"{time.monotonic() - t0:.1f} s", got["published"], len(got["clouds"]))
    clouds = {c["stamp"]: c for c in got["clouds"]}
    assert set(clouds) == set(stamps.tolist()), (got["published"], text)

    # what the node published equals the streaming API on the same frames (in this process, main venv)
    stream = FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(num_pairs=6), frame_size=photo.shape[:2],
                         extractor=extractor)
    stream.set_reference(seq[0])
    for frame, stamp in zip(frames, stamps.tolist(), strict=True):
        c = clouds[stamp]
        assert c["frame_id"] == "test_camera" and c["height"] == 1 and c["point_step"] == 20 and not c["is_bigendian"]
        assert c["fields"] == [[n, 4 * i, 7, 1] for i, n in enumerate(["u0", "v0", "u1", "v1", "score"])]
        m = stream.match(frame)
        want = np.c_[m.frame_points1.numpy()[:, ::-1], m.frame_points2.numpy()[:, ::-1], m.scores.numpy()]
        assert c["width"] == len(want) > 0
        np.testing.assert_allclose(np.array(c["points"]), want, atol=1e-4)
    assert {i["stamp"] for i in got["infos"]} <= set(stamps.tolist()) and got["infos"]
    assert got["infos"][0]["k"][0] == 500.0 and got["infos"][0]["width"] == photo.shape[1]
    assert got["debug"] and got["debug"][0]["encoding"] == "rgb8" and got["debug"][0]["height"] == photo.shape[0]


@pytest.mark.parametrize("param, message", [
    ("num_pairs:=0", "dinofeat ros2: error: parameter num_pairs: 0: expected an int >= 1"),
    ("load_size:=big", "dinofeat ros2: error: parameter load_size: expected a int"),
])
def test_bad_parameter_is_one_line_and_exit_2(ros_python, tmp_path, param, message):
    p = subprocess.run([ros_python, "-m", "dinofeat", "ros2", "run", "--ros-args", "-p", param, "-p", "device:=cpu"],
                       capture_output=True, text=True, timeout=120, env=ros_env(), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and p.stderr.count("\n") == 1, p.stderr
