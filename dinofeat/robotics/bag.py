"""Camera frames out of (and into) ROS bags with `rosbags` (pure Python, no ROS install; extra `[robotics]`).

BAG is a rosbag2 folder (`metadata.yaml` + mcap or sqlite3 storage), a bare `.mcap` or `.db3` file, or a ROS 1
`.bag`. `bag_frames` yields the messages of one `sensor_msgs/Image` or `CompressedImage` topic in bag order, each
decoded only when asked (`BagFrame.decode`), so a resumed replay skips the frames it already has cheaply.
`write_image_bag` writes such a topic (the tests' fixtures, or a user's own frames) in any of those formats.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OutputError
from .images import COMPRESSED_TYPES, IMAGE_TYPES, decode_frame, image_fields, stamp_ns

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_MSGTYPE = "sensor_msgs/msg/CompressedImage"


@dataclass
class BagFrame:
    """One message of the image topic. index: position on the topic (from 0); stamp_ns: header stamp (ns);
    log_ns: the bag's receive time (ns); frame_id: header frame_id; msg / msgtype: the deserialised message."""

    index: int
    stamp_ns: int
    log_ns: int
    frame_id: str
    msg: object
    msgtype: str

    def decode(self):
        """(frame, encoding): (H, W, 3) uint8 rgb8 / bgr8 or (H, W) mono8 (`dinofeat.robotics.images`)."""
        return decode_frame(self.msg, self.msgtype, name=f"frame {self.index} (stamp {self.stamp_ns})")


def _rosbags():
    try:
        import rosbags  # noqa: F401
    except ImportError:
        raise InputError("reading ROS bags needs the rosbags package: pip install 'dinofeat[robotics]'") from None


def check_bag_path(bag) -> Path:
    """The BAG argument as a Path, after checking it is one of the forms `rosbags` reads."""
    path = Path(bag)
    if path.is_dir():
        if not (path / "metadata.yaml").is_file():
            raise InputError(f"BAG {str(path)!r}: a rosbag2 folder needs its metadata.yaml (or pass the .mcap / "
                             ".db3 file inside it)")
        return path
    if not path.is_file():
        raise InputError(f"BAG {str(path)!r}: not found; expected a rosbag2 folder, a .mcap / .db3 file or a "
                         "ROS 1 .bag")
    if path.suffix not in (".mcap", ".db3", ".bag"):
        raise InputError(f"BAG {str(path)!r}: unknown kind {path.suffix!r}; expected a rosbag2 folder (with "
                         "metadata.yaml), a .mcap / .db3 file or a ROS 1 .bag")
    return path


def open_reader(bag):
    """An open rosbags `AnyReader` of `bag` (close it); `InputError` for a bag rosbags cannot open."""
    _rosbags()
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    path = check_bag_path(bag)
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as e:
        raise InputError(f"BAG {str(path)!r}: cannot open ({type(e).__name__}: {' '.join(str(e).split())})") \
            from None
    return reader


def bag_frames(bag, topic: str) -> Iterator[BagFrame]:
    """The messages of `topic` (sensor_msgs/Image or CompressedImage) in bag order (receive time).

    Raises `InputError` for an unreadable bag or a topic that is absent or not an image topic (naming the
    image topics the bag has). A message that cannot be deserialised raises `InputError` naming its index.
    """
    _rosbags()
    from rosbags.highlevel import AnyReaderError

    path = check_bag_path(bag)
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        images = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES + COMPRESSED_TYPES})
        if not conns or any(c.msgtype not in IMAGE_TYPES + COMPRESSED_TYPES for c in conns):
            what = "has no topic" if not conns else f"topic is {conns[0].msgtype}, not an image, on"
            raise InputError(f"--topic {topic!r}: the bag {what} {topic!r}; its image topics: "
                             f"{', '.join(images) or '(none)'}")
        for index, (conn, log_ns, raw) in enumerate(reader.messages(connections=conns)):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except (AnyReaderError, ValueError, IndexError, KeyError) as e:
                raise InputError(f"BAG {str(path)!r}: message {index} on {topic!r} cannot be deserialised "
                                 f"({type(e).__name__}: {e})") from None
            yield BagFrame(index=index, stamp_ns=stamp_ns(msg.header.stamp), log_ns=int(log_ns),
                           frame_id=str(msg.header.frame_id), msg=msg, msgtype=conn.msgtype)
    finally:
        reader.close()


