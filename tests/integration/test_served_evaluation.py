"""`funnel evaluate` scores the served graph: its `served` figure equals what a real Triton server
answers over gRPC for the same test users, scored here independently of the project's metrics."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from funnel.serving import TritonServer

K = 10


@pytest.fixture(scope="module")
def ml_run(ml_pre_dir, tmp_path_factory) -> tuple:
    """A small MovieLens-100k run (both models), evaluated by `funnel evaluate --json`."""
    from funnel.cli import main

    run = tmp_path_factory.mktemp("ml-run") / "run"
    assert main(["train", "retrieval", str(ml_pre_dir), "--out", str(run), "--epochs", "3", "--embedding-dim", "32",
                 "--tower-dims", "64", "--batch-size", "512"]) == 0
    assert main(["train", "ranking", str(ml_pre_dir), "--run", str(run), "--epochs", "1", "--embedding-dim", "8",
                 "--top-dims", "16", "--candidates", "50"]) == 0
    report_path = run.parent / "evaluation.json"
    assert main(["evaluate", str(run), "--k", str(K), "--json", str(report_path), "--new-item-slots", "2"]) == 0
    return run, json.loads(report_path.read_text())


def recall(lists: dict[str, list[str]], truth: dict[str, set[str]], k: int) -> float:
    """Mean over test users of |top-k & bought| / |bought| (written out here, not funnel.core.metrics)."""
    total = 0.0
    for user, bought in truth.items():
        total += len(set(lists.get(user, [])[:k]) & bought) / len(bought)
    return total / len(truth)


def test_served_is_the_headline_and_beats_popularity(ml_run):
    _, report = ml_run
    methods = report["methods"]
    assert list(methods)[0] == "served" and f"recall@{K}" in methods["served"]
    assert methods["served"][f"recall@{K}"] > 1.2 * methods["popularity"][f"recall@{K}"]
    assert "no stock history" in report["served"]["inventory"]  # MovieLens has none: nothing filtered


def test_new_item_slots_change_nothing_where_no_item_is_new(ml_run):
    """`--new-item-slots 2` evaluates the served graph exported with the rule beside the default: without a
    stock history no item is new, so both answer alike."""
    _, report = ml_run
    assert report["served"]["new_items"] == 0
    assert report["methods"]["served, 2 new-item slots"] == report["methods"]["served"]


def test_served_recall_equals_grpc_lists_scored_outside_the_project(ml_run, ml_pre_dir, tmp_path, cli):
    run, report = ml_run
    code, _, err = cli("export", run, "--out", tmp_path / "repo", "--inventory", "cutoff")
    assert code == 0, err
    test = pd.read_parquet(ml_pre_dir / "splits" / "test.parquet")
    truth = {str(u): set(map(str, items)) for u, items in test.groupby("user_id")["item_id"]}
    (tmp_path / "users.txt").write_text("\n".join(truth) + "\n")
    with TritonServer(tmp_path / "repo", grpc_port=0, log_path=tmp_path / "triton.log") as server:
        code, out, err = cli("recommend", "--url", server.url, "--users-file", tmp_path / "users.txt",
                             "--k", K, "--json", "--batch-size", "256")
    assert code == 0, err
    lists = {row["user_id"]: row["items"] for row in map(json.loads, out.splitlines())}
    assert len(lists) == len(truth)
    grpc_recall = recall(lists, truth, K)
    assert grpc_recall == pytest.approx(report["methods"]["served"][f"recall@{K}"], abs=0.005)


def served_with_ranker(ml_run, ml_pre_dir, tmp_path, shortlist: int):
    """The small run exported with its DLRM forced on (the ranker's logit alone orders its shortlist of
    ``shortlist`` candidates, `funnel export --ranker-shortlist`; 0: all), one user's served candidates
    from the two-tower and the item-item source, and the same (user, item) rows assembled and scored
    the way the ranker was trained."""
    import shutil

    import numpy as np
    from merlin.io import Dataset
    from merlin.schema import Tags

    from ensemble.build import ExportConfig, export
    from ensemble.runtime import Recommender
    from models.ranking import score_pairs
    from models.ranking_rows import assemble, ranking_schema
    from models.tf_helpers import encode_rows, load_tower
    from workflows import TARGET

    run, _ = ml_run
    forced = tmp_path / "run"
    shutil.copytree(run, forced)
    ranking = json.loads((forced / "ranking.json").read_text())
    ranking["use_ranker"] = True  # as if the gate had switched it on, with the whole blend's weight
    ranking["blend"]["with_ranker"] = {"weights": {"ranker_score": 1.0}}
    (forced / "ranking.json").write_text(json.dumps(ranking))
    # no new-item source: the ranked candidates are then the two-tower's and the item-item's alone
    export(ExportConfig(run=str(forced), out=str(tmp_path / "repo"), new_items=0, ranker_shortlist=shortlist))
    recommender = Recommender(tmp_path / "repo" / "funnel" / "1" / "ensemble")

    pre = ml_pre_dir
    train = pd.read_parquet(pre / "splits" / "train.parquet")
    users = pd.read_parquet(pre / "catalogue" / "users.parquet")
    items = pd.read_parquet(pre / "catalogue" / "items.parquet")
    cutoff = pd.Timestamp(json.loads((pre / "preprocess.json").read_text())["split"]["cutoff"])
    user = train["user_id"].iloc[0]
    served = recommender.recommend([str(user)], k=10, with_candidates=True)
    keep = np.isin(served["candidate_sources"][0], [b"retrieval", b"item-item"])
    ids = [int(v) for v in served["candidate_ids"][0][keep]]
    assert len(ids) > max(10, shortlist)

    schema = Dataset(str(pre / "retrieval" / "train"), engine="parquet", cpu=True).schema.select_by_tag(Tags.USER)
    q = encode_rows(load_tower(run / "query_tower"), users[users["user_id_raw"] == user], schema)
    emb = pd.read_parquet(run / "item_embeddings.parquet").set_index("item_id").loc[ids].to_numpy(np.float32)
    weights = item_item_weights(forced, len(items))
    mine, w = users_item_rows(forced, train, user, pd.Index(items["item_id_raw"]))
    rows_of_ids = pd.Index(items["item_id_raw"]).get_indexer(ids)
    pairs = pd.DataFrame({"user_id": user, "item_id": ids, "retrieval_score": (emb @ q[0]).astype(np.float32),
                          "item_item_score": (w @ weights[mine])[rows_of_ids].astype(np.float32)})
    pairs = pairs.assign(retrieval_z=z(pairs["retrieval_score"]), item_item_z=z(pairs["item_item_score"]),
                         # freshness: 1 for a movie nobody rated in training (MovieLens has no stock history)
                         new_item=(~np.isin(ids, train["item_id"].unique())).astype(np.float32))
    shares = ranking["data"]["affinity_columns"]
    assert "genres" in shares  # the multi-hot genres get a user-affinity feature
    rows = assemble(pairs, users, items, train, cutoff, shares).assign(**{TARGET: 0})
    p = score_pairs(load_tower(run / "ranker"), rows, ranking_schema(pre)).astype(np.float64)
    return served, keep, pairs.assign(logit=np.log(p / (1 - p))), ranking["blend"]["weights"]


def z(s: pd.Series) -> pd.Series:
    """Standardised over the given candidates (population standard deviation)."""
    return (s - s.mean()) / s.std(ddof=0)


def test_served_ranker_with_list_features_scores_like_training(ml_run, ml_pre_dir, tmp_path):
    """A DLRM that reads a list feature (genres) is served (values + offsets), and the served graph's
    ranker scores equal the training-side scoring of the same (user, item) rows: features, pair
    features and retrieval scores assembled the way the ranker was trained; the served order is
    the ranker's logit standardised over the user's candidates (a blend of the ranker alone)."""
    import numpy as np

    served, keep, pairs, _ = served_with_ranker(ml_run, ml_pre_dir, tmp_path, shortlist=0)
    expected = z(pairs["logit"])  # the blend of one score: the ranker's logit, standardised
    np.testing.assert_allclose(served["candidate_scores"][0][keep], expected, rtol=1e-3, atol=1e-3)


def test_served_cascade_ranks_the_blends_shortlist_only(ml_run, ml_pre_dir, tmp_path):
    """With a shortlist of 8 the served graph is a cascade: the sources' blend (w_tt z(two-tower) +
    w_ii z(item-item), over every candidate) picks the user's 8 best, those are ranked (tier 0) by
    the ranker's logit standardised over the 8 alone, and the other candidates follow (tier 1) in
    the blend's order with the blend as their score; written out here with pandas."""
    import numpy as np

    served, keep, pairs, first = served_with_ranker(ml_run, ml_pre_dir, tmp_path, shortlist=8)
    assert not first.get("pair_purchases") and not first.get("pair_days_since")  # MovieLens: nothing repurchased
    blend = first.get("retrieval_score", 0) * pairs["retrieval_z"] + first.get("item_item_score", 0) * pairs["item_item_z"]
    short = blend.rank(method="first", ascending=False) <= 8  # no ties among float scores here
    tiers, scores = served["candidate_tiers"][0][keep], served["candidate_scores"][0][keep]
    assert tiers.tolist() == np.where(short, 0, 1).tolist()
    np.testing.assert_allclose(scores[short.to_numpy()], z(pairs["logit"][short]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scores[~short.to_numpy()], blend[~short], rtol=1e-3, atol=1e-3)
    shown = [int(v) for v in served["item_ids"][0] if v]
    expected = pairs.assign(score=np.where(short, z(pairs["logit"][short]).reindex(pairs.index), 0.0), short=short)
    expected = expected.sort_values(["short", "score"], ascending=False)
    assert shown[:8] == expected["item_id"].head(8).tolist()


def item_item_weights(run, n_items: int):
    """The run's item-item weights as a dense array, read with numpy alone."""
    import numpy as np

    with np.load(run / "item_item.npz") as f:
        dense = np.zeros((n_items, n_items))
        for row in range(n_items):
            span = slice(f["indptr"][row], f["indptr"][row + 1])
            dense[row, f["indices"][span]] = f["data"][span]
    return dense


def users_item_rows(run, train: pd.DataFrame, user, index: pd.Index):
    """The user's distinct training items (rows of ``index``) and their weights in the item-item
    score: 1 each, or with the run's tuned recency ``r`` the n-th latest (ties in the order of the
    training rows) weighs exp(-n / r); written out here with pandas."""
    import numpy as np

    with np.load(run / "item_item.npz") as f:
        r = float(f["recency"]) if "recency" in f.files else 0.0
    mine = train[train["user_id"] == user].sort_values("timestamp", ascending=False, kind="stable")
    rows = index.get_indexer(mine.drop_duplicates("item_id")["item_id"])
    weights = np.exp(-np.arange(len(rows)) / r) if r > 0 else np.ones(len(rows))
    return rows, weights


def test_served_item_item_source_and_blend_order(ml_run, ml_pre_dir, tmp_path):
    """The served graph's item-item candidates are the best unseen items by the sum of the EASE weight
    rows of the user's training items, and without a ranker its candidates come out in the order of
    the tuned blend: per user, w_tt z(two-tower) + w_ii z(item-item) (+ w_new z(new item)), written out
    here with pandas."""
    import numpy as np

    from merlin.io import Dataset
    from merlin.schema import Tags

    from ensemble.build import ExportConfig, export
    from ensemble.runtime import Recommender
    from models.tf_helpers import encode_rows, load_tower

    import shutil

    trained, _ = ml_run
    users = pd.read_parquet(ml_pre_dir / "catalogue" / "users.parquet")
    schema = Dataset(str(ml_pre_dir / "retrieval" / "train"), engine="parquet", cpu=True).schema.select_by_tag(Tags.USER)
    # the order without a ranker, whatever this small run's gate decided (its ~40 gate users can go either way)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ranking = json.loads((run / "ranking.json").read_text())
    assert ranking["item_item"]["fitted"]
    ranking["use_ranker"] = False
    (run / "ranking.json").write_text(json.dumps(ranking))
    weights = ranking["blend"]["weights"]
    assert not weights["pair_purchases"] and not weights["pair_days_since"]  # MovieLens: nothing repurchased
    # no new-item source: the ranked candidates are then the two-tower's and the item-item's alone
    export(ExportConfig(run=str(run), out=str(tmp_path / "repo"), new_items=0))
    recommender = Recommender(tmp_path / "repo" / "funnel" / "1" / "ensemble")
    train = pd.read_parquet(ml_pre_dir / "splits" / "train.parquet")
    items = pd.read_parquet(ml_pre_dir / "catalogue" / "items.parquet")
    index = pd.Index(items["item_id_raw"])
    ease = item_item_weights(run, len(items))
    emb = pd.read_parquet(run / "item_embeddings.parquet").set_index("item_id").loc[items["item_id_raw"]]
    for user in train["user_id"].drop_duplicates().iloc[:3]:
        mine, w = users_item_rows(run, train, user, index)
        scores = w @ ease[mine]
        scores[mine] = 0.0  # MovieLens: seen items are never recommended
        best = [i for i in np.argsort(-scores, kind="stable")[:100] if scores[i] > 0]
        served = recommender.recommend([str(user)], k=100, with_candidates=True)
        sources, cands = served["candidate_sources"][0], served["candidate_ids"][0]
        from_item_item = {int(c) for c, s in zip(cands, sources) if s == b"item-item"}
        assert from_item_item and from_item_item <= set(index[best])
        retrieved = {int(c) for c, s in zip(cands, sources) if s == b"retrieval"}
        assert set(index[best]) <= from_item_item | retrieved  # a duplicate keeps its first source

        ranked = [int(c) for c, s in zip(cands, sources) if s in (b"retrieval", b"item-item")]
        rows = index.get_indexer(ranked)
        q = encode_rows(load_tower(run / "query_tower"), users[users["user_id_raw"] == user], schema)
        frame = pd.DataFrame({"item": ranked, "ii": scores[rows], "tt": emb.to_numpy(np.float32)[rows] @ q[0],
                              "new": (~np.isin(ranked, train["item_id"].unique())).astype(float)})  # nobody rated it
        z = lambda col: (frame[col] - frame[col].mean()) / frame[col].std(ddof=0) if frame[col].std() > 0 else 0.0
        frame["blend"] = (weights["retrieval_score"] * z("tt") + weights["item_item_score"] * z("ii")
                          + weights.get("new_item", 0.0) * z("new"))
        want = frame.sort_values("blend", ascending=False, kind="stable")["item"].head(10).tolist()
        got = [int(v) for v in served["item_ids"][0][:10]]
        assert got == want, (user, got, want)
