"""Candidate sources beside the two-tower, fitted and tuned for the ranking stage.

The item-item source (``workflows.item_item``: EASE weights over what each user bought) is fitted
on the history before the label period, its ``lambda`` chosen by the Recall@k of its own top-k on
the label period, and the blend weights that order candidates when the ranker is not used
(two-tower, item-item, the user's own purchase count and recency, the new-item flag) are chosen the same way on the
ranker's training users. Once the ranker is trained, its share of the blend is chosen on the
held-out users that choose its epoch. The held-out gate users play no part in any choice: they
judge the blend with the ranker against the blend without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from funnel.core.metrics import recalls_at_k
from workflows.candidates import BLEND_SCORES, NEW_ITEM, RANKER_SCORE, blend, shortlist
from workflows.item_item import ItemItem
from workflows.purchases import PurchaseHistory

BLEND_WEIGHTS = [round(w, 1) for w in np.linspace(0.0, 1.0, 11)]
OWN_WEIGHTS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
NEW_WEIGHTS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6]
MAX_TUNING_USERS = 10_000
SHORTLIST_GAP = 1e6  # puts a cascade's unranked candidates below its shortlist (blends are sums of z-scores)


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
                   neighbours: int, max_items: int, n: int, exclude_seen: bool,
                   recencies: list[float] = (0.0,), sequences: list[float] = (0.0,)) -> tuple[ItemItemSource, dict]:
    """Fit EASE for every ``lambda`` and "bought next" weight (``sequences``, see
    ``workflows.item_item.transitions``; 0: none) on ``history`` and score users with each recency
    weighting (``workflows.item_item.user_matrix``; 0: none); keep the triple whose top-k recalls
    ``truth`` (user id -> set of item rows bought in the label period) best: at most
    ``MAX_TUNING_USERS`` of them (a fixed sample), as every triple scores them all."""
    tried: dict[str, float] = {}
    best: tuple[float, ItemItemSource] | None = None
    if len(truth) > MAX_TUNING_USERS:
        truth = truth.sample(MAX_TUNING_USERS, random_state=0)
    user_ids = truth.index.to_numpy()
    for model in ItemItem.fit_each(history, lams, neighbours, max_items, sequences):
        for recency in recencies:  # a weighting of the users' items: no refit
            source = ItemItemSource(replace(model, recency=float(recency)), history, users, n)
            recall = float(np.mean(recalls_at_k(source.top(user_ids, exclude_seen, n=k).tolist(), list(truth), k)))
            tried[f"{model.lam:g}/{recency:g}/{model.sequence:g}"] = round(recall, 5)
            if best is None or recall > best[0]:
                best = (recall, source)
    assert best is not None
    chosen = best[1].model
    return best[1], {"lambda": chosen.lam, "recency": chosen.recency, "sequence": chosen.sequence,
                     "neighbours": neighbours, "max_items": max_items,
                     f"label_recall@{k}_by_lambda/recency/sequence": tried}


def order_recall(order: np.ndarray, cands: pd.DataFrame, truth: pd.Series, k: int) -> float:
    """Mean Recall@k of ``truth``'s users (user id -> set of item ids) when their candidates (rows of
    ``cands``: user_id, item_id) are ordered by ``order``, ties in candidate order; vectorised."""
    users = pd.Index(truth.index)
    code = users.get_indexer(cands["user_id"])
    mine = code >= 0
    code, items, order = code[mine], cands["item_id"].to_numpy()[mine], np.asarray(order)[mine]
    item_index = pd.Index(pd.unique(items))
    sizes = truth.map(len).to_numpy()
    wanted_users = np.repeat(np.arange(len(users)), sizes)
    wanted_items = item_index.get_indexer([i for t in truth for i in t])
    n = max(len(item_index), 1)
    wanted = np.unique(wanted_users[wanted_items >= 0] * n + wanted_items[wanted_items >= 0])
    top = np.flatnonzero(shortlist(order, code, k))  # each user's k best, ties in candidate order
    hit = np.isin(code[top].astype(np.int64) * n + item_index.get_indexer(items[top]), wanted)
    hits = np.bincount(code[top][hit], minlength=len(users))
    return float(np.mean(hits / np.maximum(sizes, 1))) if len(users) else 0.0


def blend_order(cands: pd.DataFrame, weights: dict[str, float], first: dict[str, float] | None = None,
                n: int = 0) -> np.ndarray:
    """The order serving uses (``workflows.candidates.blend``) for candidate rows carrying the columns of
    the weighted scores. A cascade where ``weights`` hold the ranker's score and ``n > 0``: the blend
    ``first`` (the sources alone) picks each user's ``n`` best, those come first in the order of
    ``weights`` (standardised over the shortlist, as serving scores only it), the rest follow in
    ``first``'s order."""
    codes = pd.factorize(cands["user_id"])[0]
    if first is None or n <= 0 or not weights.get(RANKER_SCORE):
        return blend({name: cands[name].to_numpy() for name, w in weights.items() if w}, codes, weights)
    before = blend({name: cands[name].to_numpy() for name, w in first.items() if w}, codes, first)
    kept = shortlist(before, codes, n)
    order = before.astype(np.float64) - SHORTLIST_GAP
    order[kept] = blend({name: cands[name].to_numpy()[kept] for name, w in weights.items() if w}, codes[kept], weights)
    return order


