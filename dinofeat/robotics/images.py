"""`sensor_msgs/Image` and `CompressedImage` <-> numpy, with no ROS library (rosbags or rclpy messages alike).

A message is read through its field names only (`height`, `width`, `encoding`, `is_bigendian`, `step`, `data`;
`format`, `data` for a compressed image), so the same functions decode rosbags' deserialised messages in `dinofeat
replay` and rclpy's messages in the ROS 2 node.

Decoded frames come back in an encoding `dinofeat.stream.FrameStream` takes, without a copy where the message
already is one (`rgb8`, `bgr8`, `mono8`; rows padded by `step` are sliced, not copied):

    rgb8, bgr8, mono8            as they are (8UC3 is read as bgr8, 8UC1 as mono8, OpenCV's conventions)
    rgba8, bgra8 (8UC4)          alpha dropped -> rgb8 / bgr8
    mono16, 16UC1                -> mono8 as `load_image` scales 16-bit arrays: round(v / 257)
    CompressedImage (jpeg, png)  decoded with Pillow as `dinofeat match` decodes the same file -> rgb8
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import InputError

# encoding -> (channels, bytes per channel, encoding of the decoded frame)
IMAGE_ENCODINGS = {
    "rgb8": (3, 1, "rgb8"), "bgr8": (3, 1, "bgr8"), "mono8": (1, 1, "mono8"), "8UC3": (3, 1, "bgr8"),
    "8UC1": (1, 1, "mono8"), "rgba8": (4, 1, "rgb8"), "bgra8": (4, 1, "bgr8"), "8UC4": (4, 1, "bgr8"),
    "mono16": (1, 2, "mono8"), "16UC1": (1, 2, "mono8"),
}
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/Image")
COMPRESSED_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/CompressedImage")


def decode_image(msg, name: str = "image") -> tuple[np.ndarray, str]:
    """(frame, encoding) of a `sensor_msgs/Image`: (H, W, 3) uint8 rgb8 / bgr8 or (H, W) uint8 mono8.

    Raises `InputError` for an encoding outside `IMAGE_ENCODINGS` or a `data` / `step` that does not hold
    height x width pixels (expected vs actual bytes).
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise InputError(f"{name}: encoding {encoding!r} is not supported; expected one of "
                         f"{', '.join(IMAGE_ENCODINGS)} (or a sensor_msgs/CompressedImage topic)")
    channels, depth, out = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row = width * channels * depth
    data = _as_bytes(msg.data)
    if height < 1 or width < 1 or step < row or data.size < step * (height - 1) + row:
        raise InputError(f"{name}: {encoding} image {height}x{width} needs step >= {row} and >= "
                         f"{step * (height - 1) + row} bytes of data, got step {step} and {data.size} bytes")
    from ..limits import check_pixels

    check_pixels(width, height, name)
    rows = np.lib.stride_tricks.as_strided(data, shape=(height, row), strides=(step, 1))
    if depth == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        grey = np.ascontiguousarray(rows).view(dtype).reshape(height, width).astype(np.uint16)
        return np.round(grey.astype(np.float64) / 257.0).astype(np.uint8), out
    pixels = rows.reshape(height, width, channels)
    if channels == 1:
        return pixels[..., 0], out
    if channels == 4:
        return np.ascontiguousarray(pixels[..., :3]), out
    return pixels, out


def decode_compressed(msg, name: str = "image") -> tuple[np.ndarray, str]:
    """(frame, "rgb8") of a `sensor_msgs/CompressedImage` (JPEG, PNG, ... whatever Pillow reads): (H, W, 3) uint8,
    equal to `dinofeat.load_image` of the same bytes saved as a file."""
    from PIL import Image, UnidentifiedImageError

    from ..engine.preprocess import load_image
    from ..limits import check_pixels

    fmt = str(getattr(msg, "format", ""))
    if "compressedDepth" in fmt:
        raise InputError(f"{name}: format {fmt!r} (compressedDepth) is a depth image, not a camera image")
    try:
        im = Image.open(io.BytesIO(_as_bytes(msg.data).tobytes()))
        check_pixels(im.width, im.height, name)  # header only: nothing decoded yet
        im.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: cannot decode the CompressedImage (format {fmt!r}, {len(msg.data)} bytes): "
                         f"{type(e).__name__}: {e}") from None
    return np.asarray(load_image(im, name=name)), "rgb8"


def decode_frame(msg, msgtype: str, name: str = "image") -> tuple[np.ndarray, str]:
    """Decode an Image or CompressedImage message by its type name (ROS 1 or ROS 2 spelling)."""
    if msgtype in IMAGE_TYPES:
        return decode_image(msg, name)
    if msgtype in COMPRESSED_TYPES:
        return decode_compressed(msg, name)
    raise InputError(f"{name}: message type {msgtype!r} is not an image; expected sensor_msgs/Image or "
                     "sensor_msgs/CompressedImage")


def image_fields(frame: np.ndarray, encoding: str = "rgb8") -> dict:
    """The `sensor_msgs/Image` fields (height, width, encoding, is_bigendian, step, data) of a uint8 frame:
    (H, W, 3) for rgb8 / bgr8, (H, W) for mono8. `data` is a contiguous uint8 array (row step = width * C)."""
    frame = np.asarray(frame)
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(encoding)
    if channels is None:
        raise InputError(f"encoding={encoding!r}: expected rgb8, bgr8 or mono8")
    shape_ok = frame.ndim == 3 and frame.shape[2] == 3 if channels == 3 else frame.ndim == 2
    if frame.dtype != np.uint8 or not shape_ok:
        raise InputError(f"frame: {encoding} expects a uint8 array of shape "
                         f"{'(H, W, 3)' if channels == 3 else '(H, W)'}, got {frame.dtype} {tuple(frame.shape)}")
    height, width = frame.shape[:2]
    return {"height": int(height), "width": int(width), "encoding": encoding, "is_bigendian": 0,
            "step": int(width * channels), "data": np.ascontiguousarray(frame).reshape(-1)}


def stamp_ns(stamp) -> int:
    """Nanoseconds of a `builtin_interfaces/Time` (ROS 2: sec + nanosec; ROS 1 via rosbags: sec + nanosec too)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _as_bytes(data) -> np.ndarray:
    """A uint8 view of a message's `data` (numpy array, bytes, array.array or list)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
