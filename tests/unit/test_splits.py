import pandas as pd
import pytest

from funnel.core.errors import FunnelError
from workflows.splits import split


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(
        timestamp=lambda f: pd.to_datetime(f["timestamp"])
    )


def test_time_split_takes_last_calendar_days():
    f = _frame([("a", 1, "2020-09-01 10:00"), ("a", 2, "2020-09-15 23:59"), ("b", 3, "2020-09-16 00:00"),
                ("b", 4, "2020-09-22 18:00")])
    s = split(f, "time", 7)
    assert s.cutoff == pd.Timestamp("2020-09-16")
    assert s.train["item_id"].tolist() == [1, 2] and s.test["item_id"].tolist() == [3, 4]


def test_user_last_split():
    f = _frame([
        ("a", 1, "2020-01-01"), ("a", 2, "2020-01-05"), ("a", 3, "2020-01-05"),  # last basket = 2 items
        ("b", 4, "2020-01-02"), ("b", 5, "2020-01-02"),  # one basket only: stays in train
        ("c", 6, "2020-01-03"), ("c", 7, "2020-01-04"),
    ])
    s = split(f, "user-last")
    assert sorted(s.test["item_id"]) == [2, 3, 7]
    assert sorted(s.train["item_id"]) == [1, 4, 5, 6]
    assert len(s.train) + len(s.test) == len(f)
    assert s.train["timestamp"].max() < s.cutoff  # history features describe the whole training part


def test_split_errors():
    f = _frame([("a", 1, "2020-01-01"), ("a", 2, "2020-01-02")])
    with pytest.raises(FunnelError, match="fewer than"):
        split(f, "time", 7)
    with pytest.raises(FunnelError, match="unknown split"):
        split(f, "random")
    with pytest.raises(FunnelError, match="no user has more than one basket"):
        split(_frame([("a", 1, "2020-01-01"), ("b", 2, "2020-01-01")]), "user-last")


def test_label_windows_time_periods_back_from_the_latest_timestamp():
    from workflows.splits import label_windows

    # latest 2020-01-30 12:00; 7-day windows: (01-23 12:00, 01-30 12:00], (01-16 12:00, 01-23 12:00], ...
    f = _frame([("a", 1, "2020-01-30 12:00"), ("a", 2, "2020-01-23 12:01"), ("b", 3, "2020-01-23 12:00"),
                ("b", 4, "2020-01-16 12:01"), ("c", 5, "2020-01-16 12:00"), ("c", 6, "2020-01-01")])
    assert label_windows(f, "time", 7, 1).tolist() == [0, 0, -1, -1, -1, -1]
    assert label_windows(f, "time", 7, 2).tolist() == [0, 0, 1, 1, -1, -1]
    assert label_windows(f, "time", 7, 3).tolist() == [0, 0, 1, 1, 2, -1]


def test_label_windows_user_last_counts_baskets_and_keeps_one_back():
    from workflows.splits import label_windows

    f = _frame([
        ("a", 1, "2020-01-01"), ("a", 2, "2020-01-05"), ("a", 3, "2020-01-05"), ("a", 4, "2020-01-03"),
        ("b", 5, "2020-01-02"), ("b", 6, "2020-01-02"),  # one basket: never a label
        ("c", 7, "2020-01-03"), ("c", 8, "2020-01-04"),  # two baskets: only the last can be a label
    ])
    assert label_windows(f, "user-last", 7, 1).tolist() == [-1, 0, 0, -1, -1, -1, -1, 0]
    # a: baskets 01-05 (0), 01-03 (1), 01-01 stays history; c: its first basket stays history
    assert label_windows(f, "user-last", 7, 3).tolist() == [-1, 0, 0, 1, -1, -1, -1, 0]
    # window 0 is what the user-last split itself holds out
    held = label_windows(f, "user-last", 7, 1) == 0
    assert sorted(f[held]["item_id"]) == sorted(split(f, "user-last").test["item_id"])
