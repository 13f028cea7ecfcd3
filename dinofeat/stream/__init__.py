"""Streaming API for robots: `FrameStream` (keyframe + frames in, `StreamMatch` out); its latency benchmark is
`dinofeat bench latency` (`dinofeat.bench.latency`).

See docs/robotics.md.
"""

from ..config import ExtractorConfig, MatchConfig
from .frames import ENCODINGS
from .result import StreamMatch
from .stream import FrameStream

__all__ = ["ENCODINGS", "ExtractorConfig", "FrameStream", "MatchConfig", "StreamMatch"]
