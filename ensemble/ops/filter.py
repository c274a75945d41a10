"""FilterCandidates: business rules per user (seen, out of stock, categories, explicit lists)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema

from ensemble.config import ExcludeSeen
from workflows.purchases import PurchaseHistory
from ensemble.ops.base import CANDIDATES, EXCLUDE, USER_ROW, ServingOperator
from ensemble.ops.online import ONLINE_ITEMS, online_matches

INVENTORY = "inventory.parquet"


class FilterCandidates(ServingOperator):
    """Replace excluded candidates with ``-1``.

    Rules: ``exclude_seen`` = ``all`` (anything the user bought), ``days`` (bought within
    ``seen_days``) or ``never``; ``out_of_stock`` drops items whose ``in_stock`` is false in
    ``inventory.parquet`` (re-read whenever the file changes, so the ops stage can update stock
    without a re-export); ``exclude_categories`` maps an item attribute to values to drop;
    ``exclude_items`` lists raw ids to drop always; the request's ``exclude_items`` too.
    """

    files = ("history.npz", "item_attributes.parquet", INVENTORY)

    def __init__(self, source_dir: str | Path, exclude_seen: ExcludeSeen = ExcludeSeen.ALL, seen_days: int = 0,
                 out_of_stock: bool = True, exclude_categories: dict[str, list] | None = None,
                 exclude_items: list | None = None):
        super().__init__(source_dir)
        exclude_seen = ExcludeSeen(exclude_seen)  # the Enum holds the valid values
        if exclude_seen == ExcludeSeen.AUTO:
            raise ValueError("exclude_seen: resolve auto (by domain) before building the filter")
        self.exclude_seen, self.seen_days = str(exclude_seen), int(seen_days)
        self.out_of_stock = bool(out_of_stock)
        self.exclude_categories = {str(k): list(v) for k, v in (exclude_categories or {}).items()}
        self.exclude_items = [str(i) for i in (exclude_items or [])]

    def load(self, path: Path) -> None:
        self._path = path
        self._history = PurchaseHistory.load(path / "history.npz")
        attrs = pd.read_parquet(path / "item_attributes.parquet")
        self._item_index = pd.Index(attrs["item_id"].astype(str))
        blocked = np.zeros(len(attrs), dtype=bool)
        for col, values in self.exclude_categories.items():
            blocked |= attrs[col].isin(values).to_numpy()
        blocked[self._lookup(self.exclude_items)] = True
        self._static_blocked = blocked
        self._inventory_stamp = None
        self._refresh_inventory()

    def _lookup(self, raw_ids) -> np.ndarray:
        pos = self._item_index.get_indexer([v.decode() if isinstance(v, bytes) else str(v) for v in raw_ids])
        return pos[pos >= 0]

    def _refresh_inventory(self) -> None:
        """Re-read the inventory when its file changed (one stat per request)."""
        stat = os.stat(self._path / INVENTORY)
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._inventory_stamp:
            return
        inventory = pd.read_parquet(self._path / INVENTORY)
        out = np.zeros(len(self._item_index), dtype=bool)
        if self.out_of_stock:
            gone = inventory.loc[~inventory["in_stock"].astype(bool), "item_id"]
            out[self._lookup(gone)] = True
        self._blocked = self._static_blocked | out
        self._inventory_stamp = stamp

    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:
        return [input_schema[CANDIDATES]]

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._refresh_inventory()
        cands = columns[CANDIDATES].copy()
        rows = columns[USER_ROW]
        valid = cands >= 0
        drop = valid & self._blocked[np.maximum(cands, 0)]
        if self.exclude_seen != ExcludeSeen.NEVER:
            entry = self._history.lookup(rows, cands)
            seen = entry >= 0
            if self.exclude_seen == ExcludeSeen.DAYS:
                seen &= self._history.days_ago[np.maximum(entry, 0)] <= self.seen_days
            drop |= seen
            if ONLINE_ITEMS in columns:  # bought since the export (online store): seen, and recent
                drop |= valid & online_matches(cands, columns[ONLINE_ITEMS])
        extra = columns.get(EXCLUDE)
        if extra is not None and extra.shape[-1] and len(cands):
            drop |= valid & np.isin(cands, self._lookup(extra[0]))  # request-level: the same for every user
        cands[drop] = -1
        return {CANDIDATES: cands}
