"""The ROS 2 node's work without rclpy: an Image message in, the PointCloud2 fields (and a debug image) out.

`NodeCore.process(msg)` decodes a `sensor_msgs/Image` (any object with its fields: an rclpy message, a rosbags
one), matches it to the reference through `dinofeat.stream.FrameStream`, and returns `NodeOutput` (None while
there is no reference yet). The reference follows `NodeSettings.reference` like `dinofeat replay --reference`,
counted over the frames the node processed (frames dropped by the queue of 1 do not count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .images import decode_image, image_fields
from .pointcloud import cloud_fields


@dataclass
class NodeOutput:
    """cloud: PointCloud2 fields (`pointcloud.cloud_fields`); debug: Image fields of the drawn matches (rgb8)
    or None; pairs: K; frame_index / reference_index: the processed-frame counts of the two images."""

    cloud: dict
    debug: dict | None
    pairs: int
    frame_index: int
    reference_index: int


class NodeCore:
    def __init__(self, extractor_config, match_config, settings, *, extractor=None):
        from ..engine.preprocess import load_image

        self.extractor_config, self.match_config, self.settings = extractor_config, match_config, settings
        self._extractor = extractor
        self.stream = None
        self.frames = 0  # frames processed
        self._reference = None  # (rgb8 frame for drawing, processed-frame index)
        if settings.reference.kind == "file":
            image = np.asarray(load_image(settings.reference.file, name="parameter reference"))
            self._stream_for(image.shape[:2], "rgb8").set_reference(image, encoding="rgb8")
            self._reference = (image, -1)

    def _stream_for(self, size, encoding):
        if self.stream is None:
            from ..stream import FrameStream

            self.stream = FrameStream(self.extractor_config, self.match_config, frame_size=tuple(size),
                                      encoding=encoding, dynamic=True, extractor=self._extractor)
            self._extractor = self.stream.extractor
        return self.stream

    def warm_up(self, size=(224, 224)) -> None:
        """Load the model now (the first frame would otherwise wait for it)."""
        if self.stream is None:
            self._stream_for(size, "rgb8")

    def process(self, msg) -> NodeOutput | None:
        """Match one Image message; `InputError` for a frame that cannot be decoded or matched."""
        index = self.frames
        self.frames += 1
        frame, encoding = decode_image(msg, name=f"image (stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec})")
        stream = self._stream_for(frame.shape[:2], encoding)
        out = None
        if self._reference is not None:
            m = stream.match(frame, encoding=encoding).wait()
            debug = None
            if self.settings.debug_image:
                debug = image_fields(np.asarray(_draw(self._reference[0], _rgb(frame, encoding), m)), "rgb8")
            out = NodeOutput(cloud=cloud_fields(m.frame_points1, m.frame_points2, m.scores), debug=debug,
                             pairs=len(m), frame_index=index, reference_index=self._reference[1])
        if self.settings.reference.is_reference(index):
            stream.set_reference(frame, encoding=encoding)
            self._reference = (_rgb(frame, encoding), index)
        return out


def _rgb(frame: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "bgr8":
        return frame[..., ::-1]
    if encoding == "mono8":
        return np.repeat(frame[..., None], 3, axis=2)
    return frame


def _draw(reference: np.ndarray, frame: np.ndarray, match):
    """The pairs drawn on the input frames (reference | frame), as `dinofeat match` draws them."""
    from PIL import Image

    from ..viz import draw_correspondences

    def points(t):
        return [(int(round(y)), int(round(x))) for y, x in t.detach().cpu().numpy()]

    corr = replace(match.correspondences, image1=Image.fromarray(np.ascontiguousarray(reference)),
                   image2=Image.fromarray(np.ascontiguousarray(frame)), points1=points(match.frame_points1),
                   points2=points(match.frame_points2))
    return draw_correspondences(corr)
