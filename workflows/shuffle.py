"""Shuffle rows that do not fit in memory: parquet parts in, shuffled parquet parts out.

Two passes, each holding one part in memory: every incoming row goes to a random bucket file
(``BUCKET_ROWS`` rows per bucket on average), then each bucket is read, permuted and written as
one output part. The result is a uniformly random order of all rows (each row's bucket is
uniform and each bucket's order is a uniform permutation), read back by the merlin Loader one
part at a time, so training memory does not grow with the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BUCKET_ROWS = 1_000_000


@dataclass
class ShuffledRows:
    """The shuffled parts (in order) and how many rows they hold."""

    files: list[str]
    rows: int

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All rows in their shuffled order (for small data and tests)."""
        return pd.concat([pd.read_parquet(f, columns=columns) for f in self.files], ignore_index=True)


def shuffle_parts(parts: Iterable[pd.DataFrame], expected_rows: int, folder: Path, seed: int,
                  bucket_rows: int = BUCKET_ROWS) -> ShuffledRows:
    """Write the rows of ``parts`` (same columns each) into ``folder`` in a random order.

    ``expected_rows`` (the total, known up front) sets the number of buckets; the rows may be
    fewer. Files are ``part_NNNNN.parquet``; the bucket files are removed as they are used.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_buckets = max(1, math.ceil(expected_rows / bucket_rows))
    buckets = [folder / f"bucket_{b:05d}.parquet" for b in range(n_buckets)]
    writers: dict[int, pq.ParquetWriter] = {}
    schema = None
    try:
        for part in parts:
            table = pa.Table.from_pandas(part, preserve_index=False)
            schema = schema or table.schema
            if not len(part):
                continue
            bucket = rng.integers(0, n_buckets, len(part))
            order = np.argsort(bucket, kind="stable")
            table = table.take(pa.array(order))
            start = 0
            for b, count in enumerate(np.bincount(bucket, minlength=n_buckets)):
                if count:
                    if b not in writers:
                        writers[b] = pq.ParquetWriter(buckets[b], schema)
                    writers[b].write_table(table.slice(start, count))
                start += count
    finally:
        for writer in writers.values():
            writer.close()
    files, rows = [], 0
    for b in sorted(writers):
        frame = pd.read_parquet(buckets[b])
        frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
        out = folder / f"part_{len(files):05d}.parquet"
        frame.to_parquet(out, index=False)
        buckets[b].unlink()
        files.append(str(out))
        rows += len(frame)
    if not files and schema is not None:  # no rows: one empty part keeps the columns
        out = folder / "part_00000.parquet"
        pq.write_table(schema.empty_table(), out)
        files.append(str(out))
    return ShuffledRows(files, rows)
