"""Top-k by score: the one argpartition-based selection every stage uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores per row, best first."""
    scores = np.atleast_2d(scores)
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


CHUNK_CELLS = 1 << 25  # query x item scores held at once (128 MiB of float32)


def dot_top_k(queries: np.ndarray, items: np.ndarray, k: int,
              exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Exact top-k item positions per query row by inner product.

    ``exclude[row]`` lists item positions never returned for that row (``-1`` entries, as
    from ``pd.Index.get_indexer`` for unknown ids, are ignored). Scores are computed for a block
    of query rows at a time (``CHUNK_CELLS`` scores), so memory does not grow with the number of
    queries: 50k users x 105k items would be 21 GB at once.
    """
    queries = np.atleast_2d(queries)
    step = max(1, CHUNK_CELLS // max(len(items), 1))
    blocks = []
    for start in range(0, len(queries), step):
        scores = queries[start:start + step] @ items.T
        if exclude is not None:
            for row, cols in enumerate(exclude[start:start + step]):
                cols = np.asarray(cols, dtype=np.int64)
                scores[row, cols[cols >= 0]] = -np.inf
        blocks.append(top_k_positions(scores, k))
    if not blocks:
        return np.zeros((0, max(0, min(k, len(items)))), dtype=np.int64)
    return np.concatenate(blocks)
