"""The quality benchmark's peers (bench/peers.py) against independent computations."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)


def test_item_knn_keeps_each_items_strongest_cosine_neighbours():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((80, 10)) < 0.4).astype(np.float32))
    sim = peers.knn_similarity(x, 3).toarray()
    dense = x.toarray()
    cos = (dense.T @ dense) / np.outer(np.linalg.norm(dense, axis=0), np.linalg.norm(dense, axis=0))
    np.fill_diagonal(cos, 0.0)
    for j in range(10):
        kept = np.flatnonzero(sim[:, j])
        assert len(kept) == 3 and set(kept) == set(np.argsort(-cos[:, j])[:3])
        assert np.allclose(sim[kept, j], cos[kept, j])


def test_frequency_puts_the_most_bought_first_and_fills_with_popularity():
    t = pd.Timestamp("2024-01-01")
    train = pd.DataFrame({"user_id": ["a", "a", "a", "b", "c", "c"], "item_id": [1, 2, 2, 3, 3, 4],
                          "timestamp": [t, t, t + pd.Timedelta(days=1), t, t, t]})
    test = pd.DataFrame({"user_id": ["a", "new"], "item_id": [2, 3], "timestamp": t + pd.Timedelta(days=2)})
    split = peers.Split(train, test, exclude_seen=False)
    lists = peers.frequency(split, 3)
    assert lists[0][:2] == [2, 1] and len(lists[0]) == 3
    assert set(lists[1][:2]) == {2, 3} and len(lists[1]) == 3  # a new user gets recent popularity
    assert split.recall(lists, 1) == 0.5


def test_ease_recency_rows_match_the_served_sources_recency_weighting():
    """The peer's weights (pandas ranks of the train frame) equal the served item-item source's
    (workflows.item_item.user_matrix over a PurchaseHistory): two computations of one quantity."""
    from workflows.item_item import user_matrix
    from workflows.purchases import PurchaseHistory

    rng = np.random.default_rng(4)
    t = pd.Timestamp("2024-01-01")
    train = pd.DataFrame({"user_id": rng.integers(0, 12, 150), "item_id": rng.integers(100, 130, 150),
                          "timestamp": [t + pd.Timedelta(minutes=int(m)) for m in rng.permutation(150)]})
    test = pd.DataFrame({"user_id": [0, 1], "item_id": [100, 101], "timestamp": t + pd.Timedelta(days=9)})
    split = peers.Split(train, test, exclude_seen=True)
    rows = np.arange(len(split.user_index))
    got = peers.recency_rows(split, rows, 3.0).toarray()
    history = PurchaseHistory.build(train, split.user_index, split.items, train["timestamp"].max())
    want = user_matrix(history, rows, recency=3.0).toarray()
    assert np.allclose(got, want, atol=1e-6)
    assert np.isclose(got.max(), 1.0) and (got > 0).sum() == split.x.nnz
