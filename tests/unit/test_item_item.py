"""The item-item candidate source (workflows/item_item.py) against independent computations."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workflows.candidates import blend, standardise
from workflows import item_item
from workflows.item_item import ItemItem, ease_weights, prune_rows, sparse_top, user_matrix
from workflows.purchases import PurchaseHistory

T0 = pd.Timestamp("2024-01-01")


def history_of(pairs: list[tuple[str, str]], users: list[str], items: list[str]) -> PurchaseHistory:
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id"]).assign(
        timestamp=[T0 + pd.Timedelta(hours=h) for h in range(len(pairs))])
    return PurchaseHistory.build(frame, pd.Index(users), pd.Index(items), T0 + pd.Timedelta(days=30))


def random_history(seed: int, users: int = 70, items: int = 9, p: float = 0.3):
    rng = np.random.default_rng(seed)
    dense = rng.random((users, items)) < p
    u, i = np.nonzero(dense)
    names_u, names_i = [f"u{k}" for k in range(users)], [f"i{k}" for k in range(items)]
    pairs = [(names_u[a], names_i[b]) for a, b in zip(u, i)]
    pairs += pairs[:10]  # repeated purchases count once
    return history_of(pairs, names_u, names_i), dense.astype(np.float64)


@pytest.mark.parametrize("block", [1024, 3])  # 3: the in-place symmetrising and pruning cross block edges
def test_ease_weights_solve_the_ridge_regression_of_each_item_on_the_others(monkeypatch, block):
    monkeypatch.setattr(item_item, "BLOCK_ROWS", block)
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((60, 8)) < 0.3).astype(np.float32))
    lam = 3.0
    b = ease_weights(x, lam)
    dense = x.toarray().astype(np.float64)
    for j in range(8):
        others = [i for i in range(8) if i != j]
        a = dense[:, others]
        coef = np.linalg.solve(a.T @ a + lam * np.eye(7), a.T @ dense[:, j])
        assert np.allclose(b[others, j], coef, atol=1e-8)
        assert b[j, j] == 0.0


def test_user_matrix_is_the_binary_crosstab_of_the_history_plus_new_purchases():
    history, dense = random_history(1)
    rows = np.array([3, -1, 0, 69, 3])
    extra = np.full((5, 2), -1)
    extra[1, 0], extra[2, :] = 4, [5, 5]
    got = user_matrix(history, rows, extra).toarray()
    want = np.zeros((5, 9))
    for r, u in enumerate(rows):
        if u >= 0:
            want[r] = dense[u]
    want[1, 4] = want[2, 5] = 1.0  # an unknown user with a purchase since; a duplicate counts once
    assert np.array_equal(got, want)
    # without purchases since: built straight from the history's slices, in canonical CSR form
    alone = user_matrix(history, rows)
    want[1, 4] = 0.0
    want[2] = dense[0]
    assert np.array_equal(alone.toarray(), want)
    assert alone.has_sorted_indices and alone.has_canonical_format and alone.dtype == np.float32


def test_recency_weighs_each_users_nth_latest_distinct_item_by_exp_minus_n_over_r():
    """Against pandas: rank each user's distinct items by their last purchase (newest 0; the
    purchases since the history, newest first, before all of them), weight exp(-rank / r)."""
    rng = np.random.default_rng(3)
    users, items = [f"u{k}" for k in range(6)], [f"i{k}" for k in range(8)]
    frame = pd.DataFrame({"user_id": rng.choice(users, 60), "item_id": rng.choice(items, 60),
                          "timestamp": [T0 + pd.Timedelta(hours=h) for h in rng.permutation(60)]})
    history = PurchaseHistory.build(frame, pd.Index(users), pd.Index(items), T0 + pd.Timedelta(days=30))
    rows = np.array([2, -1, 0, 5])
    extra = np.full((4, 3), -1)
    extra[0] = [7, -1, 1]  # two purchases since, item 1 bought before too
    extra[1, 0] = 3  # an unknown user's purchase since
    r = 4.0
    got = user_matrix(history, rows, extra, recency=r).toarray()
    want = np.zeros((4, 8))
    for k, u in enumerate(rows):
        since = [i for i in extra[k] if i >= 0]
        before = (frame[frame["user_id"] == users[u]].groupby("item_id")["timestamp"].max()
                  .sort_values(ascending=False).index.map(items.index).tolist()) if u >= 0 else []
        ranked = list(dict.fromkeys(since + before))  # a repeat keeps its newest rank
        for n, i in enumerate(ranked):
            want[k, i] = np.exp(-n / r)
    assert np.allclose(got, want, atol=1e-6)
    assert np.array_equal(user_matrix(history, rows, extra).toarray(), (want > 0).astype(float))  # 0: binary
    alone = user_matrix(history, rows, recency=r).toarray()
    assert np.allclose(alone[2], want[2]) and alone[1].sum() == 0


def test_recency_is_chosen_where_the_latest_item_tells_the_next():
    """Planted: pairs of items, each user's next purchase is the partner of their latest one, their
    older items are noise. Tuning on that label prefers a recency weighting over the binary history,
    and scoring with it recalls the partner more often."""
    from models.sources import tune_item_item

    rng = np.random.default_rng(0)
    n_items, rows_, truth = 40, [], {}
    for u in range(300):
        older = rng.choice(n_items, 6, replace=False)
        latest = int(rng.integers(n_items))
        seq = [(f"u{u}", f"i{i}") for i in older] + [(f"u{u}", f"i{latest}")]
        if u < 200:  # co-bought pairs (2k, 2k+1) to learn from
            seq.append((f"u{u}", f"i{latest ^ 1}"))
        else:  # the label: the partner of the latest
            truth[f"u{u}"] = {latest ^ 1}
        rows_ += seq
    users, items = [f"u{u}" for u in range(300)], [f"i{i}" for i in range(n_items)]
    history = history_of(rows_, users, items)
    truth = pd.Series(truth)
    source, facts = tune_item_item(history, pd.Index(users), truth, 3, [1.0], 40, 100, 3, True,
                                   recencies=[0.0, 1.0])
    tried = facts["label_recall@3_by_lambda/recency/sequence"]
    assert facts["recency"] == 1.0 and tried["1/1/0"] > tried["1/0/0"]
    assert source.model.recency == 1.0


def bought_next(sequences: dict[str, list[str]], items: list[str], kept: list[str], window: int, decay: float) -> np.ndarray:
    """The "bought next" weights written out with loops over each user's purchases in time order:
    b bought d <= window places after a adds decay ** (d - 1) to t[a, b] (items outside ``kept`` hold
    their places), then t[a, b] / sqrt((buyers of a + 1) (buyers of b + 1)), over ``kept``."""
    t = np.zeros((len(kept), len(kept)))
    buyers = {i: sum(i in seq for seq in sequences.values()) for i in kept}
    for seq in sequences.values():
        for p, a in enumerate(seq):
            for d in range(1, window + 1):
                if p + d < len(seq) and a in kept and seq[p + d] in kept:
                    t[kept.index(a), kept.index(seq[p + d])] += decay ** (d - 1)
    for x, a in enumerate(kept):
        for y, b in enumerate(kept):
            t[x, y] /= np.sqrt((buyers[a] + 1) * (buyers[b] + 1))
    return t


def test_transitions_weigh_each_later_item_by_its_distance_and_damp_popular_items():
    rng = np.random.default_rng(8)
    items = [f"i{k}" for k in range(7)]
    sequences = {f"u{u}": [items[k] for k in rng.permutation(7)[: rng.integers(1, 7)]] for u in range(25)}
    pairs = [(u, i) for u, seq in sequences.items() for i in seq]  # history_of: one hour apart, in this order
    history = history_of(pairs, list(sequences), items)
    kept = [0, 2, 3, 5, 6]  # i1 and i4 keep their places but get no weight
    got = item_item.transitions(history, np.array(kept), window=3, decay=0.5).toarray()
    want = bought_next(sequences, items, [items[k] for k in kept], window=3, decay=0.5)
    assert np.allclose(got, want) and not np.allclose(got, got.T)  # order matters


def test_sequence_weight_adds_the_scaled_transitions_to_the_ease_weights_before_pruning():
    history, dense = random_history(9)
    sequences = {}
    for u in range(len(dense)):
        entries = history.items[history.of(u)][::-1]  # oldest first
        sequences[f"u{u}"] = [f"i{k}" for k in entries]
    items = [f"i{k}" for k in range(9)]
    models = list(ItemItem.fit_each(history, [5.0], neighbours=9, sequences=[0.0, 0.5]))
    assert [(m.lam, m.sequence) for m in models] == [(5.0, 0.0), (5.0, 0.5)]
    b = ease_weights(sp.csr_matrix(dense), 5.0)
    t = bought_next(sequences, items, items, item_item.SEQUENCE_WINDOW, item_item.SEQUENCE_DECAY)
    want = b + 0.5 * np.abs(b).sum() / t.sum() * t
    assert np.allclose(models[0].weights.toarray(), np.where(b > 0, b, 0.0), atol=1e-5)
    assert np.allclose(models[1].weights.toarray(), np.where(want > 0, want, 0.0), atol=1e-5)
    single = ItemItem.fit(history, lam=5.0, neighbours=9, sequence=0.5)
    assert single.sequence == 0.5 and np.allclose(single.weights.toarray(), models[1].weights.toarray())


def test_bought_next_is_chosen_where_order_tells_the_next():
    """Planted: items on a chain, people watch a run of it in order. The label users' latest item is
    on the chain (their older ones are noise); the next item is the label. EASE sees the chain's
    neighbours on both sides alike; the "bought next" term points forward, so tuning picks it and
    it recalls the next item more often."""
    from models.sources import tune_item_item

    rng = np.random.default_rng(1)
    n_items, rows_, truth = 40, [], {}
    for u in range(400):
        start = int(rng.integers(n_items - 5))
        if u < 300:
            rows_ += [(f"u{u}", f"i{start + d}") for d in range(4)]
        else:
            rows_ += [(f"u{u}", f"i{i}") for i in rng.choice(n_items, 4, replace=False) if i not in (start, start + 1)]
            rows_.append((f"u{u}", f"i{start}"))
            truth[f"u{u}"] = {start + 1}
    users, items = [f"u{u}" for u in range(400)], [f"i{i}" for i in range(n_items)]
    history = history_of(rows_, users, items)
    source, facts = tune_item_item(history, pd.Index(users), pd.Series(truth), 1, [1.0], 40, 100, 1, True,
                                   recencies=[1.0], sequences=[0.0, 1.0])
    tried = facts["label_recall@1_by_lambda/recency/sequence"]
    assert facts["sequence"] == 1.0 and source.model.sequence == 1.0
    assert tried["1/1/1"] > tried["1/1/0"] + 0.2, tried


def test_fit_scores_are_the_users_items_times_the_ease_weights():
    history, dense = random_history(2)
    model = ItemItem.fit(history, lam=5.0, neighbours=9)
    b = ease_weights(sp.csr_matrix(dense), 5.0)
    kept = np.where(b > 0, b, 0.0)  # pruning keeps positive weights only
    rows = np.array([0, 5, -1, 12])
    want = np.vstack([dense[r] @ kept if r >= 0 else np.zeros(9) for r in rows])
    assert np.allclose(model.scores(history, rows), want, atol=1e-5)


def test_fitting_several_lambdas_at_once_gives_each_lambdas_own_weights():
    """One Gram matrix for every lambda: each model equals EASE at its lambda from the dense
    matrix (the numpy inverse, as in the ridge test), positive weights kept."""
    history, dense = random_history(4)
    lams = [1.0, 5.0, 40.0]
    models = list(ItemItem.fit_each(history, lams, neighbours=9))
    assert [m.lam for m in models] == lams
    for lam, model in zip(lams, models):
        gram = dense.T @ dense + lam * np.eye(dense.shape[1])
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        assert np.allclose(model.weights.toarray(), np.where(b > 0, b, 0.0), atol=1e-5)
    assert not np.allclose(models[0].weights.toarray(), models[2].weights.toarray())


def test_pruning_keeps_each_items_strongest_neighbours():
    history, dense = random_history(3, items=12, p=0.4)
    b = ease_weights(sp.csr_matrix(dense), 2.0)
    w = ItemItem.fit(history, lam=2.0, neighbours=3).weights.toarray()
    for j in range(12):
        kept = np.flatnonzero(w[j])
        strongest = [i for i in np.argsort(-b[j])[:3] if b[j, i] > 0]
        assert set(kept) == set(strongest)
        assert np.allclose(w[j, kept], b[j, kept], atol=1e-6)


def test_only_the_most_bought_items_get_weights():
    pairs = [(f"u{u}", "pop") for u in range(30)] + [(f"u{u}", "mid") for u in range(20)]
    pairs += [(f"u{u}", "low") for u in range(5)] + [(f"u{u}", "never") for u in range(0)]
    history = history_of(pairs, [f"u{u}" for u in range(30)], ["low", "mid", "never", "pop"])
    w = ItemItem.fit(history, lam=1.0, max_items=2).weights.toarray()
    assert not w[[0, 2]].any() and not w[:, [0, 2]].any()  # 'low' and 'never' are outside the top 2
    assert w[1, 3] > 0 and w[3, 1] > 0


def test_top_orders_positive_scores_excludes_own_items_and_pads():
    history = history_of([("a", "x"), ("a", "y"), ("b", "x")], ["a", "b", "c"], ["x", "y", "z", "w"])
    weights = sp.csr_matrix(np.array([[0, 2.0, 1.0, 0], [0.5, 0, 3.0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32))
    model = ItemItem(weights, 1.0)
    rows = np.array([0, 1, 2, -1])
    scores = model.scores(history, rows)
    assert np.allclose(scores[0], [0.5, 2.0, 4.0, 0]) and np.allclose(scores[1], [0, 2.0, 1.0, 0])
    assert not scores[2:].any()
    top = model.top(history, rows, 3)
    assert top.tolist() == [[2, 1, 0], [1, 2, -1], [-1, -1, -1], [-1, -1, -1]]
    assert model.top(history, rows, 3, exclude_seen=True).tolist()[:2] == [[2, -1, -1], [1, 2, -1]]
    extra = np.array([[-1], [1], [-1], [0]])  # b and the unknown user bought more since
    assert model.top(history, rows, 2, extra, exclude_seen=True).tolist() == [[2, -1], [2, -1], [-1, -1], [1, 2]]
    items = np.array([[2, -1], [0, 1], [1, 1], [2, 0]])
    assert np.allclose(model.pair_scores(history, rows, items), [[4.0, 0], [0, 2.0], [0, 0], [0, 0]])


def test_scoring_in_chunks_equals_scoring_at_once(monkeypatch):
    import workflows.item_item as mod

    history, _ = random_history(4, users=50)
    model = ItemItem.fit(history, lam=3.0)
    rows = np.arange(50)
    whole, pairs = model.top(history, rows, 4), model.pair_scores(history, rows, np.tile(np.arange(9), (50, 1)))
    monkeypatch.setattr(mod, "CHUNK_CELLS", 20)  # two users at a time
    assert np.array_equal(model.top(history, rows, 4), whole)
    assert np.allclose(model.pair_scores(history, rows, np.tile(np.arange(9), (50, 1))), pairs)


def test_sparse_top_matches_a_full_sort():
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=(20, 30)), 1)  # rounding makes ties: broken by item row
    scores[rng.random(scores.shape) < 0.3] = 0.0
    got = sparse_top(sp.csr_matrix(np.where(scores > 0, scores, 0.0)), 7)
    for row, s in zip(got, scores):
        want = [i for i in sorted(range(30), key=lambda i: (-s[i], i))[:7] if s[i] > 0]
        assert row[: len(want)].tolist() == want and (row[len(want):] == -1).all()


def test_blend_standardises_each_users_scores_like_pandas():
    """workflows.candidates.blend: the order without a ranker."""
    rng = np.random.default_rng(6)
    users = rng.integers(0, 5, 60)
    users[users == 4] = 3  # some users with more candidates
    a, b = rng.normal(3, 2, 60), rng.exponential(1, 60)
    b[users == 0] = 0.7  # a constant score says nothing
    frame = pd.DataFrame({"u": users, "a": a, "b": b})
    z = lambda col: frame.groupby("u")[col].transform(lambda s: (s - s.mean()) / s.std(ddof=0) if s.std(ddof=0) > 1e-12 else 0 * s)
    assert np.allclose(standardise(b, users), z("b"))
    frame["n"], frame["d"] = rng.poisson(1, 60).astype(float), rng.exponential(5, 60)
    scores = {"retrieval_score": a, "item_item_score": b, "pair_purchases": frame["n"], "pair_days_since": frame["d"]}
    got = blend(scores, users, {"retrieval_score": 0.5, "item_item_score": 0.2, "pair_purchases": 0.2,
                                "pair_days_since": 0.1})
    assert np.allclose(got, 0.5 * z("a") + 0.2 * z("b") + 0.2 * z("n") - 0.1 * z("d"), atol=1e-5)  # recent is better
    assert np.allclose(blend(scores, users, {"retrieval_score": 1.0}), z("a"), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    history, _ = random_history(7)
    model = ItemItem.fit(history, lam=4.0, neighbours=3)
    model.save(tmp_path / "ii.npz")
    back = ItemItem.load(tmp_path / "ii.npz")
    assert back.lam == 4.0 and back.recency == 0.0 and (back.weights != model.weights).nnz == 0
    ItemItem.fit(history, lam=4.0, neighbours=3, recency=7.5).save(tmp_path / "ii.npz")
    assert ItemItem.load(tmp_path / "ii.npz").recency == 7.5
    ItemItem.fit(history, lam=4.0, neighbours=3, sequence=0.3).save(tmp_path / "ii.npz")
    assert ItemItem.load(tmp_path / "ii.npz").sequence == 0.3
    empty = ItemItem.empty(9)
    assert not empty.top(history, np.arange(3), 2).__ge__(0).any() and not empty.scores(history, np.arange(3)).any()


def test_order_recall_equals_sorting_each_users_candidates():
    from models.sources import order_recall

    rng = np.random.default_rng(8)
    cands = pd.DataFrame({"user_id": rng.choice(["a", "b", "c", "d"], 80), "item_id": rng.integers(0, 30, 80)})
    cands = cands.drop_duplicates().reset_index(drop=True)
    order = rng.integers(0, 5, len(cands)).astype(float)  # many ties: candidate order breaks them
    truth = pd.Series({"a": {1, 2, 3}, "b": {4}, "c": {5, 6, 99}, "e": {7}})  # e has no candidates
    for k in (1, 3, 10):
        recalls = []
        for user, bought in truth.items():
            mine = cands.assign(o=order)[cands["user_id"] == user].sort_values("o", ascending=False, kind="stable")
            recalls.append(len(set(mine["item_id"].head(k)) & bought) / len(bought))
        assert order_recall(order, cands, truth, k) == pytest.approx(np.mean(recalls))


def test_blend_with_the_ranker_adds_its_standardised_logit():
    from workflows.candidates import logit

    rng = np.random.default_rng(9)
    users = rng.integers(0, 4, 40)
    a, p = rng.normal(size=40), rng.uniform(0.01, 0.99, 40)
    frame = pd.DataFrame({"u": users, "a": a, "l": np.log(p / (1 - p))})
    z = lambda col: frame.groupby("u")[col].transform(lambda s: (s - s.mean()) / s.std(ddof=0))
    got = blend({"retrieval_score": a, "ranker_score": logit(p)}, users, {"retrieval_score": 0.7, "ranker_score": 0.3})
    assert np.allclose(got, 0.7 * z("a") + 0.3 * z("l"), atol=1e-4)


def test_z_scores_of_other_rows_use_the_users_candidate_moments():
    """models.ranking_rows.with_z_scores: a training row (a random negative too) is placed among its
    user's candidates by their mean and spread, as serving standardises the candidates it ranks."""
    from models.ranking_rows import with_z_scores

    rng = np.random.default_rng(10)
    cands = pd.DataFrame({"user_id": rng.choice(["a", "b", "c"], 30), "retrieval_score": rng.normal(2, 3, 30),
                          "item_item_score": rng.exponential(1, 30)})
    cands.loc[cands["user_id"] == "c", "item_item_score"] = 0.0  # constant: z 0
    rows = pd.DataFrame({"user_id": ["a", "b", "c", "zz"], "retrieval_score": [0.0, 5.0, 1.0, 3.0],
                         "item_item_score": [1.0, 0.0, 2.0, 1.0]})
    got = with_z_scores(rows, cands)
    stats = cands.groupby("user_id").agg(["mean", lambda s: s.std(ddof=0)])
    for i, row in rows.iterrows():
        for score, name in (("retrieval_score", "retrieval_z"), ("item_item_score", "item_item_z")):
            if row["user_id"] not in stats.index or stats.loc[row["user_id"], (score, "<lambda_0>")] < 1e-12:
                assert got.loc[i, name] == 0.0  # unknown user (no candidates) or a constant score
            else:
                mean, std = stats.loc[row["user_id"], (score, "mean")], stats.loc[row["user_id"], (score, "<lambda_0>")]
                assert got.loc[i, name] == pytest.approx((row[score] - mean) / std, rel=1e-5)
    same = with_z_scores(cands, cands)  # a user's own candidates: the blend's standardise
    users = pd.factorize(cands["user_id"])[0]
    assert np.allclose(same["retrieval_z"], standardise(cands["retrieval_score"].to_numpy(), users), atol=1e-5)


