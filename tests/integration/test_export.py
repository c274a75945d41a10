"""`funnel export`: the built ensemble in-process (Recommender), its manifest and atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.build import ExportConfig, export
from ensemble.config import Inventory
from funnel.core.artifacts import read_export_manifest
from ensemble.runtime import Recommender, RequestError
from funnel.core.errors import FunnelError


@pytest.fixture(scope="module")
def exported(ranked_run, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("export") / "repo"
    export(ExportConfig(run=str(ranked_run), out=str(repo), candidates=60, trending=20, exclude_seen="all",
                        max_batch=64))
    return repo


@pytest.fixture(scope="module")
def recommender(exported) -> Recommender:
    return Recommender(exported / "funnel" / "1" / "ensemble")


@pytest.fixture(scope="module")
def known_users(pre_dir) -> list[str]:
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    return train["user_id"].astype(str).drop_duplicates().head(40).tolist()


def test_manifest_is_complete(exported, pre_dir):
    m = read_export_manifest(exported)
    pre = json.loads((pre_dir / "preprocess.json").read_text())
    assert m["data"]["content_checksum"] == pre["dataset"]["content_checksum"]
    assert m["index"]["kind"] == "flat" and m["index"]["recall@60_vs_exact"] == 1.0
    assert m["filters"]["exclude_seen"] == "all" and m["filters"]["out_of_stock"] is True
    assert m["models"]["ranker"] is not None and m["ensemble_checksum"].startswith("sha256:")
    retrieval = json.loads((Path(m["run"]) / "retrieval.json").read_text())
    assert m["models"]["query_tower"]["refit_epochs"] == retrieval["best_epoch"]  # the served towers were refit
    assert (exported / "funnel" / "config.pbtxt").exists() and (exported / "funnel" / "1" / "model.py").exists()


def test_recommendations_shape_sources_and_order(recommender, known_users):
    out = recommender.recommend(known_users[:5] + ["no-such-user"], k=7)
    assert out["item_ids"].shape == (6, 7) and out["scores"].dtype == np.float32
    for row in out["scores"]:
        live = row[~np.isnan(row)]
        assert np.all(np.diff(live) <= 0)  # best first
    assert set(out["sources"][-1]) == {b"trending"}  # cold start: trending, not an error
    assert all(len(set(r)) == len(r) for r in out["item_ids"].tolist())  # no duplicates


def test_filters_seen_and_out_of_stock_and_request_exclusions(recommender, known_users, exported, pre_dir):
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    seen = train.assign(u=train["user_id"].astype(str), i=train["item_id"].astype(str)).groupby("u")["i"].apply(set)
    stock = pd.read_parquet(exported / "funnel" / "1" / "ensemble" / "inventory.parquet")
    gone = set(stock.loc[~stock["in_stock"], "item_id"])
    assert gone  # the synthetic catalogue has stock-outs
    out = recommender.recommend(known_users + ["no-such-user"], k=12)
    for user, ids in zip(known_users + ["no-such-user"], out["item_ids"]):
        served = {i.decode() for i in ids if i}
        assert served and not served & gone and not served & seen.get(user, set())
    first = out["item_ids"][0][0].decode()
    again = recommender.recommend(known_users[:1], k=12, exclude_items=[first])
    assert first not in {i.decode() for i in again["item_ids"][0]}


def test_a_batch_answers_like_single_requests(recommender, known_users):
    batch = recommender.recommend(known_users[:20], k=10)
    for row, user in enumerate(known_users[:20]):
        single = recommender.recommend([user], k=10)
        assert single["item_ids"][0].tolist() == batch["item_ids"][row].tolist()
        np.testing.assert_allclose(single["scores"][0], batch["scores"][row], rtol=1e-5, atol=1e-6)


def test_sampling_follows_seed_and_temperature(recommender, known_users):
    users = known_users[:5]
    ranked = recommender.recommend(users, k=10)["item_ids"].tolist()
    a = recommender.recommend(users, k=10, temperature=5.0, seed=3)["item_ids"].tolist()
    assert recommender.recommend(users, k=10, temperature=5.0, seed=3)["item_ids"].tolist() == a  # same seed
    assert recommender.recommend(users, k=10, temperature=5.0, seed=4)["item_ids"].tolist() != a  # another seed
    assert a != ranked  # a high temperature reorders


@pytest.mark.parametrize("kwargs, message", [
    (dict(user_ids=["a"], k=0), "k must be between"),
    (dict(user_ids=["a"], k=101), "k must be between"),
    (dict(user_ids=["a"] * 65), "between 1 and 64 users"),
    (dict(user_ids=[]), "between 1 and 64 users"),
    (dict(user_ids=["a"], temperature=-1), "temperature"),
])
def test_malformed_requests_are_named(recommender, kwargs, message):
    with pytest.raises(RequestError, match=message):
        recommender.recommend(**kwargs)


def test_failed_export_leaves_the_previous_repository(exported, ranked_run):
    before = (exported / "funnel" / "1" / "ensemble" / "export.json").read_text()
    with pytest.raises(FunnelError, match="not an item attribute"):
        export(ExportConfig(run=str(ranked_run), out=str(exported), exclude_categories=["no_such_column=x"]))
    assert (exported / "funnel" / "1" / "ensemble" / "export.json").read_text() == before
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".repo.tmp")]


def test_tampered_graph_is_not_unpickled(exported, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(exported, copy)
    pkl = copy / "funnel" / "1" / "ensemble" / "ensemble.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    with pytest.raises(FunnelError, match="signature does not match"):
        Recommender(pkl.parent)
    # a replaced pickle that brings its own checksum is still refused: the HMAC needs the key
    import json

    from funnel.core.fsutil import sha256_files

    manifest_path = pkl.parent / "export.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["ensemble_checksum"] = sha256_files([pkl])
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FunnelError, match="signature does not match"):
        Recommender(pkl.parent)
    # signed with another key (an attacker's own) is refused too
    from funnel.core.signing import sign_files

    manifest["ensemble_signature"] = sign_files([pkl], key=b"not-the-servers-key-0123456789")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FunnelError, match="signature does not match"):
        Recommender(pkl.parent)


def test_tensorflow_runtime_splits_the_models_out_for_tritons_tf_backend(ranker_run, tmp_path):
    m = export(ExportConfig(run=str(ranker_run), out=str(tmp_path / "r"), tf_runtime="tensorflow"))
    assert m["tf_runtime"] == "tensorflow"
    for name in ("funnel_query_tower", "funnel_ranker"):
        config = (tmp_path / "r" / name / "config.pbtxt").read_text()
        assert 'platform: "tensorflow_savedmodel"' in config and "TYPE_INT32" in config
        assert (tmp_path / "r" / name / "1" / "model.savedmodel" / "saved_model.pb").exists()
    # outside Triton the same graph falls back to the SavedModels in-process
    local = Recommender(tmp_path / "r" / "funnel" / "1" / "ensemble").recommend(["x"], k=3)
    assert local["item_ids"].shape == (1, 3)


def test_export_config_errors(ranked_run, tmp_path):
    with pytest.raises(FunnelError, match="tf_runtime"):
        export(ExportConfig(run=str(ranked_run), out=str(tmp_path / "r"), tf_runtime="onnx"))
    with pytest.raises(FunnelError, match="COLUMN=VALUE"):
        export(ExportConfig(run=str(ranked_run), out=str(tmp_path / "r"), exclude_categories=["colour"]))
    with pytest.raises(FunnelError, match="not a training run"):
        export(ExportConfig(run=str(tmp_path), out=str(tmp_path / "r")))


def test_ranker_training_candidates_are_the_served_candidates(ranked_run, pre_dir, tmp_path, known_users):
    """The ranker is trained on the candidate lists the served graph builds: for the same users, history
    and towers, models.ranking_rows.candidates gives the served graph's list, source for source."""
    from merlin.io import Dataset
    from merlin.schema import Tags

    from funnel.core.artifacts import read_preprocess_manifest
    from models.ranking_rows import candidates
    from workflows.candidates import NewItems
    from models.sources import ItemItemSource
    from models.tf_helpers import encode_rows, load_tower
    from workflows.history import recent_items
    from workflows.item_item import ItemItem
    from workflows.purchases import PurchaseHistory

    repo = tmp_path / "repo"
    export(ExportConfig(run=str(ranked_run), out=str(repo), candidates=40, recent=20, trending=0,
                        out_of_stock=False, new_items=10, inventory=Inventory.CUTOFF))
    served = Recommender(repo / "funnel" / "1" / "ensemble").recommend(known_users[:20], k=5, with_candidates=True)

    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    users = pd.read_parquet(pre_dir / "catalogue" / "users.parquet")
    users["user_id_raw"] = users["user_id_raw"].astype(str)
    schema = Dataset(str(pre_dir / "retrieval" / "train"), engine="parquet", cpu=True).schema.select_by_tag(Tags.USER)
    q = encode_rows(load_tower(ranked_run / "query_tower"), users.set_index("user_id_raw").loc[known_users[:20]]
                    .reset_index(), schema)
    items = pd.read_parquet(pre_dir / "catalogue" / "items.parquet")["item_id_raw"]  # the item rows' order
    emb = pd.read_parquet(ranked_run / "item_embeddings.parquet").set_index("item_id").loc[items]
    item_ids = items.astype(str).to_numpy()
    as_text = train.assign(user_id=train["user_id"].astype(str), item_id=train["item_id"].astype(str))
    history = recent_items(as_text)
    ranking = json.loads((ranked_run / "ranking.json").read_text())
    user_index = pd.Index(users["user_id_raw"])
    source = ItemItemSource(ItemItem.load(ranked_run / "item_item.npz"),
                            PurchaseHistory.build(as_text, user_index, pd.Index(item_ids), as_text["timestamp"].max()),
                            user_index, ranking["config"]["item_item"])
    pre_manifest = read_preprocess_manifest(pre_dir)
    new = NewItems.as_of(pre_manifest["dataset"]["path"], train, pd.Timestamp(pre_manifest["split"]["cutoff"]),
                         items.to_numpy())
    trained = candidates(q, np.array(known_users[:20]), item_ids, emb.to_numpy(np.float32),
                         40, history.to_dict(), repurchase=True, recent=20, item_item=source, new=new, n_new=10)
    assert (trained["source"] == "item-item").any() and (trained["source"] == "new").any()
    for row, user in enumerate(known_users[:20]):
        mine = trained[trained["user_id"] == user]
        ids = [v.decode() for v in served["candidate_ids"][row] if v]
        sources = [v.decode() for v in served["candidate_sources"][row] if v]
        assert mine["item_id"].tolist() == ids, user
        assert mine["source"].tolist() == sources, user


