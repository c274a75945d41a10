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
