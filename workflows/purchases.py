"""Per-user purchase history as CSR arrays (an ``.npz`` in exports, no pickles) and the pair features
"how often did this user buy this item, how long ago": one implementation for ranker training and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflows.history import latest_purchases

NEVER_DAYS = 365.0  # pair_days_since for items the user never bought
ROWS_PER_RANGE = 4_000_000  # interaction rows per range of users when building a history


@dataclass
class PurchaseHistory:
    """Each user's distinct items, most recent first, with purchase counts and days since the last.

    ``offsets[u]:offsets[u+1]`` slices user row ``u``'s entries; item positions index the
    export's item table; ``days_ago`` is measured from the export's ``as_of`` time.
    """

    offsets: np.ndarray  # (users + 1,) int64
    items: np.ndarray  # int32 item rows
    counts: np.ndarray  # float32 purchases of that item
    days_ago: np.ndarray  # float32 days between the last purchase and as_of
    n_items: int  # size of the item table (pair keys are user_row * n_items + item_row)

    def __post_init__(self) -> None:
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # pair keys sorted, and their entries

    def _pair_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted pair keys and the entry of each, built on the first :meth:`lookup` (16 B an entry: a
        history only fitted on, as EASE's of every user at H&M size, never pays for it)."""
        if self._sorted is None:
            users = np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))
            keys = users * self.n_items + self.items
            del users
            order = np.argsort(keys, kind="stable")
            self._sorted = (keys[order], order)
        return self._sorted

    @classmethod
    def build(cls, interactions: pd.DataFrame, user_ids: pd.Index, item_ids: pd.Index,
              as_of: pd.Timestamp) -> "PurchaseHistory":
        """From raw (user_id, item_id, timestamp) rows; users/items outside the tables are dropped.

        Users are taken in ranges of the user table holding about ``ROWS_PER_RANGE`` rows each, so the
        per-row temporaries of ``latest_purchases`` (~60 B a row) exist for one range at a time: an
        earlier label period's whole history at H&M size (30M rows) added 1.5 GB in one go.
        A user's entries, and their order, do not depend on which other users share the range.
        """
        rows_user = user_ids.get_indexer(interactions["user_id"]).astype(np.int32)  # -1: not ours (the ranker: 50k of 1.37M)
        n_ranges = max(1, -(-int((rows_user >= 0).sum()) // ROWS_PER_RANGE))
        if n_ranges == 1:
            bounds = np.array([0, len(user_ids)])
        else:  # ranges of users with about equal rows
            per_user = np.cumsum(np.bincount(rows_user[rows_user >= 0], minlength=len(user_ids)))
            bounds = np.unique(np.concatenate([[0], np.searchsorted(per_user, per_user[-1] * np.arange(1, n_ranges)
                                                                      / n_ranges), [len(user_ids)]]))
        parts: dict[str, list[np.ndarray]] = {"u": [], "i": [], "n": [], "days": []}  # compact: 16 B an entry
        for low, high in zip(bounds[:-1], bounds[1:]):
            mine = (rows_user >= low) & (rows_user < high)
            if not mine.any():
                continue
            latest = latest_purchases(interactions if mine.all() else interactions[mine])
            del mine
            items = item_ids.get_indexer(latest["item_id"])
            keep = items >= 0
            users = user_ids.get_indexer(latest["user_id"])[keep]
            order = np.argsort(users, kind="stable")  # by user; within a user: latest_purchases' recency order
            days = ((as_of - latest["last"]) / pd.Timedelta(days=1)).clip(lower=0).to_numpy(np.float32)[keep]
            parts["u"].append(users[order].astype(np.int32))
            parts["i"].append(items[keep][order].astype(np.int32))
            parts["n"].append(latest["n"].to_numpy(np.float32)[keep][order])
            parts["days"].append(days[order])
            del latest, items, keep, users, order, days
        del rows_user
        empty = {"u": np.int32, "i": np.int32, "n": np.float32, "days": np.float32}
        stats = {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in parts.items()}
        parts.clear()
        counts = np.bincount(stats["u"], minlength=len(user_ids))
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, stats["i"], stats["n"], stats["days"], len(item_ids))

    def of(self, user_row: int) -> slice:
        if user_row < 0:
            return slice(0, 0)
        return slice(int(self.offsets[user_row]), int(self.offsets[user_row + 1]))

    def lookup(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Entry index of each (user row, item row) pair, ``-1`` where the user never bought it.

        ``rows`` is ``(users,)``, ``items`` is ``(users, width)``; negative rows/items never match.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 1)
        keys = rows * self.n_items + items
        sorted_keys, entries = self._pair_index()
        if not len(sorted_keys):
            return np.full(items.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        hit = (sorted_keys[pos] == keys) & (rows >= 0) & (items >= 0)
        return np.where(hit, entries[pos], -1)

    def entries_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The entries of user rows ``rows`` one after the other: ``(offsets, positions)``, row ``r``'s
        being ``positions[offsets[r]:offsets[r + 1]]`` (``-1`` rows: none)."""
        rows = np.asarray(rows, dtype=np.int64)
        safe = np.maximum(rows, 0)
        start = self.offsets[safe]
        lengths = np.where(rows >= 0, self.offsets[safe + 1] - start, 0)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])

    def subset(self, rows: np.ndarray) -> "PurchaseHistory":
        """The history of user rows ``rows`` alone, row ``r`` of the result being ``rows[r]`` (``-1``: no
        history): what scoring a few users needs, without every user's entries."""
        offsets, pos = self.entries_of(rows)
        return PurchaseHistory(offsets, self.items[pos], self.counts[pos], self.days_ago[pos], self.n_items)

    def recent(self, rows: np.ndarray, n: int) -> np.ndarray:
        """``(users, n)`` latest distinct items per user row, ``-1``-padded (unknown users: all ``-1``)."""
        rows = np.asarray(rows, dtype=np.int64)
        safe = np.maximum(rows, 0)
        start, end = self.offsets[safe], self.offsets[safe + 1]
        idx = start[:, None] + np.arange(n)[None, :]
        ok = (idx < end[:, None]) & (rows >= 0)[:, None]
        return np.where(ok, self.items[np.minimum(idx, max(len(self.items) - 1, 0))] if len(self.items) else -1, -1)

    def save(self, path: Path) -> None:
        np.savez(path, offsets=self.offsets, items=self.items, counts=self.counts, days_ago=self.days_ago,
                 n_items=np.int64(self.n_items))

    @classmethod
    def load(cls, path: Path) -> "PurchaseHistory":
        with np.load(path, allow_pickle=False) as data:
            history = cls(data["offsets"], data["items"], data["counts"], data["days_ago"], int(data["n_items"]))
        history._pair_index()  # served: built at load, not on the first request
        return history


def pair_features(history: PurchaseHistory, rows: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log1p(times bought) and log1p(days since the last purchase, or ``NEVER_DAYS``) per (user row, item row).

    ``rows`` is ``(users,)`` and ``items`` ``(users, width)``; the ranker's pair features in training
    and in the served graph both come from here.
    """
    entry = history.lookup(rows, items)
    hit, safe = entry >= 0, np.maximum(entry, 0)
    bought = np.where(hit, history.counts[safe] if len(history.counts) else 0.0, 0.0).astype(np.float32)
    days = np.where(hit, history.days_ago[safe] if len(history.days_ago) else 0.0, NEVER_DAYS).astype(np.float32)
    return np.log1p(bought), np.log1p(days)


# item features with at most this many values get a "share of the user's items with this value" feature
MAX_AFFINITY_VALUES = 1000
AFFINITY_PREFIX = "user_share_"


def value_matrix(codes) -> "sp.csr_matrix":
    """Binary ``(items, max code + 1)`` matrix of each item's encoded values of one categorical
    feature: ``codes`` holds an int per item, or an array of ints per item (multi-hot). Codes below
    2 (null, out of vocabulary) are no value."""
    import scipy.sparse as sp

    codes = list(codes) if not isinstance(codes, np.ndarray) or codes.dtype == object else codes
    if isinstance(codes, np.ndarray):  # one int per item
        lengths = np.ones(len(codes), dtype=np.int64)
        flat = codes.astype(np.int64)
    else:
        arrays = [np.asarray(c if c is not None else [], dtype=np.int64).reshape(-1) for c in codes]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    keep = flat >= 2
    width = int(flat.max()) + 1 if len(flat) else 1
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], flat[keep])), shape=(len(lengths), width))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


@dataclass
class ItemValues:
    """Each item's values of some categorical features (``value_matrix`` per feature), and all of
    them side by side: built once (at load in serving), read by every :func:`affinity` call."""

    matrices: dict[str, "sp.csr_matrix"]
    stacked: "sp.csr_matrix"  # (items, sum of widths): the matrices side by side, in the dict's order

    @classmethod
    def from_codes(cls, codes: dict[str, object]) -> "ItemValues":
        """From each feature's encoded codes per item (ints, or int arrays for multi-hot)."""
        import scipy.sparse as sp

        matrices = {name: value_matrix(c) for name, c in codes.items()}
        stacked = sp.hstack(list(matrices.values()), format="csr") if matrices else sp.csr_matrix((0, 0))
        return cls(matrices, stacked)


def affinity(history: PurchaseHistory, rows: np.ndarray, items: np.ndarray, values: ItemValues,
             extra: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """How much of the user's history looks like each candidate, per categorical feature: the share
    of the user's distinct items having each of the candidate's values (``values``), averaged over
    the candidate's values; 0 for unknown users, ``-1`` items and items without a value.

    ``rows`` is ``(users,)``, ``items`` ``(users, width)``; ``extra`` adds items bought since the
    history (``workflows.item_item.user_matrix``). Training and serving both call this; the user's
    items are gathered once for every feature.
    """
    from workflows.item_item import user_matrix

    if not values.matrices:
        return {}
    bought = user_matrix(history, rows, extra)  # (users, n_items) binary
    n = np.maximum(np.asarray(bought.sum(axis=1)).reshape(-1), 1)
    shares = np.asarray((bought @ values.stacked).toarray(), dtype=np.float64) / n[:, None]
    users, slots = np.nonzero(items >= 0)
    item = items[users, slots]
    out = {}
    offset = 0
    for name, m in values.matrices.items():
        start, end = m.indptr[item], m.indptr[item + 1]
        lengths = end - start
        pair = np.repeat(np.arange(len(item)), lengths)
        idx = np.repeat(start - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(lengths.sum())
        total = (np.bincount(pair, shares[users[pair], offset + m.indices[idx]], minlength=len(item))
                 if len(idx) else np.zeros(len(item)))
        column = np.zeros(items.shape, dtype=np.float32)
        column[users, slots] = total / np.maximum(lengths, 1)
        out[name] = column
        offset += m.shape[1]
    return out
