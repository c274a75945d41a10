"""Train/test splits written with raw ids, so anyone can evaluate against them."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from funnel.core.errors import FunnelError
from workflows.config import Split


SPLITS = tuple(Split.values())


@dataclass(frozen=True)
class SplitResult:
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp  # features are computed as of this time (time: test start; user-last: end of train)


def split(interactions: pd.DataFrame, how: Split | str = Split.TIME, test_days: int = 7) -> SplitResult:
    """Split interactions.

    ``time``: the last ``test_days`` calendar days are test (as in the H&M competition).
    ``user-last``: per user, the interactions at the user's latest timestamp are the test
    basket; users with a single basket (one distinct timestamp) stay wholly in train.
    """
    if interactions.empty:
        raise FunnelError("split: no interactions")
    ts = interactions["timestamp"]
    if how == "time":
        if test_days < 1:
            raise FunnelError("split: --test-days must be >= 1")
        cutoff = ts.max().normalize() - pd.Timedelta(days=test_days - 1)
        is_test = ts >= cutoff
        if is_test.all():
            raise FunnelError(f"split: the data spans fewer than {test_days + 1} days; nothing left to train on")
    elif how == "user-last":
        last = ts.groupby(interactions["user_id"], sort=False).transform("max")
        first = ts.groupby(interactions["user_id"], sort=False).transform("min")
        is_test = (ts == last) & (first < last)
        if not is_test.any():
            raise FunnelError("split: no user has more than one basket; user-last leaves no test set")
        cutoff = ts[~is_test].max() + pd.Timedelta(seconds=1)  # features describe all of train
    else:
        raise FunnelError(f"split: unknown split {how!r} (choose from {', '.join(SPLITS)})")
    return SplitResult(interactions[~is_test], interactions[is_test], cutoff)
