"""Popularity-weighted negative draws."""

import numpy as np
import pandas as pd

from workflows.negatives import popularity_draws


def test_draws_follow_count_to_the_power_alpha():
    counts = pd.Series([100, 1], index=["hit", "rare"])
    draws = popularity_draws(counts, 20_000, np.random.default_rng(0), alpha=0.75)
    expected = 100 ** 0.75 / (100 ** 0.75 + 1)
    assert abs((draws == 0).mean() - expected) < 0.01

