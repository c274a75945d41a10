"""Candidate lists from several sources, as the served graph builds them and the ranker is trained on.

Candidates are ``(users, width)`` arrays of item rows, ``-1``-padded. Sources are concatenated
in priority order and a duplicate keeps its first source (a retrieved item the user bought
before stays a ``retrieval`` candidate). ``ensemble.ops.retrieve.RetrieveCandidates`` and
``models.ranking_data.candidates`` both build their lists with :func:`merge_sources`.
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
