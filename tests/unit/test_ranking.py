"""DLRM ranker on tiny data: candidates, labels without look-ahead, learning, save/load, AUC maths."""

import json

import numpy as np
import pandas as pd
import pytest

from models.ranking import auc_logloss
from models.ranking_data import candidates, pair_history


def test_auc_and_logloss_hand_computed():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    # pairs (pos, neg): (0.9>0.8) (0.9>0.1) (0.3<0.8) (0.3>0.1) -> 3/4
    figures = auc_logloss(labels, scores)
    assert figures["auc"] == pytest.approx(0.75)
    expected = -np.mean([np.log(0.9), np.log(0.2), np.log(0.3), np.log(0.9)])
    assert figures["logloss"] == pytest.approx(expected)


def test_pair_history_counts_and_recency():
    ts = pd.to_datetime(["2020-01-01", "2020-01-05", "2020-01-03", "2020-01-09"])
    history = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": [1, 1, 2, 1], "timestamp": ts})
    pairs = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": [1, 3, 1, 1]})
    bought, since = pair_history(pairs, history, pd.Timestamp("2020-01-10"))
    np.testing.assert_allclose(bought, np.log1p([2, 0, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(since, np.log1p([5, 365, 1, 365]), rtol=1e-6)


def test_candidates_merge_sources_and_respect_domain():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    vectors = np.array([[1, 0], [0.9, 0], [0, 1], [0, 0.8]], dtype=np.float32)
    items = np.array([10, 11, 12, 13])
    users = np.array(["u", "v"])
    history = {"u": [13, 10], "v": [12]}
    rep = candidates(q, users, items, vectors, 2, history, repurchase=True, recent=1)
    assert rep[rep["user_id"] == "u"]["item_id"].tolist() == [10, 11, 13]  # top-2 + own latest (13)
    assert rep.set_index(["user_id", "item_id"]).loc[("u", 13), "source"] == "repurchase"
    assert rep.set_index(["user_id", "item_id"]).loc[("u", 10), "retrieval_score"] == pytest.approx(1.0)
    no_rep = candidates(q, users, items, vectors, 2, history, repurchase=False)
    assert 10 not in no_rep[no_rep["user_id"] == "u"]["item_id"].tolist()  # seen items excluded
    assert 12 not in no_rep[no_rep["user_id"] == "v"]["item_id"].tolist()


def test_ranker_manifest_and_learning(ranked_run):
    m = json.loads((ranked_run / "ranking.json").read_text())
    d = m["data"]
    assert d["positives"] > 0 and d["hard_negatives"] > 0 and d["random_negatives"] > 0
    assert m["epochs_run"] == 2 and m["device"] == "cpu"
    assert m["metrics"]["valid_auc"] > 0.6  # clearly better than chance on held-out users
    assert 0 < m["metrics"]["valid_recall@12_retrieval_order"] <= 1 and isinstance(m["use_ranker"], bool)
    assert all("valid_recall@12" in h for h in m["history"])
    pre = json.loads((ranked_run / "retrieval.json").read_text())
    split_cutoff = pd.Timestamp(json.loads((pd.io.common.Path(pre["data"]["pre"]) / "preprocess.json").read_text())
                                ["split"]["cutoff"])
    assert pd.Timestamp(d["label_period_start"]) < split_cutoff  # labels come from before the test period


def test_saved_ranker_round_trip(ranked_run):
    from models.ranking import score_pairs
    from models.ranking_data import assemble, ranking_schema
    from models.tf_helpers import load_tower
    from workflows import TARGET

    pre = pd.io.common.Path(json.loads((ranked_run / "retrieval.json").read_text())["data"]["pre"])
    users = pd.read_parquet(pre / "catalogue" / "users.parquet")
    items = pd.read_parquet(pre / "catalogue" / "items.parquet")
    history = pd.read_parquet(pre / "splits" / "train.parquet")
    pairs = history[["user_id", "item_id"]].head(50).assign(retrieval_score=np.float32(0.5))
    rows = assemble(pairs, users, items, history, pd.Timestamp("2030-01-01")).assign(**{TARGET: 0})
    schema = ranking_schema(pre)
    a = score_pairs(load_tower(ranked_run / "ranker"), rows, schema)
    b = score_pairs(load_tower(ranked_run / "ranker"), rows, schema)
    assert a.shape == (50,) and ((a > 0) & (a < 1)).all()
    np.testing.assert_allclose(a, b, rtol=1e-6)
