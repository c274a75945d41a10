"""The serving operators on their own: ordering, sampling, history, Faiss choice, filters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflows.purchases import PurchaseHistory
from ensemble.index import build_index, choose_kind, recall_vs_exact
from funnel.core.topk import dot_top_k
from ensemble.ops.base import CANDIDATES, EXCLUDE, USER_ROW
from ensemble.ops.order import order_slots


def test_top_k_is_by_score_with_ties_in_candidate_order():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, -np.inf], [-np.inf, -np.inf, 0.2, -np.inf, -np.inf]], dtype=np.float32)
    slots = order_slots(scores, 3)
    assert slots[0].tolist() == [1, 3, 2]
    assert slots[1].tolist() == [2, -1, -1]  # fewer survivors than k: padded


def test_sampling_is_a_softmax_with_temperature():
    scores = np.log(np.array([[1.0, 2.0, 4.0]]))
    rng = np.random.default_rng(0)
    firsts = np.array([order_slots(scores, 1, temperature=1.0, rng=rng)[0, 0] for _ in range(20_000)])
    share = np.bincount(firsts, minlength=3) / len(firsts)
    np.testing.assert_allclose(share, [1 / 7, 2 / 7, 4 / 7], atol=0.015)
    # hotter: flatter; colder: the deterministic order
    hot = np.array([order_slots(scores, 1, temperature=50.0, rng=rng)[0, 0] for _ in range(6_000)])
    assert abs(np.bincount(hot, minlength=3) / len(hot) - 1 / 3).max() < 0.03
    cold = [order_slots(scores, 3, temperature=1e-4, rng=rng)[0].tolist() for _ in range(50)]
    assert all(c == [2, 1, 0] for c in cold)


def test_sampling_never_returns_filtered_candidates():
    scores = np.array([[1.0, -np.inf, 0.5, -np.inf]])
    slots = order_slots(scores, 4, temperature=5.0, rng=np.random.default_rng(1))
    assert sorted(slots[0][slots[0] >= 0].tolist()) == [0, 2] and (slots[0] == -1).sum() == 2


def test_purchase_history_counts_recency_and_round_trip(tmp_path):
    t = pd.Timestamp("2020-01-10")
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b", "zz"], "item_id": [1, 2, 1, 2, 1],
                          "timestamp": [t - pd.Timedelta(days=d) for d in (5, 1, 3, 2, 1)]})
    hist = PurchaseHistory.build(frame, pd.Index(["a", "b", "c"]), pd.Index([1, 2]), t)
    a = hist.of(0)
    assert hist.items[a].tolist() == [1, 0]  # item 2 (row 1) bought most recently
    assert hist.counts[a].tolist() == [1.0, 2.0] and hist.days_ago[a].tolist() == [1.0, 3.0]
    assert hist.items[hist.of(2)].size == 0 and hist.items[hist.of(-1)].size == 0  # no history, unknown user
    hist.save(tmp_path / "h.npz")
    again = PurchaseHistory.load(tmp_path / "h.npz")
    assert np.array_equal(again.offsets, hist.offsets) and np.array_equal(again.days_ago, hist.days_ago)


def test_index_kind_follows_catalogue_size():
    assert choose_kind(400) == "flat" and choose_kind(100_000) == "ivf" and choose_kind(5_000_000) == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_recall_is_measured_against_exact_search(kind):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    index, info = build_index(vectors, queries, 50, kind)
    _, found = index.search(queries, 50)
    measured = recall_vs_exact(found, dot_top_k(queries, vectors, 50))
    assert info["kind"] == kind and info["recall@50_vs_exact"] == round(measured, 4)
    assert measured >= (1.0 if kind == "flat" else 0.95)


def test_recall_counts_minus_one_padding_as_a_miss():
    assert recall_vs_exact(np.array([[3, -1]]), np.array([[3, 4]])) == 0.5


@pytest.fixture
def filter_dir(tmp_path):
    t = pd.Timestamp("2020-01-31")
    frame = pd.DataFrame({"user_id": ["u0", "u0"], "item_id": ["i1", "i2"],
                          "timestamp": [t - pd.Timedelta(days=2), t - pd.Timedelta(days=40)]})
    items = pd.Index(["i0", "i1", "i2", "i3", "i4"])
    PurchaseHistory.build(frame, pd.Index(["u0", "u1"]), items, t).save(tmp_path / "history.npz")
    pd.DataFrame({"item_id": items, "colour": ["red", "blue", "red", "blue", "green"]}).to_parquet(
        tmp_path / "item_attributes.parquet")
    pd.DataFrame({"item_id": items, "in_stock": [True, True, True, False, True]}).to_parquet(
        tmp_path / "inventory.parquet")
    return tmp_path


def _filter(path, **rules):
    from ensemble.ops.filter import FilterCandidates

    op = FilterCandidates(path, **rules)
    op.load_artifacts(str(path))
    return op


def _run(op, rows, exclude=None):
    cands = np.tile(np.arange(5, dtype=np.int32), (len(rows), 1))
    exclude = np.empty((len(rows), 0), dtype=object) if exclude is None else np.tile(np.array(exclude, dtype=object), (len(rows), 1))
    return op.compute({CANDIDATES: cands, USER_ROW: np.array(rows), EXCLUDE: exclude})[CANDIDATES]


def test_filter_rules(filter_dir):
    # seen (all time) + out of stock (i3); user u1 has no history; unknown user -1
    out = _run(_filter(filter_dir), [0, 1, -1])
    assert out[0].tolist() == [0, -1, -1, -1, 4] and out[1].tolist() == [0, 1, 2, -1, 4] and out[2].tolist() == out[1].tolist()
    # seen within 30 days only: i2 (40 days ago) comes back
    assert _run(_filter(filter_dir, exclude_seen="days", seen_days=30), [0])[0].tolist() == [0, -1, 2, -1, 4]
    # repurchase domains: never exclude seen; stock rule off
    assert _run(_filter(filter_dir, exclude_seen="never", out_of_stock=False), [0])[0].tolist() == [0, 1, 2, 3, 4]
    # categories, explicit ids from config and from the request
    op = _filter(filter_dir, exclude_seen="never", exclude_categories={"colour": ["red"]}, exclude_items=["i4"])
    assert _run(op, [1], exclude=[b"i1", b"unknown"])[0].tolist() == [-1, -1, -1, -1, -1]
    with pytest.raises(ValueError, match="ExcludeSeen"):
        _filter(filter_dir, exclude_seen="sometimes")


def test_filter_sees_inventory_updates_without_reload(filter_dir):
    from ensemble.ops.filter import FilterCandidates

    op = FilterCandidates(filter_dir, exclude_seen="never")
    op.load_artifacts(str(filter_dir))
    assert _run(op, [1])[0].tolist() == [0, 1, 2, -1, 4]
    inv = pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3", "i4"], "in_stock": [False, True, True, True, True]})
    inv.to_parquet(filter_dir / ".tmp.parquet")
    (filter_dir / ".tmp.parquet").replace(filter_dir / "inventory.parquet")
    assert _run(op, [1])[0].tolist() == [-1, 1, 2, 3, 4]


def test_pickled_operator_holds_configuration_only(filter_dir):
    import pickle

    op = _filter(filter_dir)
    state = pickle.loads(pickle.dumps(op)).__dict__
    assert not any(k.startswith("_") for k in state) and state["exclude_seen"] == "all"


def test_missing_artifacts_are_named(tmp_path):
    from ensemble.ops.filter import FilterCandidates

    with pytest.raises(FileNotFoundError, match="history.npz"):
        FilterCandidates(tmp_path).load_artifacts(str(tmp_path))


def test_history_lookup_and_recent_are_vectorised_views():
    t = pd.Timestamp("2020-01-10")
    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [1, 2, 3],
                          "timestamp": [t - pd.Timedelta(days=d) for d in (5, 1, 2)]})
    hist = PurchaseHistory.build(frame, pd.Index(["a", "b", "c"]), pd.Index([1, 2, 3]), t)
    entry = hist.lookup(np.array([0, 1, -1]), np.array([[0, 1, 2, -1], [0, 1, 2, -1], [0, 1, 2, -1]]))
    assert (entry >= 0).tolist() == [[True, True, False, False], [False, False, True, False], [False] * 4]
    assert hist.counts[entry[0, 0]] == 1 and hist.days_ago[entry[0, 1]] == 1
    assert hist.recent(np.array([0, 1, 2, -1]), 3).tolist() == [[1, 0, -1], [2, -1, -1], [-1] * 3, [-1] * 3]


def test_duplicates_keep_their_first_source():
    from workflows.candidates import first_occurrence

    ids = np.array([[5, 3, 5, -1, 3, 7], [1, 1, 1, 2, -1, -1]])
    assert first_occurrence(ids).tolist() == [[1, 1, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]]


def test_tiers_order_before_scores():
    scores = np.array([[0.2, 0.9, 0.5, -np.inf]])
    tiers = np.array([[0, 1, 0, 2]])
    assert order_slots(scores, 4, tiers=tiers)[0].tolist() == [2, 0, 1, -1]
    sampled = order_slots(scores, 4, temperature=0.5, rng=np.random.default_rng(0), tiers=tiers)[0]
    assert sampled[2] == 1 and sampled[3] == -1  # the fill stays behind ranked candidates


def test_list_features_become_values_and_offsets_for_the_signature():
    from ensemble.savedmodel import model_inputs

    inputs = {"item_id": (np.int32, 1), "genres__values": (np.int32, 1), "genres__offsets": (np.int64, 1),
              "score": (np.float32, 2)}
    lists = np.empty(3, dtype=object)
    lists[:] = [np.array([4, 5]), np.array([], dtype=np.int32), np.array([7])]
    feed, rows = model_inputs({"item_id": np.array([1, 2, 3]), "genres": lists, "score": np.ones(3)}, inputs)
    assert rows == 3 and set(feed) == set(inputs)
    assert feed["genres__values"].tolist() == [4, 5, 7] and feed["genres__offsets"].tolist() == [0, 2, 2, 3]
    assert feed["score"].shape == (3, 1) and feed["genres__values"].dtype == np.int32
    with pytest.raises(KeyError, match="inputs missing: item_id"):
        model_inputs({"genres": lists, "score": np.ones(3)}, inputs)


def test_logged_propensities_are_the_sampling_probabilities():
    """Plackett-Luce propensities of drawn lists match how often order_slots draws those lists."""
    from collections import Counter

    from ensemble.ops.order import plackett_luce

    scores = np.array([[1.0, 0.5, 0.0, -np.inf]])
    rng = np.random.default_rng(0)
    draws = [tuple(order_slots(scores, 2, temperature=0.7, rng=rng)[0]) for _ in range(30_000)]
    freq = Counter(draws)
    for pair in [(0, 1), (1, 0), (2, 0), (0, 2)]:
        p = plackett_luce(scores, np.array([pair]), 0.7).prod()
        assert freq[pair] / len(draws) == pytest.approx(p, abs=0.01)
    # softmax by hand for the first position
    e = np.exp(np.array([1.0, 0.5, 0.0]) / 0.7)
    assert plackett_luce(scores, np.array([[1, 0]]), 0.7)[0, 0] == pytest.approx(e[1] / e.sum(), rel=1e-5)
    # tiers: the draw runs tier by tier, so the second tier's first item is certain here
    tiers = np.array([[0, 1, 1, 0]])
    p = plackett_luce(np.array([[1.0, 0.5, 0.0, 0.2]]), np.array([[0, 3, 2, 1]]), 1.0, tiers)[0]
    assert p[0] == pytest.approx(np.exp(1.0) / (np.exp(1.0) + np.exp(0.2)), rel=1e-5) and p[1] == 1.0
    assert p[2] == pytest.approx(np.exp(0.0) / (np.exp(0.0) + np.exp(0.5)), rel=1e-5) and p[3] == 1.0
    assert plackett_luce(scores, np.array([[0, 1, -1]]), 0.0).tolist()[0][:2] == [1.0, 1.0]


def test_dot_top_k_in_blocks_of_queries_equals_one_argsort_per_row(monkeypatch):
    """Scores are computed a block of query rows at a time; the answer (with exclusions) is what a
    full argsort of each row's scores gives."""
    from funnel.core import topk

    rng = np.random.default_rng(3)
    queries, items = rng.normal(size=(23, 8)), rng.normal(size=(40, 8))
    exclude = [rng.choice(40, 5, replace=False) for _ in range(23)]
    exclude[4] = np.array([-1, 2])  # -1 (unknown id) is ignored
    monkeypatch.setattr(topk, "CHUNK_CELLS", 40 * 3)  # 3 query rows per block: 8 blocks, the last partial
    found = topk.dot_top_k(queries, items, 6, exclude)
    for row in range(23):
        scores = queries[row] @ items.T
        banned = set(exclude[row][exclude[row] >= 0])
        expected = [i for i in np.argsort(-scores, kind="stable") if i not in banned][:6]
        assert found[row].tolist() == expected
    assert topk.dot_top_k(queries[:0], items, 6).shape == (0, 6)


