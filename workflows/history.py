"""Feature tables built from the training history (as of the split's cutoff).

The tables hold *raw* values (raw ids, counts, days, prices); the NVTabular graph turns
them into model inputs. Serving reads the same tables, so no feature is computed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflows.codes import BATCH_ROWS, IdCodes, grown

USER_HISTORY = ["user_n_purchases", "user_days_since_last", "user_days_active", "user_mean_price"]
ITEM_HISTORY = [
    "item_n_purchases", "item_n_buyers", "item_n_purchases_last7", "item_days_since_last",
    "item_days_since_first", "item_mean_price",
]
# Columns kept in the feature tables for filtering or display, never as model inputs.
NOT_FEATURES = {"in_stock", "title", "prod_name", "detail_desc", "imdb_url"}


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (order of first appearance) and the distinct values: one hash pass over the ids."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques)


_DAY_NS = 86_400e9
_ITEM_BITS = 31  # a (user, item) pair as one int64: user code << 31 | item code
# Each counter's value before any purchase.
_FILLS = {"n": 0, "first": np.iinfo(np.int64).max, "last": np.iinfo(np.int64).min, "price_sum": 0.0,
          "price_n": 0, "last7": 0}


@dataclass
class HistoryShare:
    """The counts of a pass over some of the rows, without the id tables (``HistoryStats.share``).

    Arrays are indexed by the pass's codes: the tables' ids first (``known_*`` of them), then the ids
    they lack in order of first appearance (``*_extra``). ``pairs`` holds each group's (user, item)
    keys, in memory or as the file they were appended to.
    """

    user: dict[str, np.ndarray]
    item: dict[str, np.ndarray]
    user_extra: np.ndarray
    item_extra: np.ndarray
    known_users: int
    known_items: int
    has_price: bool
    pairs: list[np.ndarray] | list[Path]


class HistoryStats:
    """Per-user and per-item aggregates of purchases, added a part at a time.

    Memory is O(users + items) plus the distinct (user, item) pairs, which are kept as int64 keys in
    ``buckets`` groups by user (files under ``scratch`` when given, so a pass over 31.8M rows holds
    one group at a time). ``user_table``/``item_table`` return the feature tables as of ``cutoff``;
    a pass gives the same tables as one call on all the rows.
    """

    def __init__(self, users: pd.DataFrame | None, items: pd.DataFrame | None, cutoff: pd.Timestamp,
                 buckets: int = 1, scratch: Path | None = None, codes: tuple[IdCodes, IdCodes] | None = None) -> None:
        self.users, self.items = users, items
        self.user_codes, self.item_codes = codes or (IdCodes(users["user_id"]), IdCodes(items["item_id"]))
        self.cutoff = pd.Timestamp(cutoff).value
        self.buckets, self.scratch = max(1, int(buckets)), scratch
        self._pairs: list[list[np.ndarray]] = [[] for _ in range(self.buckets)]
        self._pair_files: list[list[Path]] = [[] for _ in range(self.buckets)]  # merged parts' groups
        self.user = self._state(0)
        self.item = self._state(0)
        self.item["last7"] = np.zeros(0, np.int64)
        self.has_price = False

    @staticmethod
    def _state(n: int) -> dict[str, np.ndarray]:
        return {"n": np.zeros(n, np.int64), "first": np.full(n, np.iinfo(np.int64).max),
                "last": np.full(n, np.iinfo(np.int64).min), "price_sum": np.zeros(n), "price_n": np.zeros(n, np.int64)}

    @staticmethod
    def _count(state: dict[str, np.ndarray], codes: np.ndarray, n: int, seconds: np.ndarray,
             price: np.ndarray | None) -> None:
        for key in state:
            state[key] = grown(state[key], n, _FILLS[key])
        state["n"] += np.bincount(codes, minlength=n)
        times = pd.Series(seconds).groupby(codes, sort=False).agg(["min", "max"])
        at = times.index.to_numpy()
        state["first"][at] = np.minimum(state["first"][at], times["min"].to_numpy())
        state["last"][at] = np.maximum(state["last"][at], times["max"].to_numpy())
        if price is not None:
            ok = ~np.isnan(price)
            state["price_sum"] += np.bincount(codes[ok], weights=price[ok], minlength=n)
            state["price_n"] += np.bincount(codes[ok], minlength=n)

    def add(self, part: pd.DataFrame) -> None:
        """Count a part of the purchases (user_id, item_id, timestamp [, price]), ``BATCH_ROWS`` rows
        at a time (a whole 31M-row history at once took ~1.5 GB of per-row temporaries)."""
        self.has_price |= "price" in part.columns
        for start in range(0, len(part), BATCH_ROWS):
            self._add(part.iloc[start:start + BATCH_ROWS])

    def _add(self, part: pd.DataFrame) -> None:
        users, items = self.user_codes(part["user_id"]), self.item_codes(part["item_id"])
        if len(self.item_codes) >= 1 << _ITEM_BITS:
            raise ValueError(f"more than {1 << _ITEM_BITS} items")
        seconds = part["timestamp"].astype("datetime64[ns]").astype(np.int64).to_numpy()
        price = part["price"].to_numpy(np.float64) if "price" in part.columns else None
        self.has_price |= price is not None
        self._count(self.user, users, len(self.user_codes), seconds, price)
        self._count(self.item, items, len(self.item_codes), seconds, price)
        self.item["last7"] += np.bincount(items[seconds >= self.cutoff - 7 * _DAY_NS], minlength=len(self.item_codes))
        self._store_pairs((users << _ITEM_BITS) | items)

    def _store_pairs(self, keys: np.ndarray) -> None:
        """(user, item) keys into their groups (by user code): in memory, or appended to files."""
        group = (keys >> _ITEM_BITS) % self.buckets
        for b in range(self.buckets):
            chosen = keys[group == b] if self.buckets > 1 else keys
            if self.scratch is None:
                self._pairs[b].append(chosen)
            else:
                with open(self.scratch / f"pairs_{b}.bin", "ab") as handle:
                    handle.write(chosen.tobytes())

    def _group_keys(self, b: int) -> np.ndarray:
        """Every (user, item) key of group ``b``, duplicates included."""
        pieces = list(self._pairs[b])
        files = list(self._pair_files[b])
        if self.scratch is not None:
            files.append(self.scratch / f"pairs_{b}.bin")
        pieces += [np.fromfile(file, dtype=np.int64) for file in files if file.exists()]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)

    def share(self) -> "HistoryShare":
        """The counts of this pass without the id tables: what a Dask worker hands back (``merge``)."""
        pairs = ([self.scratch / f"pairs_{b}.bin" for b in range(self.buckets)] if self.scratch is not None
                 else [np.concatenate(p) if p else np.zeros(0, np.int64) for p in self._pairs])
        return HistoryShare(self.user, self.item, self.user_codes.extra.to_numpy(), self.item_codes.extra.to_numpy(),
                            len(self.user_codes.known), len(self.item_codes.known), self.has_price, pairs)

    def merge(self, share: "HistoryShare") -> None:
        """Add the counts of another pass over other rows with the same id tables (``share()``, e.g. a
        Dask worker's row groups). Shares merged in the order of their rows give the counts of one pass
        over all the rows: ids the tables lack are coded in order of first appearance here too."""
        if (share.known_users, share.known_items) != (len(self.user_codes.known), len(self.item_codes.known)):
            raise ValueError("merge: the share was counted against other id tables")
        self.has_price |= share.has_price
        user_at = np.concatenate([np.arange(share.known_users), self.user_codes(share.user_extra)]).astype(np.int64)
        item_at = np.concatenate([np.arange(share.known_items), self.item_codes(share.item_extra)]).astype(np.int64)
        for mine, theirs, at, n in ((self.user, share.user, user_at, len(self.user_codes)),
                                    (self.item, share.item, item_at, len(self.item_codes))):
            for key, values in theirs.items():
                mine[key] = grown(mine[key], n, _FILLS[key])
                rows = at[:len(values)]  # one row each: plain fancy indexing adds correctly
                if key == "first":
                    mine[key][rows] = np.minimum(mine[key][rows], values)
                elif key == "last":
                    mine[key][rows] = np.maximum(mine[key][rows], values)
                else:
                    mine[key][rows] += values
        same_codes = not len(share.user_extra) and not len(share.item_extra)
        for b, pairs in enumerate(share.pairs):
            if isinstance(pairs, Path):
                if same_codes and self.buckets == len(share.pairs):
                    self._pair_files[b].append(pairs)  # its groups are ours: read at counting time
                    continue
                pairs = np.fromfile(pairs, dtype=np.int64) if pairs.exists() else np.zeros(0, np.int64)
            if not same_codes:
                pairs = (user_at[pairs >> _ITEM_BITS] << _ITEM_BITS) | item_at[pairs & ((1 << _ITEM_BITS) - 1)]
            self._store_pairs(pairs)

    def _distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Per user its distinct items, per item its distinct buyers."""
        n_users, n_items = len(self.user_codes), len(self.item_codes)
        per_user, per_item = np.zeros(n_users, np.int64), np.zeros(n_items, np.int64)
        for b in range(self.buckets):
            keys = np.unique(self._group_keys(b))
            per_user += np.bincount(keys >> _ITEM_BITS, minlength=n_users)
            per_item += np.bincount(keys & ((1 << _ITEM_BITS) - 1), minlength=n_items)
        return per_user, per_item

    def _mean_price(self, state) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(state["price_n"] > 0, state["price_sum"] / np.maximum(state["price_n"], 1),
                            np.nan).astype(np.float32)

    @staticmethod
    def _aligned(state: dict[str, np.ndarray], n: int) -> tuple[int, dict[str, np.ndarray], Callable]:
        """The state of a table's ``n`` rows, and a float32 cast that nulls rows without purchases."""
        s = {k: grown(v, n, 0)[:n] for k, v in state.items()}
        seen = s["n"] > 0
        return n, s, lambda values: np.where(seen, values, np.nan).astype(np.float32)

    def user_table(self, distinct: np.ndarray | None = None) -> pd.DataFrame:
        """users.parquet joined with history aggregates; users without history keep nulls."""
        n, s, masked = self._aligned(self.user, len(self.users))
        distinct = self._distinct()[0] if distinct is None else distinct
        agg = {"user_n_purchases": masked(s["n"]),
               "user_days_since_last": masked((self.cutoff - s["last"]) / _DAY_NS),
               "user_days_active": masked((s["last"] - s["first"]) / _DAY_NS)}
        if self.has_price:
            agg["user_mean_price"] = masked(self._mean_price(s))
        # habit: the share of a user's purchases that repeat an item they bought before
        agg["user_repeat_share"] = masked((s["n"] - grown(distinct, n, 0)[:n]) / np.maximum(s["n"], 1))
        return plain_dtypes(self.users.reset_index(drop=True).assign(**agg))

    def item_table(self, distinct: np.ndarray | None = None) -> pd.DataFrame:
        """items.parquet joined with popularity, recency and price aggregates as of ``cutoff``.

        ``in_stock`` (the stock at the end of the data, after the cutoff) is not carried: stock comes
        from the dataset where it is needed (exports, the online store), as of the time asked for.
        """
        n, s, masked = self._aligned(self.item, len(self.items))
        distinct = self._distinct()[1] if distinct is None else distinct
        agg = {"item_n_purchases": s["n"].astype(np.float32),
               "item_n_buyers": grown(distinct, n, 0)[:n].astype(np.float32),
               "item_days_since_last": masked((self.cutoff - s["last"]) / _DAY_NS),
               "item_days_since_first": masked((self.cutoff - s["first"]) / _DAY_NS),
               "item_n_purchases_last7": s["last7"].astype(np.float32)}
        if self.has_price:
            agg["item_mean_price"] = masked(self._mean_price(s))
        items = self.items.drop(columns=[c for c in ("in_stock",) if c in self.items]).reset_index(drop=True)
        return plain_dtypes(items.assign(**agg))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``user_table()`` and ``item_table()``, the distinct pairs counted once."""
        per_user, per_item = self._distinct()
        return self.user_table(per_user), self.item_table(per_item)


def user_table(train: pd.DataFrame, users: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """users.parquet joined with history aggregates (``HistoryStats`` over all of ``train`` at once)."""
    stats = HistoryStats(users, pd.DataFrame({"item_id": pd.unique(train["item_id"])}), cutoff)
    stats.add(train)
    return stats.user_table()


def item_table(train: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """items.parquet joined with popularity, recency and price aggregates as of ``cutoff``."""
    stats = HistoryStats(pd.DataFrame({"user_id": pd.unique(train["user_id"])}), items, cutoff)
    stats.add(train)
    return stats.item_table()


def latest_purchases(interactions: pd.DataFrame) -> pd.DataFrame:
    """Each user's distinct items, most recently bought first: one row per (user, item).

    Columns ``user_id``, ``item_id``, ``n`` (times bought) and ``last`` (time of the latest
    purchase); rows sorted by ``last`` descending, ties in the order of the input rows. This is
    the one definition of "a user's recent items" that training, evaluation, serving history
    and the online store share.
    """
    # integer codes and one int64 key per (user, item): no sort, hash or merge of the id columns
    # themselves (string user ids at H&M size took 5 GiB that way)
    users, _ = _codes(interactions["user_id"])
    items, _ = _codes(interactions["item_id"])
    keys = users * (int(items.max(initial=0)) + 1) + items
    times = interactions["timestamp"].astype("datetime64[ns]").to_numpy().view(np.int64)
    order = np.argsort(-times, kind="stable")  # latest first, ties in input order
    del times
    _, first, counts = np.unique(keys[order], return_index=True, return_counts=True)
    del keys
    rank = np.argsort(first, kind="stable")  # the pairs in the order of their latest purchase
    rows = order[first[rank]]
    return pd.DataFrame({"user_id": interactions["user_id"].to_numpy()[rows],
                         "item_id": interactions["item_id"].to_numpy()[rows],
                         "n": counts[rank].astype(np.int64),
                         "last": interactions["timestamp"].to_numpy()[rows]})


def recent_items(interactions: pd.DataFrame, limit: int | None = None, users=None) -> pd.Series:
    """user_id -> the user's distinct items, most recently bought first (at most ``limit``); only
    for ``users`` when given (the ranker's label users: at H&M size 50k of 1.37M)."""
    if users is not None:
        interactions = interactions[interactions["user_id"].isin(users)]
    latest = latest_purchases(interactions)
    if limit is not None:
        latest = latest.groupby("user_id", sort=False).head(limit)
    return latest.groupby("user_id", sort=False)["item_id"].apply(list)


def plain_dtypes(table: pd.DataFrame) -> pd.DataFrame:
    """Nullable pandas integers/booleans (Int64, boolean) -> float, which NVTabular's CPU path handles."""
    out = table.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(dtype):
            out[col] = out[col].astype("float64")
    return out


def price_boundaries(prices: pd.Series, buckets: int = 10) -> list[float]:
    """Quantile boundaries for price buckets, from training prices."""
    values = prices.dropna().to_numpy()
    if len(values) == 0:
        return [0.0]
    qs = np.unique(np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1]))
    return [float(q) for q in qs] or [float(values.mean())]