def test_ranker_share_is_tuned_and_zero_unless_it_helps():
    from models.sources import tune_ranker_share

    rng = np.random.default_rng(11)
    users = np.repeat([f"u{i}" for i in range(60)], 20)
    items = np.tile(np.arange(20), 60)
    truth = pd.Series({f"u{i}": {int(rng.integers(0, 20))} for i in range(60)})
    bought = np.array([item in truth[u] for u, item in zip(users, items)])
    base = rng.normal(size=len(users)) + 0.5 * bought  # the sources: weakly informative
    cands = pd.DataFrame({"user_id": users, "item_id": items, "retrieval_score": base,
                          "ranker_score": rng.normal(size=len(users)) + 3.0 * bought})  # the ranker: strong
    weights, facts = tune_ranker_share(cands, truth, 3, {"retrieval_score": 1.0})
    assert weights["ranker_score"] > 0.5 and weights["retrieval_score"] == pytest.approx(1 - weights["ranker_score"])
    assert facts["tuning_users"] == 60 and len(facts["tuning_recall@3"]) == 11
    useless = cands.assign(ranker_score=-3.0 * bought)  # a ranker that is always wrong
    weights, _ = tune_ranker_share(useless, truth, 3, {"retrieval_score": 1.0})
    assert weights["ranker_score"] == 0.0 and weights["retrieval_score"] == 1.0


