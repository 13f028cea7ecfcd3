"""Stream layer: the streaming API for robots: `FrameStream` (keyframe + frames in, `StreamMatch` out).

Owns: `FrameStream` (stream.py), `StreamMatch` (result.py), frame decoding (frames.py: `ENCODINGS`). Its latency
benchmark, `dinofeat bench latency`, lives in `dinofeat.bench.latency`.
May import: apps, pipeline, correspondences, engine, export, model, kernels and the base layer; today
correspondences, engine, model, config, errors and limits. Not serve, distributed, robotics or bench (above it).
See docs/robotics.md.
"""

from ..config import ExtractorConfig, MatchConfig
from .frames import ENCODINGS
from .result import StreamMatch
from .stream import FrameStream

__all__ = ["ENCODINGS", "ExtractorConfig", "FrameStream", "MatchConfig", "StreamMatch"]
