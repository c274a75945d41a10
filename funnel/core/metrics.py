"""Ranking metrics over lists of recommended raw ids and sets of relevant raw ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recalls_at_k(recommended: Sequence[Sequence], relevant: Sequence[set], k: int) -> np.ndarray:
    """|top-k ∩ relevant| / |relevant| of each user with relevant items, in order."""
    return np.array([len(set(list(r)[:k]) & t) / len(t) for r, t in zip(recommended, relevant) if t], dtype=np.float64)


def recall_at_k(recommended: Sequence[Sequence], relevant: Sequence[set], k: int) -> float:
    """Mean over users with relevant items of |top-k ∩ relevant| / |relevant|."""
    values = recalls_at_k(recommended, relevant, k)
    return float(values.mean()) if len(values) else 0.0


def hit_rate_at_k(recommended: Sequence[Sequence], relevant: Sequence[set], k: int) -> float:
    """Share of users with at least one relevant item in the top k."""
    values = [bool(set(list(r)[:k]) & t) for r, t in zip(recommended, relevant) if t]
    return float(np.mean(values)) if values else 0.0


def ndcg_at_k(recommended: Sequence[Sequence], relevant: Sequence[set], k: int) -> float:
    """Binary-relevance NDCG@k (ideal DCG puts min(|relevant|, k) hits first).

    A relevant item repeated in a list gains only at its first position.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for r, t in zip(recommended, relevant):
        if not t:
            continue
        top = list(r)[:k]
        gains = np.array([item in t and item not in top[:i] for i, item in enumerate(top)], dtype=float)
        dcg = float((gains * discounts[: len(gains)]).sum())
        idcg = float(discounts[: min(len(t), k)].sum())
        values.append(dcg / idcg)
    return float(np.mean(values)) if values else 0.0


def map_at_k(recommended: Sequence[Sequence], relevant: Sequence[set], k: int = 12) -> float:
    """Mean average precision at k as in the H&M competition: sum P@i*rel_i / min(|relevant|, k)."""
    values = []
    for r, t in zip(recommended, relevant):
        if not t:
            continue
        hits, score, seen = 0, 0.0, set()
        for i, item in enumerate(list(r)[:k]):
            if item in t and item not in seen:
                hits += 1
                score += hits / (i + 1)
            seen.add(item)
        values.append(score / min(len(t), k))
    return float(np.mean(values)) if values else 0.0


def coverage_at_k(recommended: Sequence[Sequence], catalogue_size: int, k: int) -> float:
    """Share of the catalogue that appears in anyone's top k."""
    shown = set()
    for r in recommended:
        shown.update(list(r)[:k])
    return len(shown) / catalogue_size if catalogue_size else 0.0
