"""Drift statistics on their own: PSI (numeric, categorical), concentration."""

from __future__ import annotations

import numpy as np
import pandas as pd

from funnel.monitor import concentration, psi_categorical, psi_numeric


def test_psi_is_near_zero_for_the_same_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.lognormal(0, 0.5, 20_000)
    assert psi_numeric(ref, rng.lognormal(0, 0.5, 20_000)) < 0.01
    small, large = psi_numeric(ref, ref * 1.1), psi_numeric(ref, ref * 1.5)
    assert 0.01 < small < large and large > 0.25


def test_psi_matches_the_formula_on_a_hand_computed_case():
    ref = pd.Series(["a"] * 50 + ["b"] * 50)
    cur = pd.Series(["a"] * 80 + ["b"] * 20)
    psi, detail = psi_categorical(ref, cur)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert abs(psi - expected) < 1e-6
    assert detail["top_share_reference"] == 0.5 and detail["top_share_current"] in (0.8, 0.2)


def test_unseen_categories_are_pooled_and_count_as_drift():
    ref = pd.Series(["a", "b"] * 500)
    psi, _ = psi_categorical(ref, pd.Series(["c", "d"] * 500))
    assert psi > 1.0


def test_concentration():
    even = concentration(pd.Series(np.arange(1000)))
    skewed = concentration(pd.Series([0] * 900 + list(range(1, 101))))
    assert even["gini"] < 0.01 and even["top1pct_share"] == 0.01
    assert skewed["gini"] > 0.8 and skewed["top1pct_share"] > 0.9
