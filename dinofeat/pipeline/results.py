"""Per-pair results: `PairResult`, the Parquet schema `RESULT_SCHEMA`, `result_row` and an atomic writer.

Parquet columns (one row per pair, in this order):
    image1, image2        string             the images as given (CSV cell, path, or `repr` of an in-memory image)
    points1, points2      list<list<int32>>  returned pairs as [y, x] in the resized images' pixels
    similarities          list<float32>      cosine similarity of each returned pair (`sim_1[indices1]`)
    num_best_buddies      int32              foreground best buddies (`bbs_mask.sum()`); null on error
    seconds               float64            time spent on the pair (see `PairResult.seconds`)
    error                 string             null on success, else one line saying what went wrong

`dinofeat replay` (`result_schema(replay=True)`) appends two columns; its image1 / image2 are `TOPIC@STAMP_NS`
(or the reference FILE as given):
    stamp_ns              int64              header stamp of the frame (image2), in nanoseconds
    frame_id              string             header frame_id of the frame

pyarrow is imported lazily: `from dinofeat.pipeline.results import RESULT_SCHEMA` imports it on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..correspondences import Correspondences

COLUMNS = ("image1", "image2", "points1", "points2", "similarities", "num_best_buddies", "seconds", "error")
REPLAY_COLUMNS = COLUMNS + ("stamp_ns", "frame_id")


@dataclass
class PairResult:
    """One pair's outcome from `Matcher.match_pairs`.

    index: position of the pair in the input; image1, image2: the pair as given.
    result: `Correspondences`, or None when `error` is set.
    error: one line (None on success). seconds: matching time of the pair plus its share of the forwards of
        the images first extracted for it (feature-store hits cost nothing here).
    """

    index: int
    image1: object
    image2: object
    result: Correspondences | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def result_schema(replay: bool = False):
    """The pyarrow schema of the results file (see the module docstring); `replay`: with stamp_ns, frame_id."""
    import pyarrow as pa

    point = pa.list_(pa.int32())
    extra = [pa.field("stamp_ns", pa.int64(), nullable=False), pa.field("frame_id", pa.string())] if replay else []
    return pa.schema([
        pa.field("image1", pa.string(), nullable=False),
        pa.field("image2", pa.string(), nullable=False),
        pa.field("points1", pa.list_(point)),
        pa.field("points2", pa.list_(point)),
        pa.field("similarities", pa.list_(pa.float32())),
        pa.field("num_best_buddies", pa.int32()),
        pa.field("seconds", pa.float64()),
        pa.field("error", pa.string()),
        *extra,
    ])


def __getattr__(name: str):
    if name == "RESULT_SCHEMA":
        return result_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def display_name(image) -> str:
    """How an image appears in the image1/image2 columns: a path as given, else a short description."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    shape = getattr(image, "shape", None) or getattr(image, "size", None)
    return f"<{type(image).__name__} {tuple(shape) if shape is not None else ''}>"


def result_row(r: PairResult, image1: str | None = None, image2: str | None = None) -> dict:
    """A `PairResult` as a dict of the Parquet columns (names as given unless image1/image2 override them)."""
    row = {"image1": image1 if image1 is not None else display_name(r.image1),
           "image2": image2 if image2 is not None else display_name(r.image2),
           "points1": None, "points2": None, "similarities": None, "num_best_buddies": None,
           "seconds": float(r.seconds), "error": r.error}
    if r.result is not None:
        c = r.result
        row["points1"] = [[int(y), int(x)] for y, x in c.points1]
        row["points2"] = [[int(y), int(x)] for y, x in c.points2]
        row["similarities"] = [float(v) for v in c.sim_1[list(c.indices1)].cpu().tolist()] if len(c) else []
        row["num_best_buddies"] = int(c.bbs_mask.sum())
    return row


def read_results(path) -> list[dict]:
    """Rows of a results file as dicts (raises whatever pyarrow raises for an unreadable file)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def successful_rows(path, flag: str = "--resume") -> list[dict]:
    """The rows of an existing results file whose `error` is null (what a resumed run keeps), in file order.
    An unreadable file raises `InputError` naming `flag`."""
    from ..errors import InputError

    try:
        rows = read_results(path)
    except Exception as e:  # noqa: BLE001 - an unreadable file is a bad argument here
        raise InputError(f"{flag}: cannot read {str(path)!r} ({type(e).__name__}: {e})") from None
    return [r for r in rows if r.get("error") is None]


def keeps_partial_output(exc_type) -> bool:
    """Whether a writer leaving a `with` block by `exc_type` keeps the whole rows written (success, an interrupt or
    a run-time error) or aborts (a `DinofeatError`: bad arguments; or another non-`Exception` exit)."""
    from ..errors import DinofeatError

    return exc_type is None or (issubclass(exc_type, (KeyboardInterrupt, Exception))
                                and not issubclass(exc_type, DinofeatError))


class PartialOutput:
    """`with` support of an output written to a temp file and renamed: `close()` (keep the whole rows written) or
    `abort()` (remove the temp file) on leaving the block, as `keeps_partial_output` decides."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if keeps_partial_output(exc_type):
            self.close()
        else:
            self.abort()
        return False


class ResultWriter(PartialOutput):
    """Writes result rows to `path` (.parquet) through a temp file beside it, renamed into place on close.

    `replay`: the schema of `dinofeat replay` (`result_schema(replay=True)`: two more columns).

    Rows are buffered and written as row groups of `rows_per_group`. `close()` (also on an exception inside a
    `with` block) finishes the file, so what is renamed is always a complete, readable file of whole rows;
    `abort()` removes the temp file and leaves `path` untouched. In a `with` block: a `DinofeatError` (bad
    arguments) or a non-`Exception` exit aborts; an interrupt or another error keeps the whole rows written.
    """

    def __init__(self, path, rows_per_group: int = 64, *, replay: bool = False):
        import pyarrow.parquet as pq

        from ..io import temp_path

        self.path = Path(path)
        self._tmp = temp_path(self.path.parent, self.path.stem, suffix=".parquet.tmp")
        self.schema = result_schema(replay)
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema)
        self._rows: list[dict] = []
        self.rows_per_group = max(1, int(rows_per_group))
        self.count = 0

    def write(self, row: dict) -> None:
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> Path:
        try:
            self._flush()
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the temp file is removed anyway
            pass
        self._tmp.unlink(missing_ok=True)