def tune_blend(cands: pd.DataFrame, truth: pd.Series, k: int, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Blend weights with the best Recall@k on ``truth``'s users (raw ids; at most ``MAX_TUNING_USERS``).

    Steps on a grid: the item-item share ``a`` of the two-tower / item-item pair (0-1 by 0.1),
    then the shares of the user's own purchase count and recency (0-0.5 by 0.1 each) taken from
    that pair, then (where there are new-item candidates) the share of the ``new_item`` flag
    (0-0.6) taken from all of those. Ties go to the simpler weights (earlier in the grid): a score that never varies (no
    repurchases) gets no weight.
    """
    if len(truth) > MAX_TUNING_USERS:
        truth = truth.sample(MAX_TUNING_USERS, random_state=seed)
    mine = cands[cands["user_id"].isin(truth.index)]
    tried: dict[str, float] = {}

    def score(weights: dict[str, float]) -> float:
        recall = order_recall(blend_order(mine, weights), mine, truth, k)
        tried[", ".join(f"{n}={w:g}" for n, w in weights.items() if w)] = round(recall, 5)
        return recall

    def best(grid: list[dict[str, float]]) -> dict[str, float]:
        scored = [(score(w), -i, w) for i, w in enumerate(grid)]
        return max(scored, key=lambda t: (t[0], t[1]))[2]

    pair = best([{"retrieval_score": 1 - a, "item_item_score": a} for a in BLEND_WEIGHTS])
    own = best([{**{n: w * (1 - b - c) for n, w in pair.items()}, "pair_purchases": b, "pair_days_since": c}
                for b in OWN_WEIGHTS for c in OWN_WEIGHTS])
    if NEW_ITEM in mine and mine[NEW_ITEM].any():  # how far to lift never-bought articles (their score alone can't)
        own = best([{**{n: w * (1 - d) for n, w in own.items()}, NEW_ITEM: d} for d in NEW_WEIGHTS])
    weights = {n: round(float(own.get(n, 0.0)), 4) for n in BLEND_SCORES}
    return weights, {"weights": weights, f"tuning_recall@{k}": tried, "tuning_users": int(len(truth))}


def tune_ranker_share(cands: pd.DataFrame, truth: pd.Series, k: int, weights: dict[str, float], n: int = 0
                      ) -> tuple[dict[str, float], dict[str, Any]]:
    """The blend with the ranker: ``weights`` scaled by ``1 - r`` plus ``r`` on the ranker's logit
    (``RANKER_SCORE`` column of ``cands``), ``r`` (0-1 by 0.1) with the best Recall@k on ``truth``'s
    users, the ranker scoring each user's ``n`` best by ``weights`` (``blend_order``; 0: every
    candidate). Ties go to the smaller share: ``r = 0`` (the ranker adds nothing) unless it helps."""
    mine = cands[cands["user_id"].isin(truth.index)]
    tried: dict[str, float] = {}
    best: tuple[float, dict[str, float]] | None = None
    for r in BLEND_WEIGHTS:
        mixed = {**{name: round(w * (1 - r), 4) for name, w in weights.items()}, RANKER_SCORE: r}
        recall = order_recall(blend_order(mine, mixed, weights, n), mine, truth, k) if len(truth) else 0.0
        tried[f"ranker_share={r:g}"] = round(recall, 5)
        if best is None or recall > best[0]:
            best = (recall, mixed)
    return best[1], {"weights": best[1], f"tuning_recall@{k}": tried, "tuning_users": int(len(truth))}
