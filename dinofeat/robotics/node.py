"""`dinofeat ros2 run`: the ROS 2 node (needs only rclpy + sensor_msgs: the `[ros2]` extra, docs/robotics.md).

Node `dinofeat`: subscribes to `image_topic` (sensor_msgs/Image) with best-effort sensor-data QoS and a queue of 1;
the callback only keeps the newest message (older ones are dropped, it never waits for the model); a worker
thread matches the newest frame to the reference (`NodeCore`) and publishes on `output_topic` a PointCloud2
(u0, v0, u1, v1, score: `dinofeat.robotics.pointcloud`) with the input's header (stamp, frame_id); with
`camera_info_topic` the latest CameraInfo is republished on `<output_topic>/camera_info` with the same header; with
`debug_image` the matches drawn on `~/debug_image`. Parameters: `dinofeat.robotics.params` (read-only: the model
is loaded once). SIGINT / SIGTERM: the worker finishes its frame, the node is destroyed, exit code 0.
Exit code 2: a bad parameter (one line on stderr).
"""

from __future__ import annotations

import sys
import threading

from ..errors import DinofeatError


def run_node(ros_args: list[str]) -> int:
    try:
        import rclpy
    except ImportError:
        print("dinofeat ros2: error: rclpy is not installed; create the ROS 2 venv of docs/robotics.md "
              "(pip install 'dinofeat[ros2]' in a Python 3.11 venv)", file=sys.stderr)
        return 2
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["dinofeat", *ros_args])
    node = None
    try:
        node = DinofeatNode()
        rclpy.spin(node)
    except DinofeatError as e:
        print(f"dinofeat ros2: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _node_class():
    from rclpy.node import Node

    class _DinofeatNode(Node):
        """See the module docstring."""

        def __init__(self):
            from rcl_interfaces.msg import ParameterDescriptor, ParameterType
            from rclpy.exceptions import ParameterException
            from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
            from sensor_msgs.msg import CameraInfo, Image, PointCloud2

            from .node_core import NodeCore
            from .params import PARAMETERS, node_settings

            super().__init__("dinofeat")
            types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                     float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
            values = {}
            for p in PARAMETERS:
                desc = ParameterDescriptor(type=types[p.type], description=p.help, read_only=True)
                try:
                    values[p.name] = self.declare_parameter(p.name, p.default, desc).value
                except ParameterException as e:  # a value of the wrong type from --ros-args -p
                    raise DinofeatError(f"parameter {p.name}: expected a {p.type.__name__} ({p.help}): "
                                        f"{type(e).__name__}: {e}") from None
            ec, mc, self.settings = node_settings(values)
            self.core = NodeCore(ec, mc, self.settings)
            self.core.warm_up()
            qos = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=1)
            out = self.settings.output_topic
            self._cloud_pub = self.create_publisher(PointCloud2, out, 10)
            self._info_pub = self._debug_pub = None
            self._camera_info = None
            if self.settings.camera_info_topic:
                self._info_pub = self.create_publisher(CameraInfo, f"{out}/camera_info", 10)
                self.create_subscription(CameraInfo, self.settings.camera_info_topic, self._on_info, qos)
            if self.settings.debug_image:
                self._debug_pub = self.create_publisher(Image, "~/debug_image", 1)
            self._latest = None
            self._lock = threading.Lock()
            self._wake = threading.Event()
            self._stop = threading.Event()
            self._msgs = (PointCloud2, Image)
            self.create_subscription(Image, self.settings.image_topic, self._on_image, qos)
            self._worker = threading.Thread(target=self._work, name="dinofeat-match", daemon=True)
            self._worker.start()
            self.get_logger().info(f"dinofeat node ready: {self.settings.image_topic} -> {out} "
                                   f"({self.core.stream.extractor!r})")

        def _on_image(self, msg) -> None:  # never blocks: keep the newest frame, drop the one not yet taken
            with self._lock:
                self._latest = msg
            self._wake.set()

        def _on_info(self, msg) -> None:
            self._camera_info = msg

        def _work(self) -> None:
            while not self._stop.is_set():
                if not self._wake.wait(0.1):
                    continue
                with self._lock:
                    msg, self._latest = self._latest, None
                    self._wake.clear()
                if msg is None:
                    continue
                try:
                    out = self.core.process(msg)
                except DinofeatError as e:
                    self.get_logger().warning(f"frame skipped: {' '.join(str(e).split())}")
                    continue
                except Exception as e:  # noqa: BLE001 - one bad frame must not stop the node
                    self.get_logger().error(f"frame failed: {type(e).__name__}: {e}")
                    continue
                if out is not None and not self._stop.is_set():
                    self._publish(msg.header, out)

        def _publish(self, header, out) -> None:
            from sensor_msgs.msg import PointField

            cloud_t, image_t = self._msgs
            c = dict(out.cloud)
            c["fields"] = [PointField(**f) for f in c["fields"]]
            c["data"] = c["data"].tobytes()
            self._cloud_pub.publish(cloud_t(header=header, **c))
            if self._info_pub is not None and self._camera_info is not None:
                info = self._camera_info
                info.header = header
                self._info_pub.publish(info)
            if self._debug_pub is not None and out.debug is not None:
                d = dict(out.debug)
                d["data"] = d["data"].tobytes()
                self._debug_pub.publish(image_t(header=header, **d))

        def stop(self) -> None:
            self._stop.set()
            self._wake.set()
            if self._worker.is_alive():
                self._worker.join(timeout=30)

    return _DinofeatNode


def DinofeatNode():  # noqa: N802 - a class made at call time (rclpy is imported only when the node runs)
    return _node_class()()
