"""Stream layer: the streaming API for robots: `FrameStream` (keyframe + frames in, `StreamMatch` out) and the
latency benchmark.

Owns: `FrameStream` (stream.py), `StreamMatch` (result.py), frame decoding (frames.py: `ENCODINGS`) and
`dinofeat bench latency`'s measurement (latency.py).
May import: apps, pipeline, correspondences, engine, export, model, kernels and the base layer; today
correspondences, engine, model, config, errors, limits, version and viz. Not serve, distributed or robotics
(above it). See docs/robotics.md.
"""

from ..config import ExtractorConfig, MatchConfig
from .frames import ENCODINGS
from .result import StreamMatch
from .stream import FrameStream

__all__ = ["ENCODINGS", "ExtractorConfig", "FrameStream", "MatchConfig", "StreamMatch"]
