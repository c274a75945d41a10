"""The feature tables (workflows/history.py) against plain pandas groupbys on the raw ids."""

import numpy as np
import pandas as pd
import pytest

from workflows import history


def _days(delta: pd.Series) -> pd.Series:
    return (delta / pd.Timedelta(days=1)).astype(np.float32)


def _reference_users(train, cutoff):
    g = train.groupby("user_id")
    out = pd.DataFrame({
        "user_n_purchases": g.size().astype(np.float32),
        "user_days_since_last": _days(cutoff - g["timestamp"].max()),
        "user_days_active": _days(g["timestamp"].max() - g["timestamp"].min()),
        "user_mean_price": g["price"].mean().astype(np.float32),
    })
    repeats = {}
    for user, rows in train.sort_values("timestamp", kind="stable").groupby("user_id"):
        seen, n = set(), 0
        for item in rows["item_id"]:
            n += item in seen
            seen.add(item)
        repeats[user] = n / len(rows)
    out["user_repeat_share"] = pd.Series(repeats).astype(np.float32)
    return out


def _reference_items(train, cutoff):
    g = train.groupby("item_id")
    week = train[train["timestamp"] >= cutoff - pd.Timedelta(days=7)].groupby("item_id").size()
    return pd.DataFrame({
        "item_n_purchases": g.size().astype(np.float32),
        "item_n_buyers": g["user_id"].apply(lambda s: len(set(s))).astype(np.float32),
        "item_days_since_last": _days(cutoff - g["timestamp"].max()),
        "item_days_since_first": _days(cutoff - g["timestamp"].min()),
        "item_n_purchases_last7": week.reindex(g.size().index).fillna(0).astype(np.float32),
        "item_mean_price": g["price"].mean().astype(np.float32),
    })


@pytest.fixture(scope="module")
def purchases():
    rng = np.random.default_rng(3)
    n = 3000
    train = pd.DataFrame({
        "user_id": rng.choice([f"u{i:03x}" for i in range(150)], n),  # string ids, like H&M's
        "item_id": rng.integers(0, 80, n),
        "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 60 * 86400, n), unit="s"),
        "price": np.where(rng.random(n) < 0.05, np.nan, rng.random(n)).astype(np.float32),
    })
    train.loc[5, "timestamp"] = train.loc[6, "timestamp"]  # a tie: the earlier row counts first
    return train, train["timestamp"].max() + pd.Timedelta(hours=1)


def test_user_table_equals_plain_groupbys(purchases):
    train, cutoff = purchases
    users = pd.DataFrame({"user_id": [*sorted(train["user_id"].unique()), "never"], "age": 30.0})
    got = history.user_table(train, users, cutoff).set_index("user_id")
    expected = _reference_users(train, cutoff)
    assert got.loc["never", expected.columns].isna().all()  # no history: nulls
    got = got.drop(index="never")[expected.columns]
    pd.testing.assert_frame_equal(got, expected.loc[got.index], check_names=False, rtol=1e-6)


def test_item_table_equals_plain_groupbys(purchases):
    train, cutoff = purchases
    items = pd.DataFrame({"item_id": np.arange(90), "in_stock": True})  # 80..89 never bought
    got = history.item_table(train, items, cutoff).set_index("item_id")
    assert "in_stock" not in got.columns
    expected = _reference_items(train, cutoff)
    never = got.loc[80:]
    assert (never[["item_n_purchases", "item_n_buyers", "item_n_purchases_last7"]] == 0).all().all()
    assert never["item_days_since_last"].isna().all()
    got = got.loc[expected.index, expected.columns]
    pd.testing.assert_frame_equal(got, expected, check_names=False, rtol=1e-6)
