"""Train/test splits written with raw ids, so anyone can evaluate against them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
