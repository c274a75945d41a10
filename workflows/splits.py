"""Train/test splits written with raw ids, so anyone can evaluate against them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from workflows.codes import IdCodes, grown
from workflows.config import Split


SPLITS = tuple(Split.values())


@dataclass(frozen=True)
class SplitResult:
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp  # features are computed as of this time (time: test start; user-last: end of train)


@dataclass
class SplitRule:
    """Which rows are test, decided from a first pass over the interactions (``split_rule``).

    ``time``: rows at or after ``cutoff`` (the start of the last ``test_days`` calendar days).
    ``user-last``: rows at their user's latest timestamp, for users with an earlier one too
    (``codes`` codes the users, ``first``/``last`` hold their earliest and latest timestamps, ns).
    """

    how: str
    cutoff: pd.Timestamp | None = None
    codes: IdCodes | None = None
    first: np.ndarray | None = None
    last: np.ndarray | None = None

    def is_test(self, part: pd.DataFrame) -> np.ndarray:
        seconds = _ns(part["timestamp"])
        if self.how == "time":
            return seconds >= self.cutoff.value
        codes = self.codes(part["user_id"])
        return (seconds == self.last[codes]) & (self.first[codes] < self.last[codes])


def _ns(ts: pd.Series) -> np.ndarray:
    return ts.astype("datetime64[ns]").to_numpy().view(np.int64)


class SplitSpan:
    """What a pass over (some of) the interactions saw for a split rule: the rows, the earliest and
    latest time and, for ``user-last``, each user's first and last time (ns, by the user's code in
    order of first appearance). Spans of consecutive row ranges ``merge`` in order into the span of
    one pass (Dask workers each count some row groups)."""

    def __init__(self, per_user: bool) -> None:
        self.rows = 0
        self.low, self.high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        self.codes = IdCodes(pd.Index([], dtype=object)) if per_user else None
        self.first, self.last = np.zeros(0, np.int64), np.zeros(0, np.int64)

    def _users(self, codes: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        self.first = grown(self.first, len(self.codes), np.iinfo(np.int64).max)
        self.last = grown(self.last, len(self.codes), np.iinfo(np.int64).min)
        self.first[codes] = np.minimum(self.first[codes], first)
        self.last[codes] = np.maximum(self.last[codes], last)

    def add(self, part: pd.DataFrame) -> None:
        if not len(part):
            return
        self.rows += len(part)
        seconds = _ns(part["timestamp"])
        self.low, self.high = min(self.low, int(seconds.min())), max(self.high, int(seconds.max()))
        if self.codes is not None:
            times = pd.Series(seconds).groupby(self.codes(part["user_id"]), sort=False).agg(["min", "max"])
            self._users(times.index.to_numpy(), times["min"].to_numpy(), times["max"].to_numpy())

    def merge(self, other: "SplitSpan") -> None:
        """Add the span of the rows after those seen so far."""
        self.rows += other.rows
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        if self.codes is not None and len(other.codes):
            self._users(self.codes(other.codes.ids()), other.first, other.last)

    def rule(self, how: Split | str, test_days: int) -> SplitRule:
        if not self.rows:
            raise FunnelError("split: no interactions")
        if how == "time":
            cutoff = pd.Timestamp(self.high).normalize() - pd.Timedelta(days=test_days - 1)
            if self.low >= cutoff.value:
                raise FunnelError(f"split: the data spans fewer than {test_days + 1} days; nothing left to train on")
            return SplitRule("time", cutoff=cutoff)
        if not (self.first < self.last).any():
            raise FunnelError("split: no user has more than one basket; user-last leaves no test set")
        return SplitRule("user-last", codes=self.codes, first=self.first, last=self.last)


def check_split(how: Split | str, test_days: int) -> None:
    """A clear error for an unknown split or a time split without test days."""
    if how not in SPLITS:
        raise FunnelError(f"split: unknown split {how!r} (choose from {', '.join(SPLITS)})")
    if how == "time" and test_days < 1:
        raise FunnelError("split: --test-days must be >= 1")


def split_rule(parts: Iterable[pd.DataFrame], how: Split | str = Split.TIME, test_days: int = 7) -> SplitRule:
    """The rule of a split, from one pass over ``parts`` of the interactions (``timestamp``, and
    ``user_id`` for ``user-last``): memory O(users), not O(rows)."""
    check_split(how, test_days)
    span = SplitSpan(per_user=how == "user-last")
    for part in parts:
        span.add(part)
    return span.rule(how, test_days)


def split(interactions: pd.DataFrame, how: Split | str = Split.TIME, test_days: int = 7) -> SplitResult:
    """Split interactions.

    ``time``: the last ``test_days`` calendar days are test (as in the H&M competition).
    ``user-last``: per user, the interactions at the user's latest timestamp are the test
    basket; users with a single basket (one distinct timestamp) stay wholly in train.
    The cutoff of ``user-last`` is one second after the latest training row (features describe all of train).
    """
    rule = split_rule([interactions], how, test_days)
    is_test = rule.is_test(interactions)
    train = interactions[~is_test]
    cutoff = rule.cutoff if how == "time" else train["timestamp"].max() + pd.Timedelta(seconds=1)
    return SplitResult(train, interactions[is_test], cutoff)


def label_windows(frame: pd.DataFrame, split: Split | str, valid_days: int, windows: int) -> np.ndarray:
    """Per row of a training split, which of its last ``windows`` label windows holds it (0 the latest,
    -1 before them all): the validation period and the ranker's earlier label periods.

    ``time``: window ``k`` is the ``valid_days``-long period ending ``k * valid_days`` days before the
    latest timestamp. ``user-last``: window ``k`` is each user's ``k``-th last basket (distinct
    timestamp) where the user has an earlier basket left; a user's only basket stays before them all.
    """
    ts = frame["timestamp"]
    out = np.full(len(frame), -1, dtype=np.int64)
    if split == "user-last":
        rank = ts.groupby(frame["user_id"], sort=False).rank(method="dense", ascending=False).to_numpy() - 1
        baskets = pd.Series(rank).groupby(frame["user_id"].to_numpy(), sort=False).transform("max").to_numpy() + 1
        inside = (rank < windows) & (rank < baskets - 1)
        out[inside] = rank[inside].astype(np.int64)
        return out
    day = 86400 if np.issubdtype(ts.dtype, np.integer) else pd.Timedelta(days=1)
    latest = ts.max()
    for k in range(windows - 1, -1, -1):  # later windows overwrite: each row ends in the latest one holding it
        out[(ts > latest - (k + 1) * valid_days * day).to_numpy()] = k
    return out


def file_label_windows(path, split: Split | str, valid_days: int, windows: int,
                       batch_rows: int | None = None) -> tuple[np.ndarray, pd.Timestamp]:
    """``label_windows`` of a split file's rows (int8), read a column batch at a time: no frame of the
    rows is held (``user-last`` holds an integer user code and a time per row while it ranks them).
    Also returns the latest time before every window (the features' cutoff, less a second)."""
    from workflows import codes as batching

    batch_rows = batch_rows or batching.BATCH_ROWS
    if split == "user-last":
        users = IdCodes(pd.Index([], dtype=object))
        codes, times = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for part in batching.parquet_batches(path, ["user_id", "timestamp"], batch_rows):
            codes.append(users(part["user_id"]))  # coded batch by batch: no batch's raw ids kept
            times.append(_ns(part["timestamp"]))
        frame = pd.DataFrame({"user_id": np.concatenate(codes), "timestamp": np.concatenate(times).view("datetime64[ns]")})
        del codes, times
        window = label_windows(frame, split, valid_days, windows).astype(np.int8)
        before = frame["timestamp"].to_numpy()[window < 0]
        return window, pd.Timestamp(before.max()) if len(before) else pd.NaT
    latest = max((int(_ns(p["timestamp"]).max()) for p in batching.parquet_batches(path, ["timestamp"], batch_rows)
                  if len(p)), default=None)
    out, before = [], np.iinfo(np.int64).min
    for part in batching.parquet_batches(path, ["timestamp"], batch_rows):
        seconds = _ns(part["timestamp"])
        window = np.full(len(part), -1, dtype=np.int8)
        for k in range(windows - 1, -1, -1):
            window[seconds > latest - (k + 1) * valid_days * 86_400 * 10**9] = k
        if (window < 0).any():
            before = max(before, int(seconds[window < 0].max()))
        out.append(window)
    window = np.concatenate(out) if out else np.zeros(0, np.int8)
    return window, pd.Timestamp(before) if before > np.iinfo(np.int64).min else pd.NaT
