"""The ROS 2 node's work without rclpy (`NodeCore`): Image messages in (plain objects with the sensor_msgs fields),
PointCloud2 fields out, equal to the streaming API on the same frames; the reference policies; the debug image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from testutil import EXAMPLES

from dinofeat.robotics.images import image_fields
from dinofeat.robotics.node_core import NodeCore
from dinofeat.robotics.params import node_settings
from dinofeat.robotics.pointcloud import read_cloud

LOAD = 40


@pytest.fixture(scope="module")
def frames():
    photo = np.asarray(Image.open(EXAMPLES / "img_a.png").convert("RGB"))[::2, ::2].copy()  # 150 x 226
    return [photo, np.roll(photo, 8, axis=1), np.roll(photo, -8, axis=0)]


def msg(frame, k, encoding="rgb8"):
    data = frame if encoding == "rgb8" else frame[..., ::-1].copy()
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=k, nanosec=0), frame_id="cam"),
                           **image_fields(data, encoding))


def core(extractor, **params):
    ec, mc, node = node_settings({"load_size": LOAD, "num_pairs": 5, "bin": False, **params})  # cheap: 40 px
    return NodeCore(ec, mc, node, extractor=extractor)


def cloud_msg(cloud: dict):
    return SimpleNamespace(**{**cloud, "fields": [SimpleNamespace(**f) for f in cloud["fields"]]})


def test_first_frame_is_the_reference_and_clouds_equal_the_stream(extractor, frames):
    from dinofeat.stream import FrameStream

    c = core(extractor, debug_image=True)
    assert c.process(msg(frames[0], 0)) is None  # the reference: nothing to publish yet
    outs = [c.process(msg(frames[1], 1, "bgr8")), c.process(msg(frames[2], 2))]
    s = FrameStream(c.extractor_config, c.match_config, frame_size=frames[0].shape[:2], extractor=extractor)
    s.set_reference(frames[0])
    for out, frame in zip(outs, frames[1:], strict=True):
        m = s.match(frame)
        pts = read_cloud(cloud_msg(out.cloud))
        assert out.pairs == len(m) == len(pts) > 0 and out.reference_index == 0
        np.testing.assert_array_equal(pts["u0"], m.frame_points1[:, 1].numpy())
        np.testing.assert_array_equal(pts["v1"], m.frame_points2[:, 0].numpy())
        np.testing.assert_array_equal(pts["score"], m.scores.numpy())
        h, w = frame.shape[:2]
        assert out.debug["encoding"] == "rgb8" and out.debug["height"] == h and out.debug["width"] > 2 * w
        assert (pts["u1"] >= -0.5).all() and (pts["u1"] <= w - 0.5).all()


def test_every_n_and_file_references(extractor, frames, tmp_path):
    c = core(extractor, reference="every:2")
    outs = [c.process(msg(f, k)) for k, f in enumerate(frames + [frames[2]])]
    assert outs[0] is None and [o.reference_index for o in outs[1:]] == [0, 0, 2]
    assert len(read_cloud(cloud_msg(outs[3].cloud))) > 0
    # frame 3 == frame 2, its reference: every pair is a point matched to itself
    p = read_cloud(cloud_msg(outs[3].cloud))
    np.testing.assert_allclose(np.c_[p["u0"], p["v0"]], np.c_[p["u1"], p["v1"]], atol=1e-4)
    Image.fromarray(frames[1]).save(tmp_path / "ref.png")
    c = core(extractor, reference=str(tmp_path / "ref.png"))
    out = c.process(msg(frames[1], 0))
    assert out is not None and out.reference_index == -1 and out.debug is None
    p = read_cloud(cloud_msg(out.cloud))
    np.testing.assert_allclose(np.c_[p["u0"], p["v0"]], np.c_[p["u1"], p["v1"]], atol=1e-4)
