"""Candidate lists from several sources, as the served graph builds them and the ranker is trained on.

Candidates are ``(users, width)`` arrays of item rows, ``-1``-padded. Sources are concatenated
in priority order and a duplicate keeps its first source (a retrieved item the user bought
before stays a ``retrieval`` candidate). ``ensemble.ops.retrieve.RetrieveCandidates`` and
``models.ranking_data.candidates`` both build their lists with :func:`merge_sources`.

Without a ranker the candidates are ordered by :func:`blend`: a weighted sum of the candidate
scores every source provides (``BLEND_SCORES``), each standardised over the user's candidates;
the weights are tuned at training time (``models.sources``) and served from ``ranking.json``.
"""

from __future__ import annotations

import numpy as np

RETRIEVAL, REPURCHASE, TRENDING, ITEM_ITEM = 0, 1, 2, 3
SOURCE_NAMES = ("retrieval", "repurchase", "trending", "item-item")


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """1 where an id appears for the first time in its row (scanning left to right), else 0; -1 never counts."""
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros(ids.shape, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    first = np.empty(ids.shape, dtype=np.int8)
    np.put_along_axis(first, order, (~repeat & (ordered >= 0)).astype(np.int8), axis=1)
    return first


def merge_sources(parts: list[np.ndarray], kinds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``(users, n_i)`` blocks of item rows; later duplicates and ``-1`` become ``-1``.

    Returns the candidate rows (int32) and the source of each (int8, ``-1`` where none).
    """
    ids = np.concatenate(parts, axis=1).astype(np.int32)
    src = np.concatenate([np.full(p.shape, kind, dtype=np.int8) for p, kind in zip(parts, kinds)], axis=1)
    ids[first_occurrence(ids) == 0] = -1
    return ids, np.where(ids >= 0, src, -1).astype(np.int8)


# the scores a candidate carries, and the direction in which each one is better
BLEND_SCORES = {"retrieval_score": 1.0, "item_item_score": 1.0, "pair_purchases": 1.0, "pair_days_since": -1.0}


def standardise(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(value - mean) / std within each group (a user's candidates); 0 where a group is constant."""
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return values
    count = np.bincount(groups)
    mean = np.bincount(groups, values) / np.maximum(count, 1)
    centred = values - mean[groups]
    std = np.sqrt(np.bincount(groups, centred ** 2) / np.maximum(count, 1))[groups]
    return np.where(std > 1e-12, centred / np.where(std > 1e-12, std, 1.0), 0.0)


def blend(scores: dict[str, np.ndarray], users: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """The candidate order without a ranker: ``sum_f w_f z(s_f)`` over ``BLEND_SCORES`` (days since
    counted negatively), each score standardised over the user's candidates. Flat arrays, one entry
    per candidate; ``users`` says whose it is (any integer code). Missing weights count 0."""
    out = np.zeros(len(users), dtype=np.float64)
    for name, sign in BLEND_SCORES.items():
        if weights.get(name):
            out += weights[name] * standardise(sign * np.asarray(scores[name], dtype=np.float64), users)
    return out.astype(np.float32)
