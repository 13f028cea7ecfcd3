"""The robotics layer's ROS-free logic: Image / CompressedImage decoding, the PointCloud2 layout, the node's
parameters (no rosbags, no rclpy: messages are plain objects with the sensor_msgs field names)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from testutil import EXAMPLES

from dinofeat.engine.preprocess import load_image
from dinofeat.errors import InputError
from dinofeat.robotics.images import decode_compressed, decode_frame, decode_image, image_fields
from dinofeat.robotics.params import PARAMETERS, check_value, node_settings
from dinofeat.robotics.pointcloud import FIELD_NAMES, cloud_fields, read_cloud


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "img_a.png").convert("RGB"))[:37, :53]  # odd sizes: step padding


def image_msg(frame: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """A sensor_msgs/Image as its fields, each row padded by `pad` bytes (step > width * bytes per pixel)."""
    h, w = frame.shape[:2]
    rows = frame.reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], axis=1).reshape(-1)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1] + pad,
                           data=data.tobytes())


@pytest.mark.parametrize("pad", [0, 5])
def test_8bit_encodings_decode_to_the_frame_the_stream_takes(photo, pad):
    bgr = photo[..., ::-1].copy()
    grey = photo[..., 1].copy()
    alpha = np.full(photo.shape[:2] + (1,), 200, np.uint8)
    cases = [("rgb8", photo, photo, "rgb8"), ("bgr8", bgr, bgr, "bgr8"), ("8UC3", bgr, bgr, "bgr8"),
             ("mono8", grey, grey, "mono8"), ("8UC1", grey, grey, "mono8"),
             ("rgba8", np.concatenate([photo, alpha], 2), photo, "rgb8"),
             ("bgra8", np.concatenate([bgr, alpha], 2), bgr, "bgr8")]
    for encoding, data, expected, out_encoding in cases:
        frame, enc = decode_image(image_msg(data, encoding, pad))
        assert enc == out_encoding, encoding
        np.testing.assert_array_equal(frame, expected, err_msg=encoding)
        assert frame.dtype == np.uint8


@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_mono_scales_like_load_image(photo, bigendian):
    grey16 = (photo[..., 0].astype(np.uint16) * 257 + np.arange(photo.shape[1], dtype=np.uint16) % 200)
    data = grey16.astype(">u2" if bigendian else "<u2")
    frame, enc = decode_image(image_msg(data, "mono16", pad=2, bigendian=bigendian))
    assert enc == "mono8"
    np.testing.assert_array_equal(frame, np.asarray(load_image(grey16))[..., 0])


def test_compressed_image_equals_load_image_of_the_same_file(photo, tmp_path):
    for fmt, suffix in (("jpeg", ".jpg"), ("png", ".png")):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format=fmt.upper())
        (tmp_path / f"f{suffix}").write_bytes(buf.getvalue())
        msg = SimpleNamespace(format=fmt, data=buf.getvalue())
        frame, enc = decode_frame(msg, "sensor_msgs/msg/CompressedImage")
        assert enc == "rgb8"
        np.testing.assert_array_equal(frame, np.asarray(load_image(tmp_path / f"f{suffix}")))


def test_bad_messages_raise_one_input_error_each(photo):
    good = image_msg(photo, "rgb8")
    with pytest.raises(InputError, match=r"encoding 'yuv422' is not supported; expected one of rgb8"):
        decode_image(SimpleNamespace(**{**vars(good), "encoding": "yuv422"}))
    with pytest.raises(InputError, match=r"needs step >= 159 and >= 5883 bytes of data, got step 159 and 100 bytes"):
        decode_image(SimpleNamespace(**{**vars(good), "data": b"x" * 100}))
    with pytest.raises(InputError, match=r"needs step >= 159 .* got step 20"):
        decode_image(SimpleNamespace(**{**vars(good), "step": 20}))
    with pytest.raises(InputError, match=r"cannot decode the CompressedImage \(format 'jpeg', 4 bytes\)"):
        decode_compressed(SimpleNamespace(format="jpeg", data=b"\xff\xd8no"))
    with pytest.raises(InputError, match="compressedDepth"):
        decode_compressed(SimpleNamespace(format="16UC1; compressedDepth", data=b"x"))
    with pytest.raises(InputError, match="'sensor_msgs/msg/Imu' is not an image"):
        decode_frame(good, "sensor_msgs/msg/Imu")


def test_image_fields_round_trip(photo):
    for encoding, frame in (("rgb8", photo), ("mono8", photo[..., 0])):
        fields = image_fields(frame, encoding)
        assert fields["step"] == frame.shape[1] * (3 if encoding == "rgb8" else 1)
        back, enc = decode_image(SimpleNamespace(**fields))
        assert enc == encoding
        np.testing.assert_array_equal(back, frame)
    with pytest.raises(InputError, match=r"rgb8 expects a uint8 array of shape \(H, W, 3\), got float32 \(2, 2\)"):
        image_fields(np.zeros((2, 2), np.float32))


def test_point_cloud_layout_round_trip():
    p0 = np.array([[10, 20], [30, 40.5]], np.float32)  # (y, x)
    p1 = np.array([[11, 21], [31, 41]], np.float32)
    s = np.array([0.9, 0.5], np.float32)
    c = cloud_fields(p0, p1, s)
    assert [f["name"] for f in c["fields"]] == list(FIELD_NAMES)
    assert [f["offset"] for f in c["fields"]] == [0, 4, 8, 12, 16] and c["point_step"] == 20
    assert (c["height"], c["width"], c["row_step"], c["data"].size) == (1, 2, 40, 40)
    msg = SimpleNamespace(**{**c, "fields": [SimpleNamespace(**f) for f in c["fields"]], "data": c["data"].tobytes()})
    back = read_cloud(msg)
    np.testing.assert_array_equal(back["u0"], p0[:, 1])  # u = x
    np.testing.assert_array_equal(back["v0"], p0[:, 0])  # v = y
    np.testing.assert_array_equal(back["u1"], p1[:, 1])
    np.testing.assert_array_equal(back["score"], s)
    empty = cloud_fields(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    assert empty["width"] == 0 and empty["data"].size == 0
    with pytest.raises(InputError, match=r"expected points \(K, 2\), \(K, 2\) and scores \(K,\), got"):
        cloud_fields(p0, p1[:1], s)


def test_node_parameters_map_onto_the_configs_and_reject_bad_values(tmp_path):
    ec, mc, node = node_settings({})
    assert {p.name for p in PARAMETERS} >= {"model", "weights", "load_size", "num_pairs", "reference", "debug_image"}
    assert (ec.model, ec.stride, ec.weights, ec.load_size) == ("dino_vits8", "auto", None, 224)
    assert node_settings({"model": "dinov2_vits14"})[0].stride == "auto"  # -> 7, half the patch
    assert node_settings({"stride": 8})[0].stride == 8
    assert (mc.layer, mc.num_pairs, mc.bin, mc.thresh) == (9, 10, True, 0.05)
    assert node.reference.kind == "first" and node.image_topic == "image" and not node.debug_image
    ec, mc, node = node_settings({"load_size": 112, "num_pairs": 5, "thresh": 0, "reference": "every:3",
                                  "weights": "/w.pth"})
    assert (ec.load_size, mc.num_pairs, mc.thresh, node.reference.every, ec.weights) == (112, 5, 0.0, 3, "/w.pth")
    assert check_value("thresh", 1) == 1.0 and isinstance(check_value("thresh", 1), float)
    bad = [({"num_pairs": "5"}, "parameter num_pairs: expected a int"),
           ({"bin": 1}, "parameter bin: expected a bool"),
           ({"num_pairs": 0}, "parameter num_pairs: 0: expected an int >= 1"),
           ({"facet": "keys"}, "parameter facet: 'keys' is unknown"),
           ({"precision": "fp8"}, "parameter precision: 'fp8' is unknown"),
           ({"reference": "every:0"}, "parameter reference: 'every:0': expected every:N"),
           ({"reference": str(tmp_path / "none.png")}, "expected first, every:N or an existing image file"),
           ({"image_topic": ""}, "parameter image_topic: expected a topic name"),
           ({"nope": 1}, "parameter 'nope' is unknown")]
    for values, message in bad:
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            node_settings(values)
