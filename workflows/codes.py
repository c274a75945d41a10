"""Integer codes for raw ids, stable across the parts of a pass over the interactions; reading
parquet files and folders in batches and row-group runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


# Rows per batch of a pass over an interactions file: the unit of the driver's memory.
BATCH_ROWS = 1_000_000


class IdCodes:
    """Codes for ids: an id of ``known`` (a feature table's id column, no duplicates) is coded by its
    position there; ids the table lacks get the next codes, in order of first appearance."""

    def __init__(self, known) -> None:
        self.known = known if isinstance(known, pd.Index) else pd.Index(known)  # an Index keeps its hash table
        if not self.known.is_unique:
            raise ValueError(f"{self.known.name or 'ids'}: duplicate ids in the feature table")
        self.extra = pd.Index([], dtype=self.known.dtype)

    def __len__(self) -> int:
        return len(self.known) + len(self.extra)

    def __call__(self, values) -> np.ndarray:
        values = np.asarray(values)
        codes = self.known.get_indexer(values).astype(np.int64)
        missing = codes < 0
        if missing.any():
            unknown = values[missing]
            extra = self.extra.get_indexer(unknown)
            if (extra < 0).any():
                self.extra = self.extra.append(pd.Index(pd.unique(unknown[extra < 0])))
                extra = self.extra.get_indexer(unknown)
            codes[missing] = len(self.known) + extra
        return codes

    def ids(self) -> np.ndarray:
        """Every coded id, by code."""
        return np.concatenate([self.known.to_numpy(), self.extra.to_numpy()])


def isin(values, test) -> np.ndarray:
    """``np.isin(values, test)`` by hashing. numpy compares every pair of elements when either side
    holds Python objects (string ids): 150k label users x 1.37M users at H&M size ran for hours."""
    return pd.Series(np.asarray(values)).isin(pd.Index(np.asarray(test))).to_numpy()


def grown(values: np.ndarray, n: int, fill) -> np.ndarray:
    """``values`` extended to length ``n`` with ``fill`` (unchanged when long enough)."""
    if len(values) >= n:
        return values
    return np.concatenate([values, np.full(n - len(values), fill, dtype=values.dtype)])


def parquet_parts(path) -> list[Path]:
    """The files of a parquet file or folder: a split written by Dask workers is a folder of part
    files whose names sort in row order."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def parquet_schema(path) -> pa.Schema:
    """The arrow schema of a parquet file or folder."""
    return pq.read_schema(parquet_parts(path)[0])


def row_groups(path) -> list[tuple[Path, int]]:
    """Every row group of a parquet file or folder, in row order: (file, group)."""
    return [(file, group) for file in parquet_parts(path) for group in range(pq.ParquetFile(file).num_row_groups)]


def row_group_chunks(path, rows: int) -> list[tuple[Path, list[int]]]:
    """A parquet file's (or folder's) row groups in consecutive runs of about ``rows`` rows, a run
    within one file and one group at least: the tasks of a pass on Dask workers."""
    chunks: list[tuple[Path, list[int]]] = []
    for file in parquet_parts(path):
        meta = pq.ParquetFile(file).metadata
        have = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if not chunks or chunks[-1][0] != file or (have + n > rows and chunks[-1][1]):
                chunks.append((file, []))
                have = 0
            chunks[-1][1].append(group)
            have += n
    return chunks


def parquet_batches(path, columns: list[str] | None = None, rows: int = BATCH_ROWS,
                    groups: list[int] | None = None) -> Iterator[pd.DataFrame]:
    """A parquet file or folder as pandas frames of at most ``rows`` rows, in row order (of a file,
    only its row ``groups`` when given)."""
    for file in parquet_parts(path):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=rows, columns=columns, row_groups=groups):
            yield batch.to_pandas()


def row_chunks(rows: pd.DataFrame | list[Path], columns: list[str], size: int) -> Iterator[pd.DataFrame]:
    """``columns`` of model rows (a frame, or parquet files read in turn as one sequence of rows) in
    frames of ``size`` rows (the last one shorter): the same chunks either way."""
    if isinstance(rows, pd.DataFrame):
        for start in range(0, len(rows), size):
            yield rows.iloc[start:start + size][columns]
        return
    pending: list[pd.DataFrame] = []
    have = 0
    for path in rows:
        for batch in parquet_batches(path, columns, size):
            pending.append(batch)
            have += len(batch)
            while have >= size:
                whole = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
                yield whole.iloc[:size]
                pending = [whole.iloc[size:].reset_index(drop=True)] if len(whole) > size else []
                have -= size
    if have:
        yield pd.concat(pending, ignore_index=True)


class ColumnReader:
    """One column of a parquet file handed out ``take(n)`` values at a time, in file order (a datetime
    column as int64 nanoseconds): to walk a file in step with parts of other sizes."""

    def __init__(self, path, column: str, rows: int | None = None) -> None:
        self._batches = (batch for file in parquet_parts(path)
                         for batch in pq.ParquetFile(file).iter_batches(batch_size=rows or BATCH_ROWS, columns=[column]))
        self._buffer = np.zeros(0, np.int64)

    def take(self, n: int) -> np.ndarray:
        pieces, have = [self._buffer], len(self._buffer)
        while have < n:
            batch = next(self._batches, None)
            if batch is None:
                break
            values = batch.column(0).to_pandas()
            if pd.api.types.is_datetime64_any_dtype(values):
                values = values.astype("datetime64[ns]").to_numpy().view(np.int64)
            pieces.append(np.asarray(values))
            have += len(pieces[-1])
        values = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        self._buffer = values[n:]
        return values[:n]