def write_image_bag(path, frames: Iterable, topic: str = "/camera/image_raw", *, storage: str = "mcap",
                    frame_id: str = "camera") -> Path:
    """Write camera frames as a bag; returns `path`.

    Args:
        path: `X.bag` (ROS 1), `X.mcap` (a bare MCAP file), or a rosbag2 folder (`storage` "mcap" or "sqlite3").
            Must not exist.
        frames: (stamp_ns, frame, encoding) per message: a uint8 array with encoding rgb8 / bgr8 / mono8 writes a
            sensor_msgs/Image; bytes with a format ("jpeg", "png") write a sensor_msgs/CompressedImage. All
            frames of one bag must be of one kind. The receive time is the stamp.
        frame_id: header frame_id of every message.
    """
    _rosbags()
    import numpy as np
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if path.exists():
        raise OutputError(f"{str(path)!r} exists already; bags are written new")
    if storage not in ("mcap", "sqlite3"):
        raise InputError(f"storage={storage!r}: expected 'mcap' or 'sqlite3'")
    ros1 = path.suffix == ".bag"
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.LATEST)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Image, Compressed = ts.types[IMAGE_MSGTYPE], ts.types[COMPRESSED_MSGTYPE]

    def message(stamp: int, frame, encoding: str):
        header = {"stamp": Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), "frame_id": frame_id}
        if ros1:
            header["seq"] = 0
        if isinstance(frame, (bytes, bytearray)):
            return COMPRESSED_MSGTYPE, Compressed(header=Header(**header), format=encoding,
                                                  data=np.frombuffer(bytes(frame), dtype=np.uint8))
        return IMAGE_MSGTYPE, Image(header=Header(**header), **image_fields(frame, encoding))

    def serialize(msg, msgtype):
        return ts.serialize_ros1(msg, msgtype) if ros1 else ts.serialize_cdr(msg, msgtype)

    if ros1:
        from rosbags.rosbag1 import Writer as Writer1

        writer, target = Writer1(path), path
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        bare = path.suffix == ".mcap"
        target = Path(tempfile.mkdtemp(prefix=".dinofeat-bag.", dir=path.parent)) / path.stem if bare else path
        plugin = StoragePlugin.MCAP if bare or storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(target, version=9, storage_plugin=plugin)
    conn = None
    with writer:
        for stamp, frame, encoding in frames:
            msgtype, msg = message(int(stamp), frame, encoding)
            if conn is None:
                conn = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conn, int(stamp), serialize(msg, msgtype))
    if not ros1 and path.suffix == ".mcap":
        inner = next(target.glob("*.mcap"))
        inner.replace(path)
        shutil.rmtree(target.parent)
    return path


def read_frames(bag, topic: str | None = None) -> Iterator[tuple[int, object, str]]:
    """(stamp_ns, frame, encoding) of each message of an image topic, decoded (`BagFrame.decode`), in bag order.

    `topic` None: the bag's only Image / CompressedImage topic (`InputError` naming them when there are several).
    """
    if topic is None:
        topic = only_image_topic(bag)
    for f in bag_frames(bag, topic):
        image, encoding = f.decode()
        yield f.stamp_ns, image, encoding


def only_image_topic(bag) -> str:
    """The one Image / CompressedImage topic of `bag` (`InputError` when there is none or several)."""
    reader = open_reader(bag)
    try:
        topics = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES + COMPRESSED_TYPES})
    finally:
        reader.close()
    if len(topics) != 1:
        raise InputError(f"BAG {str(bag)!r}: {len(topics)} image topics ({', '.join(topics) or 'none'}); name one "
                         "with --topic")
    return topics[0]
