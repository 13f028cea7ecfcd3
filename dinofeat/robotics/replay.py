"""`replay`: match every frame of a bag's image topic to a reference through the streaming API.

Reference policies (`--reference`):
    first      the topic's first frame; every later frame is matched to it
    every:N    frames 0, N, 2N, ... become the reference in turn; each frame is matched to the reference current
               when it arrives, then (frames N, 2N, ...) replaces it, so every frame but the first has a row
    FILE       an image file; every frame is matched to it (image1 = FILE as given)
One result per matched frame, in bag order: image1 = the reference (`TOPIC@STAMP_NS` or FILE), image2 =
`TOPIC@STAMP_NS` of the frame, points1 in the reference, points2 in the frame, exactly what `dinofeat match`
gives for the same two images (outputs: `dinofeat.robotics.outputs`). Frames are identified by their header
stamp: a resumed replay keeps the successful results of the stamps already written and redoes the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DinofeatError, InputError
from ..pipeline.results import PairResult, result_row
from .bag import bag_frames, check_bag_path, open_reader
from .outputs import open_output


@dataclass(frozen=True)
class ReferencePolicy:
    """kind: "first" | "every" | "file"; every: N of every:N; file: the reference image of "file"."""

    kind: str
    every: int = 0
    file: str | None = None

    def is_reference(self, index: int) -> bool:
        """Whether frame `index` of the topic becomes the reference (after its own match)."""
        return (self.kind == "first" and index == 0) or (self.kind == "every" and index % self.every == 0)


def parse_reference(text: str) -> ReferencePolicy:
    """`first`, `every:N` (N >= 1) or the path of an image file."""
    text = str(text)
    if text == "first":
        return ReferencePolicy("first")
    if text.startswith("every:"):
        n = text[len("every:"):]
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--reference {text!r}: expected every:N with an integer N >= 1 (e.g. every:30)")
        return ReferencePolicy("every", every=int(n))
    if not Path(text).is_file():
        raise InputError(f"--reference {text!r}: expected first, every:N or an existing image file")
    return ReferencePolicy("file", file=text)


@dataclass
class ReplaySummary:
    """frames: messages on the topic; matched: frames matched in this run; kept: results kept from before;
    failed: frames whose row has an error (or, MCAP, no messages); out: the output path."""

    frames: int = 0
    matched: int = 0
    kept: int = 0
    failed: int = 0
    out: Path | None = None


def count_frames(bag, topic: str) -> int | None:
    """Messages on `topic` (the progress bar's total), or None when the bag cannot tell."""
    try:
        reader = open_reader(bag)
    except DinofeatError:  # only the bar's total: the replay itself reports a bad bag
        return None
    try:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)
    finally:
        reader.close()


def replay(bag, topic: str, out, *, reference: str = "first", extractor_config=None, match_config=None,
           resume: bool = False, progress: bool = False, extractor=None, on_error=None) -> ReplaySummary:
    """Replay `topic` of `bag` into `out` (.parquet or .mcap); see the module docstring.

    Args:
        extractor_config, match_config: `dinofeat.config.ExtractorConfig` / `MatchConfig` (defaults: theirs).
        resume: keep the successful results of an existing `out` (by frame stamp) and match only the others.
        extractor: an existing `Extractor` to share (its model settings then replace the config's).
        on_error: called with (frame index, stamp_ns, message) for each failed frame (default: nothing).
    Returns:
        `ReplaySummary`. A bad argument raises `InputError` before anything is written; a frame that cannot be
        decoded or matched is that frame's error.
    """
    from tqdm import tqdm

    from ..config import ExtractorConfig, MatchConfig
    from ..stream import FrameStream

    policy = parse_reference(reference)
    check_bag_path(bag)
    ec, mc = extractor_config or ExtractorConfig(), match_config or MatchConfig()
    frames = bag_frames(bag, topic)
    first = next(frames, None)  # opens the bag: a bad bag or topic fails here, before the output exists
    if first is None:
        raise InputError(f"--topic {topic!r}: no messages on this topic")
    stream = ref = None
    summary = ReplaySummary(out=Path(out))
    bar = tqdm(total=count_frames(bag, topic), desc="dinofeat replay", unit="frame", disable=not progress)
    if policy.kind == "file":
        import numpy as np

        from ..engine.preprocess import load_image

        image = np.asarray(load_image(policy.file, name="--reference"))
        stream = FrameStream(ec, mc, frame_size=image.shape[:2], encoding="rgb8", dynamic=True,
                             extractor=extractor)
        stream.set_reference(image)
        ref = (policy.file, 0, policy.file)
    ref_error = None  # why the current reference frame could not be used
    with open_output(out, resume) as output:
        for frame in _chain(first, frames):
            summary.frames += 1
            bar.update()
            is_ref = policy.is_reference(frame.index)
            need_match = ref is not None and frame.stamp_ns not in output.done
            if ref is not None and not need_match:
                output.keep(frame.stamp_ns)
                summary.kept += 1
            if not (need_match or is_ref):
                continue
            name, image, match, error = f"{topic}@{frame.stamp_ns}", None, None, None
            t0 = time.perf_counter()
            try:
                image, encoding = frame.decode()
                if stream is None:
                    stream = FrameStream(ec, mc, frame_size=image.shape[:2], encoding=encoding, dynamic=True,
                                         extractor=extractor)
                if need_match and ref_error is None:
                    match = stream.match(image, encoding=encoding).wait()
            except DinofeatError as e:
                error = " ".join(str(e).split())
            if need_match:
                if ref_error is not None:
                    error = f"its reference {ref[0]} could not be used: {ref_error}"
                result = PairResult(index=frame.index, image1=ref[0], image2=name, error=error,
                                    result=match.correspondences if match is not None else None,
                                    seconds=time.perf_counter() - t0)
                row = {**result_row(result, ref[0], name), "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id}
                output.write(row, match, frame, ref)
                summary.matched += error is None
                summary.failed += error is not None
                if error is not None and on_error is not None:
                    on_error(frame.index, frame.stamp_ns, error)
            if is_ref:
                ref, ref_error = (name, frame.stamp_ns, frame.frame_id), None
                try:
                    if image is None or stream is None:  # the frame did not decode: `error` says why
                        raise InputError(error)
                    stream.set_reference(image, encoding=encoding)
                except DinofeatError as e:
                    ref_error = " ".join(str(e).split())
    bar.close()
    return summary


def _chain(first, rest):
    yield first
    yield from rest
