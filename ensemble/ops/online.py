"""OnlineHistory: each user's purchases newer than the export, read from the Feast online store per request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema

from ensemble.online_store import open_store, read_recent
from ensemble.ops.base import USER_ID, ServingOperator, column

ONLINE_ITEMS = "online_items"


def online_matches(cands: np.ndarray, online: np.ndarray) -> np.ndarray:
    """``(users, width)``: whether each candidate is among the user's online purchases."""
    if online.shape[1] == 0:
        return np.zeros(cands.shape, dtype=bool)
    return ((cands[:, :, None] == online[:, None, :]) & (online[:, None, :] >= 0)).any(axis=2)


class OnlineHistory(ServingOperator):
    """``online_items``: item rows of purchases after ``as_of`` from the feature repository's ``user_recent``.

    The repository is live state, not an artifact: it is referenced by path (``funnel features
    apply``), and ``funnel events ingest`` changes what the next request reads. Retrieval adds these
    items to repurchase candidates, the filter treats them as seen, the ranker's pair features
    count them.
    """

    files = ("item_attributes.parquet",)

    def __init__(self, source_dir: str | Path, feature_repo: str | Path, as_of: str, width: int = 50):
        super().__init__(source_dir)
        self.feature_repo, self.as_of, self.width = str(Path(feature_repo).resolve()), str(as_of), int(width)

    def load(self, path: Path) -> None:
        self._store = open_store(self.feature_repo)
        attrs = pd.read_parquet(path / "item_attributes.parquet", columns=["item_id"])
        self._items = pd.Index(attrs["item_id"].astype(str))
        self._since = int(pd.Timestamp(self.as_of).timestamp())

    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:
        return [column(ONLINE_ITEMS, np.int32, True)]

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = [v.decode() if isinstance(v, bytes) else str(v) for v in columns[USER_ID].reshape(-1)]
        out = np.full((len(users), self.width), -1, dtype=np.int32)
        if not users:
            return {ONLINE_ITEMS: out}
        items, times = read_recent(self._store, users)
        for row, (its, ts) in enumerate(zip(items, times)):
            fresh = [i for i, t in zip(its, ts) if t >= self._since][: self.width]
            if fresh:
                pos = self._items.get_indexer(fresh)
                pos = pos[pos >= 0]
                out[row, : len(pos)] = pos
        return {ONLINE_ITEMS: out}