def test_serving_order_comes_from_the_gate():
    from ensemble.build import serving_blend

    blend_only, with_ranker = {"retrieval_score": 0.6, "item_item_score": 0.4}, {"retrieval_score": 0.3,
                                                                                  "ranker_score": 0.5}
    ranking = {"use_ranker": True, "blend": {"weights": blend_only, "with_ranker": {"weights": with_ranker}}}
    assert serving_blend(ranking) == with_ranker
    assert serving_blend({**ranking, "use_ranker": False}) == blend_only
    assert serving_blend({"use_ranker": True, "blend": {"weights": blend_only}}) == {"ranker_score": 1.0}  # older runs
    assert serving_blend(None) == {"retrieval_score": 1.0}  # no ranking stage: the two-tower order


def test_shortlist_keeps_each_users_n_best_ties_in_candidate_order():
    from workflows.candidates import shortlist

    rng = np.random.default_rng(12)
    users = rng.integers(0, 6, 90)
    order = rng.integers(0, 4, 90).astype(float)  # many ties: the earlier candidate wins
    for n in (1, 3, 10, 100):
        want = np.zeros(90, dtype=bool)
        for u in np.unique(users):
            mine = np.flatnonzero(users == u)
            best = sorted(mine, key=lambda i: (-order[i], i))[:n]
            want[best] = True
        assert shortlist(order, users, n).tolist() == want.tolist()
    assert shortlist(order, users, 0).all() and shortlist(np.zeros(0), np.zeros(0, int), 5).tolist() == []


