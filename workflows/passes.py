"""Passes over the interactions file, a batch at a time: the split, then the history aggregates.

Nothing here holds the interactions whole: the driver's memory is O(users + items) plus one
batch (``codes.BATCH_ROWS`` rows), so H&M's 31.8M rows pass like 1M. The split files are written as
they are read, in the input's row order, in row groups of at most ``part_rows`` rows (the parts
the transform later reads, one task each).

With a Dask client each pass runs on the workers, a run of row groups (about ``batch_rows`` rows) a
task, all at once; the driver merges what they hand back in row order (``SplitSpan.merge``,
``HistoryStats.merge``), so the result is the single pass's, file for file.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflows import codes
from workflows.codes import IdCodes, parquet_batches, row_group_chunks
from workflows.history import HistoryStats
from workflows.splits import SplitRule, SplitSpan, check_split, split_rule

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


def _split_rows(source: Path, groups: list[int] | None, rule: SplitRule, needed: list[str], batch_rows: int,
                part_rows: int, paths: dict[str, Path]) -> tuple[dict[str, int], int]:
    """Write the training and test rows of ``source`` (its row ``groups``, or all of it) to ``paths``
    in row order, ``batch_rows`` rows at a time; the row counts and the latest training time (ns)."""
    file = pq.ParquetFile(source)
    rows = {"train": 0, "test": 0}
    latest_train = np.iinfo(np.int64).min
    writers = {name: pq.ParquetWriter(path, file.schema_arrow) for name, path in paths.items()}
    try:
        for batch in file.iter_batches(batch_size=batch_rows, row_groups=groups):
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
    return rows, latest_train


def _span_of_groups(source: Path, groups: list[int], needed: list[str], per_user: bool, batch_rows: int) -> SplitSpan:
    """A Dask task: what the split rule needs from some row groups of the interactions."""
    span = SplitSpan(per_user)
    for part in parquet_batches(source, needed, batch_rows, groups):
        span.add(part)
    return span


def split_files(source: Path, out: Path, how: str, test_days: int, part_rows: int,
                batch_rows: int | None = None, client=None) -> SplitFiles:
    """Split ``source`` (interactions.parquet) into ``out/train.parquet`` and ``out/test.parquet``,
    reading ``batch_rows`` rows at a time (default ``codes.BATCH_ROWS``).

    With a Dask ``client`` both passes (the rule's, then the writing) run on the workers, about
    ``batch_rows`` rows of row groups a task, and each split is a folder of part files, one per task,
    in row order (``codes.parquet_parts``; pandas and pyarrow read it like the file).
    """
    check_split(how, test_days)
    batch_rows = batch_rows or codes.BATCH_ROWS
    needed = ["user_id", "timestamp"] if how == "user-last" else ["timestamp"]
    paths = {"train": out / "train.parquet", "test": out / "test.parquet"}
    if client is None:
        rule = split_rule(parquet_batches(source, needed, batch_rows), how, test_days)
        rows, latest_train = _split_rows(source, None, rule, needed, batch_rows, part_rows, paths)
    else:
        chunks = row_group_chunks(source, batch_rows)
        span = SplitSpan(per_user=how == "user-last")
        for share in _in_order(client, [(_span_of_groups, file, groups, needed, how == "user-last", batch_rows)
                                        for file, groups in chunks]):
            span.merge(share)
        rule = span.rule(how, test_days)
        for path in paths.values():
            path.mkdir()
        shared_rule = client.scatter(rule, broadcast=True, hash=False)  # user-last: O(users), sent once
        rows, latest_train = {"train": 0, "test": 0}, np.iinfo(np.int64).min
        tasks = [(_split_rows, file, groups, shared_rule, needed, batch_rows, part_rows,
                  {name: path / f"part.{i:06d}.parquet" for name, path in paths.items()})
                 for i, (file, groups) in enumerate(chunks)]
        for task_rows, task_latest in _in_order(client, tasks):
            rows = {name: rows[name] + task_rows[name] for name in rows}
            latest_train = max(latest_train, task_latest)
    cutoff = rule.cutoff if how == "time" else pd.Timestamp(latest_train) + pd.Timedelta(seconds=1)
    return SplitFiles(paths["train"], paths["test"], rule, cutoff, rows, list(pq.read_schema(source).names))


def _count_groups(path: Path, groups: list[int], columns: list[str], context: list[str], user_ids: pd.Index,
                  item_ids: pd.Index, cutoff: pd.Timestamp, buckets: int, scratch: Path | None,
                  batch_rows: int) -> tuple:
    """A Dask task: the history counts of some row groups of the training split (``HistoryShare``), and
    the context columns' value counts and distinct values there."""
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)  # a retried task starts afresh
        scratch.mkdir(parents=True)
    # the id tables are scattered to each worker once: their hash tables are built once per worker
    stats = HistoryStats(None, None, cutoff, buckets, scratch, codes=(IdCodes(user_ids), IdCodes(item_ids)))
    counts: dict[str, pd.Series] = {col: pd.Series(dtype=np.int64) for col in context}
    distinct: dict[str, list[np.ndarray]] = {col: [] for col in context}
    for part in parquet_batches(path, columns, batch_rows, groups):
        stats.add(part)
        for col in context:
            counts[col] = counts[col].add(part[col].value_counts(), fill_value=0).astype(np.int64)
            distinct[col].append(pd.unique(part[col]))
    return stats.share(), counts, {col: pd.unique(np.concatenate(v)) if v else np.array([]) for col, v in distinct.items()}


