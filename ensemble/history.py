"""Per-user purchase history packed for serving: CSR arrays in an ``.npz`` (no pickles)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


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

    @classmethod
    def build(cls, interactions: pd.DataFrame, user_ids: pd.Index, item_ids: pd.Index,
              as_of: pd.Timestamp) -> "PurchaseHistory":
        """From raw (user_id, item_id, timestamp) rows; users/items outside the tables are dropped."""
        frame = pd.DataFrame({"u": user_ids.get_indexer(interactions["user_id"]),
                              "i": item_ids.get_indexer(interactions["item_id"]),
                              "t": interactions["timestamp"].to_numpy()})
        frame = frame[(frame["u"] >= 0) & (frame["i"] >= 0)]
        stats = frame.groupby(["u", "i"])["t"].agg(["size", "max"]).reset_index()
        stats = stats.sort_values(["u", "max", "i"], ascending=[True, False, True], kind="stable")
        days = ((as_of - stats["max"]) / pd.Timedelta(days=1)).clip(lower=0)
        counts = np.bincount(stats["u"].to_numpy(), minlength=len(user_ids))
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, stats["i"].to_numpy(np.int32), stats["size"].to_numpy(np.float32),
                   days.to_numpy(np.float32))

    def of(self, user_row: int) -> slice:
        if user_row < 0:
            return slice(0, 0)
        return slice(int(self.offsets[user_row]), int(self.offsets[user_row + 1]))

    def save(self, path: Path) -> None:
        np.savez(path, offsets=self.offsets, items=self.items, counts=self.counts, days_ago=self.days_ago)

    @classmethod
    def load(cls, path: Path) -> "PurchaseHistory":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["offsets"], data["items"], data["counts"], data["days_ago"])
