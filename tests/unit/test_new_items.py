"""The new-item source: which items are new at a cutoff, their top-N by two-tower score, the
training candidates that carry them, and the blend weight that lifts them."""

import numpy as np
import pandas as pd
import pytest

from funnel.data.canonical import Dataset
from models.ranking_rows import candidates
from models.sources import tune_blend
from workflows.candidates import FRESH_DAYS, NEW_DAYS, NEW_ITEM, NewItems, top_new


def test_new_items_are_never_bought_and_on_sale():
    item_ids = np.arange(10, 20)
    bought = np.array([10, 12, 19, 99])  # 99: bought, but not in the catalogue
    assert len(NewItems.at(bought, item_ids).rows) == 0  # no stock history: unbought is not new
    on_sale = np.ones(10, dtype=bool)
    on_sale[[3, 5, 9]] = False
    assert len(NewItems.at(bought, item_ids, on_sale).rows) == 0
    fresh = np.zeros(10)  # all came on sale at the cutoff: the unbought ones on sale are new
    assert NewItems.at(bought, item_ids, on_sale, fresh).rows.tolist() == [1, 4, 6, 7, 8]
    # with a stock history: on sale for at most NEW_DAYS (NaN = all along: dead stock, not news)
    days = np.array([0, 0, 5, 0, 0, 0, NEW_DAYS + 1, np.nan, 14, 0])
    new = NewItems.at(bought, item_ids, on_sale, days)
    assert new.rows.tolist() == [1, 4, 8]
    np.testing.assert_allclose(new.freshness, np.exp(-np.array([0, 0, 14]) / FRESH_DAYS), rtol=1e-6)
    scores = new.scores(10)
    assert scores[[1, 8]].tolist() == pytest.approx([1.0, np.exp(-2)]) and scores[[0, 2, 3, 6, 7]].sum() == 0


def test_new_items_round_trip(tmp_path):
    new = NewItems(np.array([4, 2], dtype=np.int32), np.array([1.0, 0.5], dtype=np.float32))
    new.save(tmp_path / "new_items.npz")
    again = NewItems.load(tmp_path / "new_items.npz")
    assert again.rows.tolist() == [4, 2] and again.freshness.tolist() == [1.0, 0.5]


def test_stock_at_a_time_is_each_items_latest_change_before_it(tmp_path):
    t = pd.Timestamp("2020-01-10")
    pd.DataFrame({"item_id": [1, 1, 2, 3, 3, 5, 5], "in_stock": [False, True, False, True, False, False, True],
                  "timestamp": [t - pd.Timedelta(days=5), t + pd.Timedelta(days=1), t - pd.Timedelta(days=1),
                                t - pd.Timedelta(days=3), t, t - pd.Timedelta(days=9), t - pd.Timedelta(days=2, hours=12)]}
                 ).to_parquet(tmp_path / "stock.parquet")
    # 1: off sale until after t; 2: went off sale; 3: off at t exactly; 4: no change, in stock; 5: launched 2.5 days ago
    data = Dataset(tmp_path, {})
    assert data.in_stock_at([1, 2, 3, 4, 5], t).tolist() == [False, False, False, True, True]
    days = data.days_on_sale_at([1, 2, 3, 4, 5], t)
    assert np.isnan(days[[0, 1, 3]]).all()  # no change to in stock by t
    assert days[[2, 4]].tolist() == [3.0, 2.5]  # 3 came on sale 3 days before t (and left at t: in_stock_at says so)
    assert Dataset(tmp_path / "none", {}).in_stock_at([1], t) is None
    assert Dataset(tmp_path / "none", {}).days_on_sale_at([1], t) is None


def test_top_new_is_the_best_scored_new_items_per_query():
    rng = np.random.default_rng(0)
    q, vectors = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    new_rows = np.array([3, 7, 8, 15, 21, 22, 29])
    got = top_new(q, vectors, new_rows, 10)
    for row in range(len(q)):
        scores = vectors[new_rows] @ q[row]
        expected = new_rows[np.argsort(-scores)]
        assert got[row, :7].tolist() == expected.tolist()
        assert got[row, 7:].tolist() == [-1, -1, -1]  # only seven new items
    assert (top_new(q, vectors, np.array([], dtype=int), 3) == -1).all()


def test_training_candidates_carry_the_new_source_and_flag():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    vectors = np.array([[1, 0], [0.9, 0], [0.5, 0], [0.2, 0], [0.1, 0]], dtype=np.float32)
    items = np.array([10, 11, 12, 13, 14])
    new = NewItems(np.array([0, 3, 4], dtype=np.int32), np.array([1.0, 0.5, 0.25], dtype=np.float32))
    cands = candidates(q, np.array(["u"]), items, vectors, 2, {}, repurchase=True, new=new, n_new=2)
    by_item = cands.set_index("item_id")
    assert cands["item_id"].tolist() == [10, 11, 13]  # top-2, then the best new item not yet there
    assert by_item["source"].to_dict() == {10: "retrieval", 11: "retrieval", 13: "new"}
    assert by_item[NEW_ITEM].to_dict() == {10: 1.0, 11: 0.0, 13: 0.5}  # the freshness follows the item


def _lists(users: int, truth_is_new: bool, seed: int = 0):
    """Each user: 18 old candidates with higher two-tower scores, 2 new ones with lower scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        score = np.concatenate([rng.uniform(0.5, 1.0, 18), rng.uniform(0.0, 0.4, 2)])
        for i in range(20):
            rows.append((f"u{u}", f"u{u}-{i}", score[i], 0.0, 0.0, 0.0, float(i >= 18)))
    cands = pd.DataFrame(rows, columns=["user_id", "item_id", "retrieval_score", "item_item_score", "pair_purchases",
                                        "pair_days_since", NEW_ITEM])
    pick = (lambda u: {f"u{u}-{18 + u % 2}"}) if truth_is_new else (
        lambda u: {cands[cands["user_id"] == f"u{u}"].sort_values("retrieval_score")["item_id"].iloc[-1]})
    truth = pd.Series({f"u{u}": pick(u) for u in range(users)})
    return cands, truth


def test_blend_lifts_new_items_only_where_they_are_bought():
    cands, truth = _lists(100, truth_is_new=True)
    weights, facts = tune_blend(cands, truth, 3, seed=0)
    assert weights[NEW_ITEM] > 0  # without the lift, a new item is never in the top 3
    assert max(facts["tuning_recall@3"].values()) == 1.0
    cands, truth = _lists(100, truth_is_new=False)
    weights, _ = tune_blend(cands, truth, 3, seed=0)
    assert weights[NEW_ITEM] == 0  # ties go to the simpler weights
