"""Result rows of a batch job: the Parquet schema and an atomic writer (temp file, renamed when complete)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa

RESULT_SCHEMA = pa.schema([
    pa.field("image1", pa.string()),                          # as given
    pa.field("image2", pa.string()),
    pa.field("points1", pa.list_(pa.list_(pa.int64()))),      # [[y, x], ...] in image 1's resized pixels
    pa.field("points2", pa.list_(pa.list_(pa.int64()))),
    pa.field("similarities", pa.list_(pa.float32())),         # cosine of each returned pair
    pa.field("num_best_buddies", pa.int64()),                 # foreground best buddies
    pa.field("seconds", pa.float64()),                        # time spent on this pair
    pa.field("error", pa.string()),                           # null on success
])


class ParquetSink:
    """Write tables to `path` through a temp file beside it; renamed into place on a clean close only."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = pq.ParquetWriter(str(self.tmp), RESULT_SCHEMA)

    def write(self, table: pa.Table) -> None:
        if len(table):
            self.writer.write_table(table)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.writer.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
