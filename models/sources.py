"""Candidate sources beside the two-tower, fitted and tuned for the ranking stage.

The item-item source (``workflows.item_item``: EASE weights over what each user bought) is fitted
on the history before the label period, its ``lambda`` chosen by the Recall@k of its own top-k on
the label period, and the blend weight that orders candidates when the ranker is not used is
chosen the same way on the ranker's training users. The held-out gate users play no part in
either choice: they judge the ranker against the tuned blend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from funnel.core.metrics import recalls_at_k
from workflows.item_item import ItemItem, blend
from workflows.purchases import PurchaseHistory

BLEND_WEIGHTS = [round(w, 1) for w in np.linspace(0.0, 1.0, 11)]
MAX_TUNING_USERS = 10_000


@dataclass
class ItemItemSource:
    """The served graph's item-item source over one history: EASE weights, the purchases they score
    (``workflows.purchases``, rows of ``users`` x the item table) and the top-N per user."""

    model: ItemItem
    purchases: PurchaseHistory
    users: pd.Index  # raw user ids of the purchase history's rows
    n: int

    def top(self, user_ids: np.ndarray, exclude_seen: bool, n: int | None = None) -> np.ndarray:
        """``(users, n)`` item rows (``-1``-padded) of the item-item top-N of raw user ids."""
        return self.model.top(self.purchases, self.users.get_indexer(user_ids), self.n if n is None else n,
                              exclude_seen=exclude_seen)

    def pair_scores(self, user_ids: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Item-item score of each (user id, item row) pair (flat arrays; -1 rows score 0)."""
        codes, uniques = pd.factorize(pd.Series(user_ids))
        if not len(codes):
            return np.zeros(0, dtype=np.float32)
        slot = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        grid = np.full((len(uniques), int(slot.max()) + 1), -1, dtype=np.int64)
        grid[codes, slot] = item_rows
        return self.model.pair_scores(self.purchases, self.users.get_indexer(uniques), grid)[codes, slot]


def tune_item_item(history: PurchaseHistory, users: pd.Index, truth: pd.Series, k: int, lams: list[float],
                   neighbours: int, max_items: int, n: int, exclude_seen: bool) -> tuple[ItemItemSource, dict]:
    """Fit EASE for every ``lambda`` on ``history``; keep the one whose top-k recalls ``truth``
    (user id -> set of item rows bought in the label period) best."""
    tried: dict[str, float] = {}
    best: tuple[float, ItemItemSource] | None = None
    user_ids = truth.index.to_numpy()
    for lam in lams:
        source = ItemItemSource(ItemItem.fit(history, lam, neighbours, max_items), history, users, n)
        recall = float(np.mean(recalls_at_k(source.top(user_ids, exclude_seen, n=k).tolist(), list(truth), k)))
        tried[f"{lam:g}"] = round(recall, 5)
        if best is None or recall > best[0]:
            best = (recall, source)
    assert best is not None
    return best[1], {"lambda": best[1].model.lam, "neighbours": neighbours, "max_items": max_items,
                     f"label_recall@{k}_by_lambda": tried}


def order_recall(order: np.ndarray, cands: pd.DataFrame, truth: pd.Series, k: int) -> float:
    """Mean Recall@k of ``truth``'s users when their candidates (rows of ``cands``) are ordered by ``order``."""
    ranked = cands.assign(_o=order).sort_values(["user_id", "_o"], ascending=[True, False], kind="stable")
    top = ranked.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(s[:k])).reindex(truth.index)
    return float(np.mean(recalls_at_k([t if isinstance(t, list) else [] for t in top], list(truth), k)))


def blend_order(cands: pd.DataFrame, weight: float) -> np.ndarray:
    """The order serving uses without a ranker (``workflows.item_item.blend``) for candidate rows."""
    codes = pd.factorize(cands["user_id"])[0]
    return blend(cands["retrieval_score"].to_numpy(), cands["item_item_score"].to_numpy(), codes, weight)


def tune_blend(cands: pd.DataFrame, truth: pd.Series, k: int, seed: int) -> tuple[float, dict[str, Any]]:
    """The item-item weight of the blend with the best Recall@k on ``truth``'s users (raw ids; at most
    ``MAX_TUNING_USERS`` of them). Ties go to the smaller weight."""
    if len(truth) > MAX_TUNING_USERS:
        truth = truth.sample(MAX_TUNING_USERS, random_state=seed)
    mine = cands[cands["user_id"].isin(truth.index)]
    recalls = {w: order_recall(blend_order(mine, w), mine, truth, k) for w in BLEND_WEIGHTS}
    best = max(BLEND_WEIGHTS, key=lambda w: (recalls[w], -w))
    return best, {"blend_weight": best, f"tuning_recall@{k}_by_weight": {f"{w:g}": round(r, 5) for w, r in recalls.items()},
                  "tuning_users": int(len(truth))}
