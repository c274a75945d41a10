"""Simple, strong peers for ``bench/quality.py``, each tuned on a validation split carved from train.

- ``ease``: EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): the closed-form item-item
  weights ``B = -P / diag(P)`` with ``P = (X'X + lambda I)^-1`` and a zero diagonal; a user's scores
  are ``x_u B``. Dense in the number of items (fine up to ~20k items).
- ``ease-recency``: EASE's weights, a user's row weighing the n-th latest distinct item by
  ``exp(-n / r)`` instead of 1 (what the served item-item source does with its tuned ``recency``);
  ``lambda`` and ``r`` tuned together. Computed here from the train frame, apart from the funnel's code.
- ``item-knn``: cosine item-item similarity of the binary user-item matrix, each item keeping its
  ``neighbours`` most similar items; scores ``x_u S``.
- ``frequency``: the user's own items by purchase count (ties: the more recent first), the rest by
  recent popularity: "buy again what you bought most" (only where the data has repurchases).

Every method answers every test user (one without history gets the recent-popularity list), excludes
items seen in training where the data has no repurchases (as ``funnel evaluate`` does), and is
scored with ``funnel.core.metrics.recall_at_k`` over the same test users and items.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from funnel.core import metrics
from workflows.item_item import ease_weights  # the served item-item source's own fit

USER_BATCH = 2048


class Split:
    """A train/test pair with the index maps and matrix the peers need."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame, exclude_seen: bool, popular_days: int = 7):
        self.train, self.exclude_seen = train, exclude_seen
        truth = test.groupby("user_id")["item_id"].apply(set)
        self.users, self.truth = truth.index.to_numpy(), list(truth.to_numpy())
        self.items = pd.Index(train["item_id"].unique())
        self.user_index = pd.Index(train["user_id"].unique())
        rows, cols = self.user_index.get_indexer(train["user_id"]), self.items.get_indexer(train["item_id"])
        x = sp.csr_matrix((np.ones(len(train), np.float32), (rows, cols)), shape=(len(self.user_index), len(self.items)))
        x.sum_duplicates()
        self.counts = x  # purchase counts
        self.x = (x > 0).astype(np.float32).tocsr()  # bought at least once
        # each user's distinct items ranked by their latest purchase, newest 0 (ties: the lower item column)
        last = pd.DataFrame({"u": rows, "i": cols, "t": train["timestamp"].to_numpy()}).groupby(["u", "i"])["t"].max()
        last = last.reset_index().sort_values(["u", "t", "i"], ascending=[True, False, True])
        self.recency_rank = sp.csr_matrix((last.groupby("u").cumcount().to_numpy(np.float64),
                                           (last["u"].to_numpy(), last["i"].to_numpy())), shape=x.shape)
        recent = train[train["timestamp"] >= train["timestamp"].max() - pd.Timedelta(days=popular_days)]
        ranked = list(recent["item_id"].value_counts().index)
        seen = set(ranked)
        self.popular = ranked + [i for i in train["item_id"].value_counts().index if i not in seen]

    def recall(self, lists: list[list], k: int) -> float:
        return metrics.recall_at_k(lists, self.truth, k)

    def lists_from_scores(self, score_rows: Callable[[np.ndarray], np.ndarray], k: int) -> list[list]:
        """Top-k per test user from an item-score function of known users (row indices)."""
        known = self.user_index.get_indexer(self.users)
        out: list[list] = [[] for _ in self.users]
        where = np.flatnonzero(known >= 0)
        for start in range(0, len(where), USER_BATCH):
            batch = where[start : start + USER_BATCH]
            scores = np.asarray(score_rows(known[batch]), dtype=np.float64)
            if self.exclude_seen:
                seen = self.x[known[batch]]
                scores[seen.nonzero()] = -np.inf
            top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
            order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)
            for row, pos in zip(order, batch):
                out[pos] = [self.items[i] for i in row]
        return [self._fill(rec, user, k) for rec, user in zip(out, self.users)]

    def _fill(self, first: list, user, k: int) -> list:
        """Pad with recent popularity (never an excluded or repeated item)."""
        taken = set(first)
        row = self.user_index.get_indexer([user])[0]
        excluded = set(self.items[self.x[row].indices]) if self.exclude_seen and row >= 0 else set()
        out = list(first)
        for item in self.popular:
            if len(out) >= k:
                break
            if item not in taken and item not in excluded:
                out.append(item)
                taken.add(item)
        return out[:k]


