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
    positives: pd.DataFrame, per_positive: int, seed: int, alpha: float = 0.75, popular: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Positives (label 1) plus ``per_positive`` sampled items per row (label 0).

    Negatives are drawn by :func:`popularity_draws` from the items of ``popular`` (default: the
    positives themselves; pass the training rows when sampling for test rows, so the test period's
    own popularity is not used); a negative keeps the user, time and context of its positive.
    Draws that hit an item the user bought among ``positives`` are dropped. Hard negatives from
    the retriever come with the ranking stage.
    """
    pos = positives.assign(**{TARGET: np.int8(1)})
    if per_positive <= 0 or positives.empty:
        return pos.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    counts = (positives if popular is None else popular)["item_id"].value_counts(sort=False)
    if popular is not None:  # items only the positives have: weight 0 (never drawn), but indexed for the pair keys
        counts = counts.reindex(counts.index.union(positives["item_id"].unique(), sort=False), fill_value=0)
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
