"""Popularity-weighted draws of negative items (the ranker's random negatives)."""

from __future__ import annotations

import numpy as np
import pandas as pd



def popularity_draws(counts: pd.Series, n: int, rng: np.random.Generator, alpha: float = 0.75) -> np.ndarray:
    """``n`` positions into ``counts`` (item -> purchases) drawn with probability ~ count**alpha.

    word2vec-style smoothing: popular items appear, but not only them. The one sampler of
    popularity negatives (the ranker's random negatives).
    """
    weights = counts.to_numpy(dtype=np.float64) ** alpha
    return rng.choice(len(counts), size=n, p=weights / weights.sum())

