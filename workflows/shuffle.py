"""Shuffle rows that do not fit in memory: parquet parts in, shuffled parquet parts out.

Two passes, each holding one part in memory: every incoming row goes to a bucket file, then each
bucket is read, put in order and written as one output part. :func:`shuffle_parts` draws a
uniformly random order (each row's bucket is uniform, ``BUCKET_ROWS`` rows per bucket on average,
and each bucket's order a uniform permutation); :func:`permute_parts` writes a given order (each
bucket holds ``bucket_rows`` consecutive output positions). The parts are read back by the merlin
Loader one at a time, so training memory does not grow with the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BUCKET_ROWS = 1_000_000
POSITION = "__position"  # permute_parts' bucket column: each row's place in the output


@dataclass
class ShuffledRows:
    """The shuffled parts (in order) and how many rows they hold."""

    files: list[str]
    rows: int

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All rows in their shuffled order (for small data and tests)."""
        return pd.concat([pd.read_parquet(f, columns=columns) for f in self.files], ignore_index=True)


class _Buckets:
    """Bucket files of one shuffle: rows appended to each, then each read, arranged and written as a part."""

    def __init__(self, folder: Path, n_buckets: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.n = folder, n_buckets
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.schema: pa.Schema | None = None

    def add(self, table: pa.Table, bucket: np.ndarray) -> None:
        """Append row ``i`` of ``table`` to bucket ``bucket[i]``."""
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:  # a later part's dtypes (int32 vs int64...) as the first part's
            table = table.cast(self.schema)
        if not len(table):
            return
        order = np.argsort(bucket, kind="stable")
        table = table.take(pa.array(order))
        start = 0
        for b, count in enumerate(np.bincount(bucket, minlength=self.n)):
            if count:
                if b not in self.writers:
                    self.writers[b] = pq.ParquetWriter(self._file(b), self.schema)
                self.writers[b].write_table(table.slice(start, count))
            start += count

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def drain(self, arrange: Callable[[pd.DataFrame], pd.DataFrame]) -> ShuffledRows:
        """Each bucket in turn: read, ``arrange``, written as ``part_NNNNN.parquet``, bucket removed."""
        self.close()
        files, rows = [], 0
        for b in sorted(self.writers):
            frame = arrange(pd.read_parquet(self._file(b)))
            out = self.folder / f"part_{len(files):05d}.parquet"
            frame.to_parquet(out, index=False)
            self._file(b).unlink()
            files.append(str(out))
            rows += len(frame)
        if not files and self.schema is not None:  # no rows: one empty part keeps the columns
            out = self.folder / "part_00000.parquet"
            schema = self.schema.remove(self.schema.get_field_index(POSITION)) if POSITION in self.schema.names else self.schema
            pq.write_table(schema.empty_table(), out)
            files.append(str(out))
        return ShuffledRows(files, rows)

    def _file(self, b: int) -> Path:
        return self.folder / f"bucket_{b:05d}.parquet"


def shuffle_parts(parts: Iterable[pd.DataFrame], expected_rows: int, folder: Path, seed: int,
                  bucket_rows: int = BUCKET_ROWS) -> ShuffledRows:
    """Write the rows of ``parts`` (same columns each) into ``folder`` in a random order.

    ``expected_rows`` (the total, known up front) sets the number of buckets; the rows may be
    fewer. Files are ``part_NNNNN.parquet``; the bucket files are removed as they are used.
    """
    rng = np.random.default_rng(seed)
    buckets = _Buckets(folder, max(1, math.ceil(expected_rows / bucket_rows)))
    try:
        for part in parts:
            table = pa.Table.from_pandas(part, preserve_index=False)
            buckets.add(table, rng.integers(0, buckets.n, len(part)) if len(part) else np.zeros(0, np.int64))
    finally:
        buckets.close()
    return buckets.drain(lambda frame: frame.iloc[rng.permutation(len(frame))].reset_index(drop=True))


def permute_parts(parts: Iterable[pd.DataFrame], order: np.ndarray, folder: Path,
                  bucket_rows: int = BUCKET_ROWS) -> ShuffledRows:
    """Write the rows of ``parts`` into ``folder`` so that output row ``j`` is input row ``order[j]``
    (rows counted across the parts in turn): ``pd.concat(parts).iloc[order]`` without holding more
    than a part or a bucket. ``order`` must be a permutation of the input's row numbers."""
    n = len(order)
    position = np.empty(n, dtype=np.int64)
    position[np.asarray(order)] = np.arange(n)
    buckets = _Buckets(folder, max(1, math.ceil(n / bucket_rows)))
    offset = 0
    try:
        for part in parts:
            if offset + len(part) > n:
                raise ValueError(f"permute_parts: more rows than the order's {n:,}")
            mine = position[offset:offset + len(part)]
            offset += len(part)
            table = pa.Table.from_pandas(part, preserve_index=False).append_column(POSITION, pa.array(mine))
            buckets.add(table, mine // bucket_rows)
    finally:
        buckets.close()
    if offset != n:
        raise ValueError(f"permute_parts: {offset:,} rows for an order of {n:,}")
    return buckets.drain(lambda frame: frame.sort_values(POSITION).drop(columns=POSITION).reset_index(drop=True))