def test_cascade_order_ranks_the_blends_shortlist_and_keeps_the_rest_below():
    """models.sources.blend_order with a shortlist, written out per user with pandas: the first blend
    picks n, the blend with the ranker (standardised over those n) orders them, the rest follow."""
    from models.sources import blend_order

    rng = np.random.default_rng(13)
    cands = pd.DataFrame({"user_id": rng.choice(["a", "b", "c"], 75), "item_id": np.arange(75),
                          "retrieval_score": rng.normal(size=75), "item_item_score": rng.exponential(1, 75),
                          "ranker_score": rng.normal(size=75)})
    first = {"retrieval_score": 0.7, "item_item_score": 0.3}
    mixed = {"retrieval_score": 0.35, "item_item_score": 0.15, "ranker_score": 0.5}
    z = lambda s: (s - s.mean()) / s.std(ddof=0)
    order = blend_order(cands, mixed, first, n=5)
    for _, mine in cands.groupby("user_id"):
        before = 0.7 * z(mine["retrieval_score"]) + 0.3 * z(mine["item_item_score"])
        short = mine[before.rank(ascending=False) <= 5]
        after = 0.35 * z(short["retrieval_score"]) + 0.15 * z(short["item_item_score"]) + 0.5 * z(short["ranker_score"])
        expected = list(after.sort_values(ascending=False).index) + list(before.drop(short.index).sort_values(ascending=False).index)
        got = pd.Series(order[mine.index], index=mine.index).sort_values(ascending=False).index
        assert list(got) == expected
    assert np.allclose(blend_order(cands, mixed, first, n=0), blend_order(cands, mixed))  # 0: every candidate ranked
    assert np.allclose(blend_order(cands, first, first, n=5), blend_order(cands, first))  # no ranker: no cascade


