"""Sampled negatives for the ranking data (raw ids, before the workflow transform)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflows import TARGET


def popularity_draws(counts: pd.Series, n: int, rng: np.random.Generator, alpha: float = 0.75) -> np.ndarray:
    """``n`` positions into ``counts`` (item -> purchases) drawn with probability ~ count**alpha.

    word2vec-style smoothing: popular items appear, but not only them. The one sampler of
    popularity negatives (the preprocessing ranking data and the ranker's random negatives).
    """
    weights = counts.to_numpy(dtype=np.float64) ** alpha
    return rng.choice(len(counts), size=n, p=weights / weights.sum())


def sample_negatives(
    positives: pd.DataFrame, per_positive: int, seed: int, alpha: float = 0.75
) -> pd.DataFrame:
    """Positives (label 1) plus ``per_positive`` sampled items per row (label 0).

    Negatives are drawn from the training items by :func:`popularity_draws`; a negative keeps
    the user, time and context of its positive. Draws that hit an item the user bought in
    training are dropped. Hard negatives from the retriever come with the ranking stage.
    """
    pos = positives.assign(**{TARGET: np.int8(1)})
    if per_positive <= 0 or positives.empty:
        return pos.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    counts = positives["item_id"].value_counts(sort=False)
    draws = popularity_draws(counts, len(positives) * per_positive, rng, alpha)
    neg = positives.loc[positives.index.repeat(per_positive)].reset_index(drop=True)
    neg["item_id"] = counts.index.to_numpy()[draws]
    # (user, item) pairs as one int64 key: user code * n_items + item code
    user_codes, _ = pd.factorize(positives["user_id"])
    item_codes = counts.index.get_indexer(positives["item_id"])
    bought = pd.Index(user_codes.astype(np.int64) * len(counts) + item_codes)
    neg_keys = np.repeat(user_codes.astype(np.int64), per_positive) * len(counts) + draws
    neg = neg[~pd.Index(neg_keys).isin(bought)]
    neg = neg.assign(**{TARGET: np.int8(0)})
    return pd.concat([pos, neg], ignore_index=True)
