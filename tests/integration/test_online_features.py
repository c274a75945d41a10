"""Online features in a real Feast repository (SQLite online store): apply, check-skew, events, serving."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ensemble.build import ExportConfig, export
from funnel.client import Client
from ensemble.online_store import open_store, read_recent
from funnel.features import apply
from funnel.serving import TritonServer


@pytest.fixture(scope="module")
def feature_repo(ranked_run, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("feast") / "feature_repo"
    apply(ranked_run, repo)
    return repo


@pytest.fixture(scope="module")
def served(ranked_run, feature_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("feast-export") / "triton_repo"
    export(ExportConfig(run=str(ranked_run), out=str(repo), features=str(feature_repo), exclude_seen="all",
                        candidates=60, trending=20))
    with TritonServer(repo, grpc_port=0, log_path=repo.parent / "triton.log") as server, Client(server.url) as client:
        yield repo, client


def test_apply_materializes_recent_purchases(feature_repo, pre_dir):
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    user = train.sort_values("timestamp").iloc[-1]
    items, times = read_recent(open_store(feature_repo), [str(user["user_id"]), "nobody"])
    assert items[0][0] == str(user["item_id"]) and times[0][0] == int(user["timestamp"].timestamp())
    assert items[1] == [] and json.loads((feature_repo / "funnel_features.json").read_text())["online_store"] == "sqlite"


def test_check_skew_passes_then_names_a_changed_feature(ranked_run, feature_repo, cli, tmp_path):
    code, out, err = cli("check-skew", ranked_run, "--features", feature_repo, "--users", "60")
    assert code == 0, err
    assert "user_mean_price_bucket" in out and "100.0%" in out
    store = open_store(feature_repo)
    users = pd.read_parquet(feature_repo / "data" / "user_features.parquet")
    changed = users.iloc[:1].assign(age=users["age"].iloc[0] + 40, event_timestamp=pd.Timestamp.now(tz="UTC"))
    store.write_to_online_store("user_features", changed)
    try:
        code, out, err = cli("check-skew", ranked_run, "--features", feature_repo, "--users", "1500")
        assert code == 3 and "skew" in err
        line = next(x for x in out.splitlines() if x.split()[:2] == ["user", "age"])
        assert str(users["user_id"].iloc[0]) in line
    finally:
        store.write_to_online_store("user_features", users.iloc[:1].assign(event_timestamp=pd.Timestamp.now(tz="UTC")))


def test_event_files_are_validated(feature_repo, cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "purchase", "user_id": "u"}\n')
    code, _, err = cli("events", "ingest", bad, "--features", feature_repo)
    assert code == 2 and "field 'item_id' missing" in err
    bad.write_text('{"type": "refund", "item_id": "1"}\n')
    code, _, err = cli("events", "ingest", bad, "--features", feature_repo)
    assert code == 2 and "'refund' is not purchase or stock" in err
    bad.write_text("{not json\n")
    code, _, err = cli("events", "ingest", bad, "--features", feature_repo)
    assert code == 2 and "line 1: not JSON" in err


def test_ingested_purchase_and_stock_change_the_next_grpc_answer(served, feature_repo, cli, tmp_path, pre_dir):
    repo, client = served
    user = pd.read_parquet(pre_dir / "splits" / "train.parquet")["user_id"].astype(str).iloc[0]
    before = next(client.recommend([user], k=10)).items
    cold_before = next(client.recommend(["brand-new"], k=5)).items
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "purchase", "user_id": user, "item_id": before[0]}) + "\n"
                      + json.dumps({"type": "stock", "item_id": cold_before[0], "in_stock": False}) + "\n")
    code, out, err = cli("events", "ingest", events, "--features", feature_repo, "--triton-repo", repo)
    assert code == 0, err
    assert "1 purchases (1 users) and 1 stock updates" in out
    after = next(client.recommend([user], k=10)).items
    assert before[0] not in after and len(after) == 10  # bought just now: seen, so filtered
    assert cold_before[0] not in next(client.recommend(["brand-new"], k=5)).items
    items, _ = read_recent(open_store(feature_repo), [user])
    assert items[0][0] == before[0]