def _distinct_of_groups(path: Path, groups: list[int], columns: list[str], batch_rows: int) -> dict[str, np.ndarray]:
    """A Dask task: each column's distinct values in some row groups, in order of first appearance."""
    distinct: dict[str, list[np.ndarray]] = {col: [] for col in columns}
    for part in parquet_batches(path, columns, batch_rows, groups):
        for col in columns:
            distinct[col].append(pd.unique(part[col]))
    return {col: pd.unique(np.concatenate(v)) if v else np.array([]) for col, v in distinct.items()}


def _in_order(client, tasks: list[tuple]):
    """Results of ``client.submit(*task)`` for each task, in the tasks' order (all run at once; each
    result is released once handed over, so the driver holds one at a time)."""
    futures = [client.submit(*task, pure=False) for task in tasks]
    try:
        for i, future in enumerate(futures):
            yield future.result()
            futures[i] = None
            future.release()
    finally:
        for future in futures:
            if future is not None:
                future.cancel()


def history_pass(splits: SplitFiles, users: pd.DataFrame, items: pd.DataFrame, context: list[str],
                 scratch: Path, batch_rows: int | None = None, client=None) -> HistoryPass:
    """The user and item feature tables as of the cutoff, from one pass over the training split
    (and one over the test split for the ids it adds).

    With a Dask ``client`` the row groups are counted on the workers, about ``batch_rows`` rows a
    task (they need ``scratch``'s file system), and the driver merges their counts in row order: the
    same tables as the pass in the driver.
    """
    batch_rows = batch_rows or codes.BATCH_ROWS
    groups = max(1, math.ceil(splits.rows["train"] / PAIRS_PER_GROUP))
    scratch.mkdir(parents=True, exist_ok=True)
    stats = HistoryStats(users, items, splits.cutoff, buckets=groups, scratch=scratch if groups > 1 else None)
    columns = [c for c in ("user_id", "item_id", "timestamp", "price", *context) if c in splits.columns]
    counts = {col: pd.Series(dtype=np.int64) for col in context}
    seen: dict[str, list[np.ndarray]] = {col: [] for col in context}

    def count_context(value_counts: dict[str, pd.Series], distinct: dict[str, np.ndarray]) -> None:
        for col in context:
            counts[col] = counts[col].add(value_counts[col], fill_value=0).astype(np.int64)
            seen[col].append(distinct[col])

    test_columns = ["user_id", "item_id", *context]
    if client is None:
        for part in parquet_batches(splits.train, columns, batch_rows):
            stats.add(part)
            count_context({c: part[c].value_counts() for c in context}, {c: pd.unique(part[c]) for c in context})
        test_parts = ({c: pd.unique(part[c]) for c in test_columns}
                      for part in parquet_batches(splits.test, test_columns, batch_rows))
    else:
        user_ids, item_ids = client.scatter([stats.user_codes.known, stats.item_codes.known], broadcast=True, hash=False)
        tasks = [(_count_groups, file, chunk, columns, context, user_ids, item_ids, splits.cutoff, groups,
                  scratch / f"share_{i:06d}" if groups > 1 else None, batch_rows)
                 for i, (file, chunk) in enumerate(row_group_chunks(splits.train, batch_rows))]
        for share, value_counts, distinct in _in_order(client, tasks):
            stats.merge(share)
            count_context(value_counts, distinct)
        test_parts = _in_order(client, [(_distinct_of_groups, file, chunk, test_columns, batch_rows)
                                        for file, chunk in row_group_chunks(splits.test, batch_rows)])
    test_users, test_items = [], []
    for distinct in test_parts:
        test_users.append(np.unique(stats.user_codes(distinct["user_id"])))  # ids only in test get codes too
        test_items.append(np.unique(stats.item_codes(distinct["item_id"])))
        for col in context:
            seen[col].append(distinct[col])
    user_table, item_table = stats.tables()
    for file in scratch.glob("pairs_*.bin"):
        file.unlink()
    for folder in scratch.glob("share_*"):
        shutil.rmtree(folder)
    for col in context:
        counts[col].index.name = col
    return HistoryPass(
        user_table, item_table, stats, counts,
        {col: pd.unique(np.concatenate(v)) if v else np.array([]) for col, v in seen.items()},
        np.unique(np.concatenate(test_users)) if test_users else np.zeros(0, np.int64),
        np.unique(np.concatenate(test_items)) if test_items else np.zeros(0, np.int64),
    )
