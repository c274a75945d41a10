"""Integer codes for raw ids, stable across the parts of a pass over the interactions."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
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


def parquet_batches(path, columns: list[str] | None = None, rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """A parquet file as pandas frames of at most ``rows`` rows, in file order."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
        yield batch.to_pandas()


class ColumnReader:
    """One column of a parquet file handed out ``take(n)`` values at a time, in file order (a datetime
    column as int64 nanoseconds): to walk a file in step with parts of other sizes."""

    def __init__(self, path, column: str, rows: int | None = None) -> None:
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=rows or BATCH_ROWS, columns=[column])
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