def ease(split: Split, k: int, lam: float) -> list[list]:
    b = ease_weights(split.x, lam)
    return split.lists_from_scores(lambda rows: (split.x[rows] @ b), k)


def recency_rows(split: Split, rows: np.ndarray, r: float) -> sp.csr_matrix:
    """Users' rows with the n-th latest distinct item weighing ``exp(-n / r)``."""
    x = split.x[rows].tocoo()
    rank = np.asarray(split.recency_rank[rows][x.row, x.col]).ravel()
    return sp.csr_matrix((np.exp(-rank / r).astype(np.float32), (x.row, x.col)), shape=x.shape)


def tuned_ease_recency(valid: Split, test: Split, k: int, lams: list[float], recencies: list[float]) -> dict:
    """``ease-recency``: every (lambda, r) scored on ``valid`` (one fit per lambda), the best on ``test``."""
    scored = []
    for lam in lams:
        b = ease_weights(valid.x, lam)
        for r in recencies:
            lists = valid.lists_from_scores(lambda rows: recency_rows(valid, rows, r) @ b, k)
            scored.append((valid.recall(lists, k), {"lam": lam, "recency": r}))
    best_valid, params = max(scored, key=lambda t: t[0])
    b = ease_weights(test.x, params["lam"])
    lists = test.lists_from_scores(lambda rows: recency_rows(test, rows, params["recency"]) @ b, k)
    return {f"recall@{k}": test.recall(lists, k), "params": params, "valid_recall": best_valid,
            "grid": {str(p): v for v, p in scored}}


def knn_similarity(x: sp.csr_matrix, neighbours: int) -> sp.csc_matrix:
    """Cosine item-item similarity, each item (column) keeping its ``neighbours`` strongest others."""
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    sim = (x.T @ x).tocsr().astype(np.float64)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    inv = sp.diags(1.0 / np.maximum(norms, 1e-12))
    sim = (inv @ sim @ inv).tocsc()
    # keep each item's (column's) strongest neighbours
    data, indices, indptr = [], [], [0]
    for j in range(sim.shape[1]):
        start, end = sim.indptr[j], sim.indptr[j + 1]
        vals, rows = sim.data[start:end], sim.indices[start:end]
        if len(vals) > neighbours:
            keep = np.argpartition(-vals, neighbours)[:neighbours]
            vals, rows = vals[keep], rows[keep]
        data.append(vals)
        indices.append(rows)
        indptr.append(indptr[-1] + len(vals))
    return sp.csc_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=sim.shape)


def item_knn(split: Split, k: int, neighbours: int) -> list[list]:
    sim = knn_similarity(split.x, neighbours)
    return split.lists_from_scores(lambda rows: (split.x[rows] @ sim).toarray(), k)


def frequency(split: Split, k: int) -> list[list]:
    last = split.train.groupby(["user_id", "item_id"])["timestamp"].max()
    count = split.train.groupby(["user_id", "item_id"]).size()
    own = pd.DataFrame({"n": count, "last": last}).reset_index().sort_values(
        ["user_id", "n", "last"], ascending=[True, False, False])
    mine = own.groupby("user_id")["item_id"].apply(list)
    return [split._fill(mine.get(u, [])[:k], u, k) for u in split.users]


GRIDS = {"ease": {"lam": [10.0, 50.0, 200.0, 500.0, 2000.0]}, "item-knn": {"neighbours": [20, 50, 100, 400]}}
METHODS = {"ease": ease, "item-knn": item_knn}
EASE_RECENCIES = [5.0, 10.0, 20.0, 50.0]  # r of ease-recency (the served source's grid, less its 0: plain EASE)


def tuned(name: str, valid: Split, test: Split, k: int) -> dict:
    """Best grid point on ``valid``, then scored on ``test``."""
    grid = GRIDS[name]
    keys = list(grid)
    scored = []
    for values in itertools.product(*(grid[key] for key in keys)):
        params = dict(zip(keys, values))
        scored.append((valid.recall(METHODS[name](valid, k, **params), k), params))
    best_valid, params = max(scored, key=lambda t: t[0])
    return {f"recall@{k}": test.recall(METHODS[name](test, k, **params), k), "params": params,
            "valid_recall": best_valid, "grid": {str(p): v for v, p in scored}}
