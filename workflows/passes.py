"""Passes over the interactions file, a batch at a time: the split, then the history aggregates.

Nothing here holds the interactions whole: the driver's memory is O(users + items) plus one
batch (``codes.BATCH_ROWS`` rows), so H&M's 31.8M rows pass like 1M. The split files are written as
they are read, in the input's row order, in row groups of at most ``part_rows`` rows (the parts
the transform later reads, one task each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflows import codes
from workflows.codes import parquet_batches
from workflows.history import HistoryStats
from workflows.splits import SplitRule, split_rule

# Distinct (user, item) pairs per group when counting them (int64 keys: ~32 MB a group).
PAIRS_PER_GROUP = 4_000_000


@dataclass
class SplitFiles:
    """What the split pass wrote and saw."""

    train: Path
    test: Path
    rule: SplitRule
    cutoff: pd.Timestamp
    rows: dict[str, int]
    columns: list[str]


@dataclass
class HistoryPass:
    """The feature tables and the counts the vocabularies and the manifest need."""

    users: pd.DataFrame
    items: pd.DataFrame
    stats: HistoryStats
    context: dict[str, pd.Series] = field(default_factory=dict)  # column -> value counts over train
    context_seen: dict[str, np.ndarray] = field(default_factory=dict)  # distinct values, train then test
    test_users: np.ndarray | None = None  # codes of the test rows' distinct users
    test_items: np.ndarray | None = None


def split_files(source: Path, out: Path, how: str, test_days: int, part_rows: int,
                batch_rows: int | None = None) -> SplitFiles:
    """Split ``source`` (interactions.parquet) into ``out/train.parquet`` and ``out/test.parquet``,
    reading ``batch_rows`` rows at a time (default ``codes.BATCH_ROWS``)."""
    batch_rows = batch_rows or codes.BATCH_ROWS
    file = pq.ParquetFile(source)
    needed = ["user_id", "timestamp"] if how == "user-last" else ["timestamp"]
    rule = split_rule(parquet_batches(source, needed, batch_rows), how, test_days)
    rows = {"train": 0, "test": 0}
    latest_train = np.iinfo(np.int64).min
    paths = {"train": out / "train.parquet", "test": out / "test.parquet"}
    writers = {name: pq.ParquetWriter(path, file.schema_arrow) for name, path in paths.items()}
    try:
        for batch in file.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            is_test = rule.is_test(table.select(needed).to_pandas())
            for name, mask in (("train", ~is_test), ("test", is_test)):
                chosen = table.filter(pa.array(mask))
                if chosen.num_rows:
                    writers[name].write_table(chosen, row_group_size=part_rows)
                    rows[name] += chosen.num_rows
            if (~is_test).any():
                seconds = table.column("timestamp").to_pandas().astype("datetime64[ns]").to_numpy().view(np.int64)
                latest_train = max(latest_train, int(seconds[~is_test].max()))
    finally:
        for writer in writers.values():
            writer.close()
    cutoff = rule.cutoff if how == "time" else pd.Timestamp(latest_train) + pd.Timedelta(seconds=1)
    return SplitFiles(paths["train"], paths["test"], rule, cutoff, rows, list(file.schema_arrow.names))


def history_pass(splits: SplitFiles, users: pd.DataFrame, items: pd.DataFrame, context: list[str],
                 scratch: Path, batch_rows: int | None = None) -> HistoryPass:
    """The user and item feature tables as of the cutoff, from one pass over the training split
    (and one over the test split for the ids it adds)."""
    batch_rows = batch_rows or codes.BATCH_ROWS
    groups = max(1, math.ceil(splits.rows["train"] / PAIRS_PER_GROUP))
    scratch.mkdir(parents=True, exist_ok=True)
    stats = HistoryStats(users, items, splits.cutoff, buckets=groups, scratch=scratch if groups > 1 else None)
    columns = [c for c in ("user_id", "item_id", "timestamp", "price", *context) if c in splits.columns]
    counts = {col: pd.Series(dtype=np.int64) for col in context}
    seen: dict[str, list[np.ndarray]] = {col: [] for col in context}
    for part in parquet_batches(splits.train, columns, batch_rows):
        stats.add(part)
        for col in context:
            counts[col] = counts[col].add(part[col].value_counts(), fill_value=0).astype(np.int64)
            seen[col].append(pd.unique(part[col]))
    test_users, test_items = [], []
    for part in parquet_batches(splits.test, ["user_id", "item_id", *context], batch_rows):
        test_users.append(np.unique(stats.user_codes(part["user_id"])))  # ids only in test get codes too
        test_items.append(np.unique(stats.item_codes(part["item_id"])))
        for col in context:
            seen[col].append(pd.unique(part[col]))
    user_table, item_table = stats.tables()
    for file in scratch.glob("pairs_*.bin"):
        file.unlink()
    for col in context:
        counts[col].index.name = col
    return HistoryPass(
        user_table, item_table, stats, counts,
        {col: pd.unique(np.concatenate(v)) if v else np.array([]) for col, v in seen.items()},
        np.unique(np.concatenate(test_users)) if test_users else np.zeros(0, np.int64),
        np.unique(np.concatenate(test_items)) if test_items else np.zeros(0, np.int64),
    )
