"""Correspondences <-> the `sensor_msgs/PointCloud2` layout the ROS 2 node publishes and `dinofeat replay` writes
to MCAP (no ROS library needed: the fields are plain values, set on an rclpy or rosbags message by the caller).

One point per pair, height 1, width K, little-endian, dense, point_step 20 bytes:

    u0, v0   float32  the pair's point in the reference frame (u = x, v = y; pixel centres of the input image)
    u1, v1   float32  the same in the current frame
    score    float32  cosine similarity of the pair's descriptors (`StreamMatch.scores`)
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

FIELD_NAMES = ("u0", "v0", "u1", "v1", "score")
FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
POINT_DTYPE = np.dtype([(n, "<f4") for n in FIELD_NAMES])


def cloud_fields(points0, points1, scores) -> dict:
    """PointCloud2 fields (height, width, fields, is_bigendian, point_step, row_step, data, is_dense) of K pairs.

    Args:
        points0, points1: (K, 2) (y, x) pixels of the reference and the current frame (numpy or torch).
        scores: (K,) similarity of each pair.
    `fields` is a list of dicts (name, offset, datatype, count) for `sensor_msgs/PointField`; `data` a uint8
    array of K * 20 bytes.
    """
    p0, p1, s = (_numpy(v, np.float32) for v in (points0, points1, scores))
    k = len(s)
    if p0.shape != (k, 2) or p1.shape != (k, 2) or s.shape != (k,):
        raise InputError(f"cloud_fields: expected points (K, 2), (K, 2) and scores (K,), got {p0.shape}, "
                         f"{p1.shape}, {s.shape}")
    cloud = np.empty(k, dtype=POINT_DTYPE)
    cloud["u0"], cloud["v0"], cloud["u1"], cloud["v1"], cloud["score"] = p0[:, 1], p0[:, 0], p1[:, 1], p1[:, 0], s
    fields = [{"name": n, "offset": 4 * i, "datatype": FLOAT32, "count": 1} for i, n in enumerate(FIELD_NAMES)]
    return {"height": 1, "width": k, "fields": fields, "is_bigendian": False, "point_step": POINT_DTYPE.itemsize,
            "row_step": POINT_DTYPE.itemsize * k, "data": cloud.view(np.uint8).reshape(-1), "is_dense": True}


def read_cloud(msg) -> np.ndarray:
    """The (K,) structured array (u0, v0, u1, v1, score) of a PointCloud2 in this layout (checks the fields)."""
    names = [(f.name, int(f.offset), int(f.datatype)) for f in msg.fields]
    expected = [(n, 4 * i, FLOAT32) for i, n in enumerate(FIELD_NAMES)]
    if names != expected or int(msg.point_step) != POINT_DTYPE.itemsize or msg.is_bigendian:
        raise InputError(f"PointCloud2: expected little-endian float32 fields {FIELD_NAMES} (point_step 20), got "
                         f"{names} (point_step {msg.point_step})")
    raw = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data,
                        dtype=np.uint8)
    count = int(msg.width) * int(msg.height)
    return raw[:count * POINT_DTYPE.itemsize].view(POINT_DTYPE).copy()


def _numpy(v, dtype) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=dtype)
