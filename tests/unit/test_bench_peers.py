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
