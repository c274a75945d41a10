"""Feature tables built from the training history (as of the split's cutoff).

The tables hold *raw* values (raw ids, counts, days, prices); the NVTabular graph turns
them into model inputs. Serving reads the same tables, so no feature is computed twice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

USER_HISTORY = ["user_n_purchases", "user_days_since_last", "user_days_active", "user_mean_price"]
ITEM_HISTORY = [
    "item_n_purchases", "item_n_buyers", "item_n_purchases_last7", "item_days_since_last",
    "item_days_since_first", "item_mean_price",
]
# Columns kept in the feature tables for filtering or display, never as model inputs.
NOT_FEATURES = {"in_stock", "title", "prod_name", "detail_desc", "imdb_url"}


def _days(delta: pd.Series) -> pd.Series:
    return (delta / pd.Timedelta(days=1)).astype(np.float32)


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (order of first appearance) and the distinct values: one hash pass over the ids."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques)


def _per_group(codes: np.ndarray, n: int, values: np.ndarray, how: str) -> np.ndarray:
    series = pd.Series(values).groupby(codes, sort=True)
    return getattr(series, how)().reindex(np.arange(n)).to_numpy()


def user_table(train: pd.DataFrame, users: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """users.parquet joined with history aggregates; users without history keep nulls.

    Grouped on integer codes of the ids (string ids are hashed once, not once per aggregate).
    """
    codes, ids = _codes(train["user_id"])
    n = len(ids)
    seconds = train["timestamp"].astype("datetime64[ns]").astype(np.int64).to_numpy()
    last = _per_group(codes, n, seconds, "max")
    first = _per_group(codes, n, seconds, "min")
    day = 86_400e9
    agg = pd.DataFrame(
        {
            "user_n_purchases": np.bincount(codes, minlength=n).astype(np.float32),
            "user_days_since_last": ((pd.Timestamp(cutoff).value - last) / day).astype(np.float32),
            "user_days_active": ((last - first) / day).astype(np.float32),
        },
        index=pd.Index(ids, name="user_id"),
    )
    if "price" in train.columns:
        agg["user_mean_price"] = _per_group(codes, n, train["price"].to_numpy(np.float64), "mean").astype(np.float32)
    # habit: the share of a user's purchases that repeat an item they bought before
    items, _ = _codes(train["item_id"])
    pair = codes * (int(items.max(initial=0)) + 1) + items  # (user, item) as one integer
    repeat = pd.Series(pair).duplicated().to_numpy()  # per user, the count does not depend on the order
    agg["user_repeat_share"] = (np.bincount(codes, weights=repeat, minlength=n)
                                / np.maximum(np.bincount(codes, minlength=n), 1)).astype(np.float32)
    return plain_dtypes(users.merge(agg.reset_index(), on="user_id", how="left"))


def item_table(train: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """items.parquet joined with popularity, recency and price aggregates as of ``cutoff``.

    ``in_stock`` (the stock at the end of the data, after the cutoff) is not carried: stock comes
    from the dataset where it is needed (exports, the online store), as of the time asked for.
    """
    codes, ids = _codes(train["item_id"])
    n = len(ids)
    users, _ = _codes(train["user_id"])
    seconds = train["timestamp"].astype("datetime64[ns]").astype(np.int64).to_numpy()
    cut = pd.Timestamp(cutoff).value
    day = 86_400e9
    buyers = np.bincount(codes[pd.Series(users * n + codes).drop_duplicates().index.to_numpy()], minlength=n)
    recent = seconds >= cut - 7 * day
    agg = pd.DataFrame(
        {
            "item_n_purchases": np.bincount(codes, minlength=n).astype(np.float32),
            "item_n_buyers": buyers.astype(np.float32),
            "item_days_since_last": ((cut - _per_group(codes, n, seconds, "max")) / day).astype(np.float32),
            "item_days_since_first": ((cut - _per_group(codes, n, seconds, "min")) / day).astype(np.float32),
        },
        index=pd.Index(ids, name="item_id"),
    )
    agg["item_n_purchases_last7"] = np.bincount(codes[recent], minlength=n).astype(np.float32)
    if "price" in train.columns:
        agg["item_mean_price"] = _per_group(codes, n, train["price"].to_numpy(np.float64), "mean").astype(np.float32)
    items = items.drop(columns=[c for c in ("in_stock",) if c in items])
    out = plain_dtypes(items.merge(agg.reset_index(), on="item_id", how="left"))
    for col in ("item_n_purchases", "item_n_buyers", "item_n_purchases_last7"):
        out[col] = out[col].fillna(0).astype(np.float32)
    return out


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