def test_reserved_new_items_are_each_rows_best_new_candidates_and_end_the_list():
    from ensemble.ops.base import RESERVED_TIER
    from ensemble.ops.order import plackett_luce, reserved_last
    from ensemble.ops.rank import reserve_new_items

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(40, 9)).astype(np.float32)
    scores[:, 4] = scores[:, 5]  # ties: candidate order decides
    tiers = rng.choice([0, 0, 0, 1, 2], size=scores.shape).astype(np.int8)
    new = rng.random(scores.shape) < 0.3
    new[0] = False  # a row without new candidates reserves nothing
    out = reserve_new_items(scores, tiers, new, 2)
    for row in range(len(scores)):
        # independently: the new candidates by (tier, -score, position), the first two
        ranked = sorted((int(tiers[row, j]), -float(scores[row, j]), j) for j in np.flatnonzero(new[row]))
        want = {j for _, _, j in ranked[:2]}
        assert set(np.flatnonzero(out[row] == RESERVED_TIER)) == want
        kept = [j for j in range(scores.shape[1]) if j not in want]
        assert out[row, kept].tolist() == tiers[row, kept].tolist()  # the others' tiers as they were
    assert reserve_new_items(scores, tiers, new, 0) is tiers
    # shown: the k - 2 best others as before, then the reserved ones, best first
    k = 6
    for row in range(len(scores)):
        reserved = sorted(np.flatnonzero(out[row] == RESERVED_TIER), key=lambda j: -scores[row, j])
        others = [j for j in order_slots(scores[row:row + 1], 9, tiers=tiers[row:row + 1])[0] if j not in reserved]
        got = reserved_last(order_slots(scores[row:row + 1], k, tiers=out[row:row + 1]), out[row:row + 1])[0]
        assert got.tolist() == others[:k - len(reserved)] + reserved
    # fewer candidates than k: the reserved ones still close the shown part, the padding stays behind
    few = np.array([[0.5, -np.inf, 0.9, 0.1]], dtype=np.float32)
    few_tiers = np.array([[0, 3, RESERVED_TIER, 0]], dtype=np.int8)
    assert reserved_last(order_slots(few, 4, tiers=few_tiers), few_tiers)[0].tolist() == [0, 3, 2, -1]
    # sampled: each shown position's propensity is its Plackett-Luce draw within its own tier
    row = int(np.flatnonzero((out == RESERVED_TIER).sum(axis=1) == 2)[0])
    slots = reserved_last(order_slots(scores[row:row + 1], k, 1.0, np.random.default_rng(0), out[row:row + 1]),
                          out[row:row + 1])
    p = plackett_luce(scores[row:row + 1], slots, 1.0, out[row:row + 1])[0]
    last_two = slots[0, -2:]
    assert set(last_two) == set(np.flatnonzero(out[row] == RESERVED_TIER))
    first_of_pair = np.exp(scores[row, last_two[0]]) / np.exp(scores[row, last_two]).sum()
    assert p[-2] == pytest.approx(first_of_pair, rel=1e-5) and p[-1] == pytest.approx(1.0)
    first_pool = [j for j in range(9) if out[row, j] == out[row, slots[0, 0]]]
    assert p[0] == pytest.approx(np.exp(scores[row, slots[0, 0]]) / np.exp(scores[row, first_pool]).sum(), rel=1e-5)
