"""Stock levels of an export, updatable while Triton serves it (no re-export, no restart)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from funnel.core.artifacts import ensemble_dir
from funnel.core.errors import FunnelError


def inventory_path(repo: str | Path) -> Path:
    path = ensemble_dir(repo) / "inventory.parquet"
    if not path.exists():
        raise FunnelError(f"{repo}: no inventory (not a funnel export; run `funnel export`)")
    return path


def read_inventory(repo: str | Path) -> pd.DataFrame:
    """item_id (raw, as text) and in_stock for every catalogue item."""
    return pd.read_parquet(inventory_path(repo))


def update_inventory(repo: str | Path, updates: pd.DataFrame) -> int:
    """Set ``in_stock`` for the given raw item ids; the serving filter sees it on its next request.

    Unknown item ids are an error (naming the first). The file is replaced atomically, so a
    request never reads half of it. Returns the number of items now out of stock.
    """
    path = inventory_path(repo)
    for col in ("item_id", "in_stock"):
        if col not in updates.columns:
            raise FunnelError(f"inventory update: column '{col}' missing")
    current = pd.read_parquet(path).set_index("item_id")
    ids = updates["item_id"].astype(str)
    unknown = ids[~ids.isin(current.index)]
    if len(unknown):
        raise FunnelError(f"inventory update: item '{unknown.iloc[0]}' is not in the catalogue "
                          f"({len(unknown)} unknown)")
    current.loc[ids.to_numpy(), "in_stock"] = updates["in_stock"].astype(bool).to_numpy()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    current.reset_index().to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return int((~current["in_stock"]).sum())