def test_new_item_slots_give_the_last_places_to_the_best_new_candidates(ranked_run, tmp_path, known_users):
    """With new_item_slots=2 a known user's list of 12 is the default list without the two best new items
    among the user's candidates (never bought in training, on sale: the export's new_items.npz; best by the
    default export's own tiers and scores), cut to 10, then those two."""
    from workflows.candidates import NewItems

    common = dict(run=str(ranked_run), candidates=40, item_item=20, trending=10, inventory=Inventory.CUTOFF)
    export(ExportConfig(out=str(tmp_path / "default"), **common))
    export(ExportConfig(out=str(tmp_path / "slots"), new_item_slots=2, **common))
    ensemble = tmp_path / "default" / "funnel" / "1" / "ensemble"
    users = known_users[:30]
    base = Recommender(ensemble).recommend(users, k=100, with_candidates=True)
    slots = Recommender(tmp_path / "slots" / "funnel" / "1" / "ensemble").recommend(users, k=12)
    items = pd.read_parquet(ensemble / "items.parquet")["item_id_raw"].astype(str).to_numpy()
    new = NewItems.load(ensemble / "new_items.npz")
    new_ids = {items[i].encode() for i in new.rows}
    assert new_ids and read_export_manifest(tmp_path / "slots")["config"]["new_item_slots"] == 2
    with_new = 0
    for row in range(len(users)):
        cands, scores = base["candidate_ids"][row], base["candidate_scores"][row]
        tiers = base["candidate_tiers"][row]
        # ranked candidates of a known user (tiers 0-1, not trending fill): the new ones, best first
        ranked_new = sorted((tiers[j], -scores[j], j) for j in range(len(cands))
                            if cands[j] in new_ids and tiers[j] <= 1)
        first = sorted([j for _, _, j in ranked_new[:2]], key=lambda j: -scores[j])
        rest = [i for i in base["item_ids"][row] if i and i not in {cands[j] for j in first}]
        want = rest[:12 - len(first)] + [cands[j] for j in first]
        assert slots["item_ids"][row].tolist() == want, users[row]
        with_new += bool(first)
    assert with_new >= 10  # most of these users have new candidates: the rule was exercised
    with pytest.raises(FunnelError, match="new_item_slots"):
        ExportConfig(run=str(ranked_run), k=12, new_item_slots=13)
