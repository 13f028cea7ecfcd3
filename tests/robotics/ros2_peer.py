"""The other end of the node test, run with the ROS 2 venv's python (rclpy): a camera publisher and a subscriber.

    python ros2_peer.py FRAMES.npz OUT.json PREFIX TIMEOUT_S

Publishes the frames of FRAMES.npz (`frames`: (N, H, W, 3) uint8 rgb8, `stamps`: (N,) int64 ns) round robin on
PREFIX/image (sensor-data QoS) with frame_id "test_camera", and a CameraInfo of the same header on
PREFIX/camera_info, at 10 Hz; listens on PREFIX/correspondences (PointCloud2), PREFIX/correspondences/camera_info
and /dinofeat/debug_image; stops once it has a cloud for every frame (or at TIMEOUT_S) and writes what it received
to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2


def main(frames_path: str, out_path: str, prefix: str, timeout: float) -> int:
    data = np.load(frames_path)
    frames, stamps = data["frames"], [int(s) for s in data["stamps"]]
    rclpy.init()
    node = rclpy.create_node("dinofeat_test_peer")
    pub = node.create_publisher(Image, f"{prefix}/image", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, f"{prefix}/camera_info", qos_profile_sensor_data)
    got = {"clouds": [], "infos": [], "debug": [], "published": 0}

    def on_cloud(msg):
        got["clouds"].append({
            "stamp": msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, "frame_id": msg.header.frame_id,
            "fields": [[f.name, f.offset, f.datatype, f.count] for f in msg.fields], "width": msg.width,
            "height": msg.height, "point_step": msg.point_step, "is_bigendian": msg.is_bigendian,
            "points": np.frombuffer(bytes(msg.data), dtype="<f4").reshape(-1, 5).tolist()})

    def on_info(msg):
        got["infos"].append({"stamp": msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec,
                             "width": msg.width, "height": msg.height, "k": list(msg.k)})

    def on_debug(msg):
        got["debug"].append({"stamp": msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec,
                             "encoding": msg.encoding, "height": msg.height, "width": msg.width})

    node.create_subscription(PointCloud2, f"{prefix}/correspondences", on_cloud, 10)
    node.create_subscription(CameraInfo, f"{prefix}/correspondences/camera_info", on_info, 10)
    node.create_subscription(Image, "/dinofeat/debug_image", on_debug, 10)
    k = 0
    deadline = time.monotonic() + timeout
    next_pub = time.monotonic()
    while time.monotonic() < deadline and {c["stamp"] for c in got["clouds"]} < set(stamps):
        if time.monotonic() >= next_pub:
            i = k % len(stamps)
            msg = Image()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamps[i], 10**9)
            msg.header.frame_id = "test_camera"
            msg.height, msg.width = frames.shape[1], frames.shape[2]
            msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, frames.shape[2] * 3
            msg.data = frames[i].tobytes()
            info = CameraInfo(header=msg.header, height=msg.height, width=msg.width)
            info.k = [500.0, 0.0, msg.width / 2, 0.0, 500.0, msg.height / 2, 0.0, 0.0, 1.0]
            info_pub.publish(info)
            pub.publish(msg)
            got["published"] += 1
            k += 1
            next_pub += 0.1
        rclpy.spin_once(node, timeout_sec=0.02)
    node.destroy_node()
    rclpy.shutdown()
    with open(out_path, "w") as f:
        json.dump(got, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
