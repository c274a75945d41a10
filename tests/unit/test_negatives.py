"""Sampled negatives: popularity-weighted, never an item the user bought, test negatives from train popularity."""

import numpy as np
import pandas as pd

from workflows import TARGET
from workflows.negatives import popularity_draws, sample_negatives


def test_draws_follow_count_to_the_power_alpha():
    counts = pd.Series([100, 1], index=["hit", "rare"])
    draws = popularity_draws(counts, 20_000, np.random.default_rng(0), alpha=0.75)
    expected = 100 ** 0.75 / (100 ** 0.75 + 1)
    assert abs((draws == 0).mean() - expected) < 0.01


def test_test_negatives_come_from_training_popularity_only():
    train = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "item_id": [1, 1, 2, 2]})
    test = pd.DataFrame({"user_id": ["a", "b"], "item_id": [9, 9]})  # a test-only item, popular in the test week
    out = sample_negatives(test, 5, seed=0, popular=train)
    negatives = out[out[TARGET] == 0]
    assert len(negatives) > 0 and set(negatives["item_id"]) <= {1, 2}  # never the test period's own hit
    assert (out[TARGET] == 1).sum() == 2
    own = sample_negatives(train, 5, seed=0)
    bought = set(zip(train["user_id"], train["item_id"]))
    assert not any(pair in bought for pair in zip(own.loc[own[TARGET] == 0, "user_id"], own.loc[own[TARGET] == 0, "item_id"]))