def test_serving_shortlist_only_where_the_ranker_is_used():
    from ensemble.build import serving_shortlist

    first = {"retrieval_score": 0.6, "item_item_score": 0.4}
    ranking = {"use_ranker": True, "config": {"shortlist": 30}, "blend": {"weights": first}}
    assert serving_shortlist(ranking) == (first, 30)
    assert serving_shortlist({**ranking, "use_ranker": False}) == ({}, 0)
    assert serving_shortlist({**ranking, "config": {}}) == ({}, 0)  # runs before the shortlist: all ranked
    assert serving_shortlist(ranking, override=80) == (first, 80) and serving_shortlist(ranking, 0) == ({}, 0)
    assert serving_shortlist(None) == ({}, 0)


@pytest.mark.parametrize("block", [1024, 4])
def test_prune_rows_keeps_each_rows_largest_positive_entries(monkeypatch, block):
    monkeypatch.setattr(item_item, "BLOCK_ROWS", block)
    dense = np.random.default_rng(3).normal(size=(11, 9))
    got = prune_rows(dense, 3).toarray()
    for r, row in enumerate(dense):
        top = np.argsort(-row)[:3]
        want = np.zeros(9)
        want[top] = np.where(row[top] > 0, row[top], 0.0)
        assert np.allclose(got[r], want.astype(np.float32))
