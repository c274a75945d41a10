"""``latest_purchases``: one row per (user, item) with its count and latest time, latest first,
checked against a plain-Python computation over random rows with many ties."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflows.history import latest_purchases


def _by_hand(rows: pd.DataFrame) -> list[tuple]:
    seen: dict[tuple, list] = {}
    for pos, (u, i, t) in enumerate(zip(rows["user_id"], rows["item_id"], rows["timestamp"])):
        entry = seen.setdefault((u, i), [0, t, pos])
        entry[0] += 1
        if t > entry[1]:  # the latest time; among equal times the earliest row
            entry[1], entry[2] = t, pos
    # latest first; pairs whose latest purchase has the same time: the earlier input row first
    ordered = sorted(seen.items(), key=lambda kv: (-kv[1][1].value, kv[1][2]))
    return [(u, i, n, t) for (u, i), (n, t, _) in ordered]


def test_latest_purchases_equals_a_plain_python_count_and_order():
    rng = np.random.default_rng(0)
    n = 3000
    rows = pd.DataFrame({"user_id": rng.choice([f"user-{k:03d}" for k in range(40)], n),
                         "item_id": rng.integers(1_000_000, 1_000_030, n),
                         "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 50, n), unit="D"),
                         "price": rng.random(n)})
    got = latest_purchases(rows)
    assert list(got.columns) == ["user_id", "item_id", "n", "last"]
    assert list(got.itertuples(index=False, name=None)) == _by_hand(rows)
    assert got["n"].sum() == n


def test_latest_purchases_of_no_rows_is_empty():
    empty = pd.DataFrame({"user_id": pd.Series([], dtype=object), "item_id": pd.Series([], dtype=np.int64),
                          "timestamp": pd.Series([], dtype="datetime64[ns]")})
    got = latest_purchases(empty)
    assert got.empty and list(got.columns) == ["user_id", "item_id", "n", "last"]


def test_recent_items_for_some_users_equal_those_of_all_users():
    from workflows.history import recent_items

    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"user_id": rng.choice(["a", "b", "c", "d"], 200), "item_id": rng.integers(0, 15, 200),
                         "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 9, 200), unit="D")})
    every = recent_items(rows)
    some = recent_items(rows, users=["b", "d", "zz"])
    assert sorted(some.index) == ["b", "d"]
    assert some.to_dict() == {u: every[u] for u in ("b", "d")}


def test_purchase_history_built_in_user_ranges_equals_the_plain_count(monkeypatch):
    """``PurchaseHistory.build`` a few users at a time (as at H&M size) == the plain-Python count:
    per known user, the known items most recent first, with counts and days since the last."""
    from workflows.purchases import PurchaseHistory

    rng = np.random.default_rng(3)
    n = 4000
    rows = pd.DataFrame({"user_id": rng.choice([f"user-{k:03d}" for k in range(60)], n),
                         "item_id": rng.integers(0, 40, n),
                         "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 50, n), unit="D")})
    users = pd.Index([f"user-{k:03d}" for k in range(0, 70, 2)])  # half the buyers unknown, some never buy
    items = pd.Index(np.arange(0, 40, 3)[::-1])
    as_of = pd.Timestamp("2024-03-01")
    monkeypatch.setattr("workflows.purchases.ROWS_PER_RANGE", 300)  # ~7 ranges of users
    got = PurchaseHistory.build(rows, users, items, as_of)
    for row, user in enumerate(users):
        mine = [(i, n_, t) for u, i, n_, t in _by_hand(rows) if u == user and i in set(items)]
        entries = got.of(row)
        assert list(got.items[entries]) == [items.get_loc(i) for i, _, _ in mine], user
        assert list(got.counts[entries]) == [n_ for _, n_, _ in mine]
        np.testing.assert_allclose(got.days_ago[entries], [(as_of - t) / pd.Timedelta(days=1) for _, _, t in mine])
    assert got.offsets[-1] == sum(1 for u, i, _, _ in _by_hand(rows) if u in set(users) and i in set(items))


def test_purchase_history_subset_equals_a_history_of_those_users_alone():
    """A few users' history taken from everyone's (the ranker's earlier periods keep only the label
    users') holds the entries a history built from their rows alone holds, and answers the same."""
    from workflows.purchases import PurchaseHistory, pair_features

    rng = np.random.default_rng(1)
    n = 2000
    rows = pd.DataFrame({"user_id": rng.choice([f"u{k}" for k in range(50)], n), "item_id": rng.integers(0, 40, n),
                         "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90, n), unit="D")})
    users, items, now = pd.Index([f"u{k}" for k in range(50)]), pd.Index(np.arange(40)), pd.Timestamp("2024-05-01")
    every = PurchaseHistory.build(rows, users, items, now)
    few = pd.Index(["u7", "u3", "nobody", "u41"])
    got = every.subset(users.get_indexer(few))
    alone = PurchaseHistory.build(rows[rows["user_id"].isin(few)], few, items, now)
    for name in ("offsets", "items", "counts", "days_ago"):
        np.testing.assert_array_equal(getattr(got, name), getattr(alone, name), err_msg=name)
    grid = rng.integers(0, 40, (len(few), 15))
    for a, b in zip(pair_features(got, np.arange(len(few)), grid), pair_features(alone, np.arange(len(few)), grid)):
        np.testing.assert_array_equal(a, b)
    assert got.offsets[3] - got.offsets[2] == 0  # an unknown user has no entries
