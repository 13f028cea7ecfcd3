"""Where `dinofeat replay` writes: Parquet (the `dinofeat match --out` schema plus stamp_ns, frame_id) or MCAP.

Both outputs are written to a temp file beside the target and renamed into place when the replay ends, keep the
whole results written so far on an interrupt or a run-time error (so `--resume` continues), and identify a frame
by its header stamp: `done` is the set of stamps a resumed run skips, `keep(stamp)` copies that frame's old result.

MCAP layout (ROS 2 messages, CDR, schemas embedded: opens in Foxglove, `ros2 bag play`, rosbags, mcap_ros2), per
matched frame, both at the frame's receive time in the source bag:
    /dinofeat/correspondences  sensor_msgs/msg/PointCloud2  header = the frame's stamp and frame_id; one point per
                               pair: u0, v0 (reference), u1, v1 (frame), score, float32, u = x and v = y in input
                               pixels (`dinofeat.robotics.pointcloud`, the ROS 2 node's message)
    /dinofeat/reference        std_msgs/msg/Header  the stamp and frame_id of the frame's reference (a reference FILE:
                               stamp 0, frame_id = the path as given)
Frames that failed have no messages (a resumed run redoes them).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..pipeline.results import PartialOutput, ResultWriter, successful_rows
from .pointcloud import cloud_fields

CLOUD_TOPIC = "/dinofeat/correspondences"
REFERENCE_TOPIC = "/dinofeat/reference"
CLOUD_MSGTYPE = "sensor_msgs/msg/PointCloud2"
REFERENCE_MSGTYPE = "std_msgs/msg/Header"


def open_output(path, resume: bool):
    """`ParquetOutput` or `McapOutput` by the suffix of `path` (checked by the caller)."""
    return McapOutput(path, resume) if str(path).lower().endswith(".mcap") else ParquetOutput(path, resume)


class ParquetOutput:
    """Rows of `result_schema(replay=True)` through `ResultWriter`."""

    def __init__(self, path, resume: bool):
        self.path = Path(path)
        old = successful_rows(self.path) if resume and self.path.is_file() else []
        self._old: dict[int, dict] = {}
        for row in old:
            self._old.setdefault(int(row["stamp_ns"]), row)
        self.done = set(self._old)
        self._writer = ResultWriter(self.path, replay=True)

    def keep(self, stamp: int) -> None:
        self._writer.write(self._old[stamp])

    def write(self, row: dict, match, frame, reference) -> None:
        self._writer.write(row)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return self._writer.__exit__(exc_type, exc, tb)


class McapOutput(PartialOutput):
    """PointCloud2 + Header messages (module docstring) with rosbags' MCAP writer, renamed into place on close."""

    def __init__(self, path, resume: bool):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ts = get_typestore(Stores.LATEST)
        self._old = _read_old(self.path, self._ts) if resume and self.path.is_file() else {}
        self.done = set(self._old)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.", dir=self.path.parent))
        self._writer = Writer(self._dir / self.path.stem, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns = {topic: self._writer.add_connection(topic, msgtype, typestore=self._ts)
                       for topic, msgtype in ((CLOUD_TOPIC, CLOUD_MSGTYPE), (REFERENCE_TOPIC, REFERENCE_MSGTYPE))}

    def keep(self, stamp: int) -> None:
        for topic, log_ns, raw in self._old[stamp]:
            self._writer.write(self._conns[topic], log_ns, raw)

    def write(self, row: dict, match, frame, reference) -> None:
        """`match`: the frame's `StreamMatch` (None when the frame failed: nothing written); `frame`: its
        `BagFrame`; `reference`: (name, stamp_ns, frame_id) of its reference."""
        if match is None:
            return
        ts = self._ts
        t = ts.types["builtin_interfaces/msg/Time"]
        header = ts.types["std_msgs/msg/Header"]
        field = ts.types["sensor_msgs/msg/PointField"]

        def hdr(stamp: int, frame_id: str):
            return header(stamp=t(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)

        c = cloud_fields(match.frame_points1, match.frame_points2, match.scores)
        c["fields"] = [field(**f) for f in c["fields"]]
        cloud = ts.types[CLOUD_MSGTYPE](header=hdr(frame.stamp_ns, frame.frame_id), **c)
        self._writer.write(self._conns[CLOUD_TOPIC], frame.log_ns, ts.serialize_cdr(cloud, CLOUD_MSGTYPE))
        ref = hdr(int(reference[1]), str(reference[2]))
        self._writer.write(self._conns[REFERENCE_TOPIC], frame.log_ns, ts.serialize_cdr(ref, REFERENCE_MSGTYPE))

    def close(self) -> Path:
        try:
            self._writer.close()
            next(self._dir.glob("*/*.mcap")).replace(self.path)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the temp folder is removed anyway
            pass
        shutil.rmtree(self._dir, ignore_errors=True)


def _read_old(path: Path, ts) -> dict[int, list[tuple[str, int, bytes]]]:
    """{frame stamp: [(topic, log_ns, raw message)]} of an earlier MCAP output (the frames a resume keeps)."""
    from rosbags.rosbag2 import Reader

    from ..errors import InputError
    from .images import stamp_ns

    old: dict[int, list] = {}
    try:
        with Reader(path) as reader:
            conns = [c for c in reader.connections if c.topic in (CLOUD_TOPIC, REFERENCE_TOPIC)]
            by_time: dict[int, dict[str, bytes]] = {}  # log time -> {topic: raw}: a frame's two messages
            for conn, log_ns, raw in reader.messages(connections=conns):
                by_time.setdefault(int(log_ns), {})[conn.topic] = bytes(raw)
        for log_ns, msgs in by_time.items():
            if len(msgs) == 2:
                stamp = stamp_ns(ts.deserialize_cdr(msgs[CLOUD_TOPIC], CLOUD_MSGTYPE).header.stamp)
                old.setdefault(stamp, [(topic, log_ns, msgs[topic]) for topic in (CLOUD_TOPIC, REFERENCE_TOPIC)])
    except Exception as e:  # noqa: BLE001 - an unreadable file is a bad argument here
        raise InputError(f"--resume: cannot read {str(path)!r} as a dinofeat replay MCAP "
                         f"({type(e).__name__}: {e})") from None
    return old
