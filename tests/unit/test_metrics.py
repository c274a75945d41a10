"""Metric implementations against hand-computed cases."""

import math

import numpy as np

import pytest

from funnel.core import metrics


RECS = [["a", "b", "c", "d"], ["x", "y", "z", "w"]]
TRUTH = [{"b", "d", "q"}, {"w"}]


def test_recall():
    # user 1: {b} of 3 in top 2 -> 1/3; user 2: none in top 2 -> 0
    assert metrics.recall_at_k(RECS, TRUTH, 2) == pytest.approx((1 / 3 + 0) / 2)
    # top 4: user 1 -> 2/3, user 2 -> 1
    assert metrics.recall_at_k(RECS, TRUTH, 4) == pytest.approx((2 / 3 + 1) / 2)


def test_hit_rate_and_empty_truth_ignored():
    assert metrics.hit_rate_at_k(RECS, TRUTH, 2) == 0.5
    assert metrics.recall_at_k(RECS + [["a"]], TRUTH + [set()], 4) == pytest.approx((2 / 3 + 1) / 2)


def test_ndcg():
    # user 1: hits at ranks 2 and 4 -> dcg = 1/log2(3) + 1/log2(5); idcg (3 relevant, k=4) = 1 + 1/log2(3) + 1/2
    u1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    u2 = (1 / math.log2(5)) / 1.0
    assert metrics.ndcg_at_k(RECS, TRUTH, 4) == pytest.approx((u1 + u2) / 2)


def test_map_at_12_as_in_the_hm_competition():
    # user 1: P@2 = 1/2, P@4 = 2/4 -> (0.5 + 0.5) / min(3, 12); user 2: P@4 = 1/4 -> 0.25 / 1
    assert metrics.map_at_k(RECS, TRUTH, 12) == pytest.approx(((0.5 + 0.5) / 3 + 0.25) / 2)
    # a repeated relevant item counts once
    assert metrics.map_at_k([["b", "b"]], [{"b"}], 12) == pytest.approx(1.0)


def test_coverage():
    assert metrics.coverage_at_k(RECS, 16, 2) == 4 / 16


def test_a_repeated_relevant_item_gains_once():
    # [a, a, b] with relevant {a, b}: DCG = 1/log2(2) + 1/log2(4) (b at rank 3), not 1 + 1/log2(3) + ...
    dcg = 1.0 + 1.0 / np.log2(4)
    idcg = 1.0 + 1.0 / np.log2(3)
    assert metrics.ndcg_at_k([["a", "a", "b"]], [{"a", "b"}], 3) == pytest.approx(dcg / idcg)
    assert metrics.ndcg_at_k([["a", "a", "a"]], [{"a"}], 3) == pytest.approx(1.0)
