"""The fitted NVTabular workflow: fit on train only, OOV handling, tags, sub-workflows, outputs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from funnel.core.errors import FunnelError
from workflows.io import load_workflow, read_parquet_dir
from workflows.preprocess import PreprocessConfig, preprocess
from workflows import ITEM_SUBGRAPH, OOV_INDEX, TARGET, USER_SUBGRAPH


def _categories(pre, col):
    return pd.read_parquet(pre / "workflow" / "categories" / f"unique.{col}.parquet")


def test_layout_and_manifest(pre_dir):
    for rel in ("splits/train.parquet", "splits/test.parquet", "features/users.parquet", "features/items.parquet",
                "workflow/workflow.pkl", "retrieval/train/schema.pbtxt", "retrieval/test/schema.pbtxt",
                "catalogue/items.parquet",
                "catalogue/users.parquet", "preprocess.json"):
        assert (pre_dir / rel).exists(), rel
    assert not (pre_dir / "_stage").exists()
    m = json.loads((pre_dir / "preprocess.json").read_text())
    assert m["device"] == "cpu" and m["rows"]["train"] + m["rows"]["test"] == m["rows"]["interactions"]
    split_train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    assert list(split_train.columns)[:3] == ["user_id", "item_id", "timestamp"]
    assert split_train["timestamp"].max() < pd.Timestamp(m["split"]["cutoff"])


def test_vocabulary_fitted_on_train_only(pre_dir):
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    test = pd.read_parquet(pre_dir / "splits" / "test.parquet")
    users = _categories(pre_dir, "user_id")["user_id"].dropna()
    items = _categories(pre_dir, "item_id")["item_id"].dropna()
    assert set(users) == set(train["user_id"])  # every train user, and no test-only user
    assert set(items) == set(train["item_id"])
    assert len(set(test["user_id"]) - set(train["user_id"])) > 0  # the fixture has cold users


def test_unseen_ids_go_to_the_oov_bucket(pre_dir):
    test = pd.read_parquet(pre_dir / "splits" / "test.parquet")
    train_users = set(pd.read_parquet(pre_dir / "splits" / "train.parquet")["user_id"])
    encoded = read_parquet_dir(pre_dir / "retrieval" / "test")
    assert len(encoded) == len(test)
    cold = ~test["user_id"].isin(train_users).to_numpy()
    assert (encoded["user_id"].to_numpy()[cold] == OOV_INDEX).all()
    assert (encoded["user_id"].to_numpy()[~cold] > OOV_INDEX).all()


def test_sub_workflows_encode_like_training(pre_dir):
    """Serving applies the user/item sub-workflows; they must agree with the training data."""
    from merlin.io import Dataset

    workflow = load_workflow(pre_dir)
    items = pd.read_parquet(pre_dir / "features" / "items.parquet")
    item_sub = workflow.get_subworkflow(ITEM_SUBGRAPH)
    cols = [c for c in item_sub.input_schema.column_names]
    new = items[cols].head(3).copy()
    new["item_id"] = [-1, -2, -3]  # unseen article ids
    out = item_sub.transform(Dataset(new, cpu=True)).to_ddf().compute()
    assert (out["item_id"] == OOV_INDEX).all()
    catalogue = pd.read_parquet(pre_dir / "catalogue" / "items.parquet")
    vocab = _categories(pre_dir, "item_id").dropna(subset=["item_id"])
    code_of = dict(zip(vocab["item_id"], vocab.index))  # encoded id = index of unique.item_id.parquet
    seen = catalogue[catalogue["item_id_raw"].isin(code_of)]
    assert (seen["item_id"].to_numpy() == seen["item_id_raw"].map(code_of).to_numpy()).all()
    user_sub = workflow.get_subworkflow(USER_SUBGRAPH)
    assert "user_id" in user_sub.output_schema.column_names
    assert not set(user_sub.output_schema.column_names) & set(item_sub.output_schema.column_names)


def test_schema_tags_for_merlin_models(pre_dir):
    from merlin.io import Dataset
    from merlin.schema import Tags

    from models.ranking_rows import ranking_schema

    schema = ranking_schema(pre_dir)  # the retriever's transformed features + pair features + the workflow's target
    assert schema.select_by_tag(Tags.USER_ID).column_names == ["user_id"]
    assert schema.select_by_tag(Tags.ITEM_ID).column_names == ["item_id"]
    assert schema.select_by_tag(Tags.TARGET).column_names == [TARGET]
    assert schema[TARGET].dtype.name == "int8" and Tags.BINARY_CLASSIFICATION in schema[TARGET].tags
    assert "age_bucket" in schema.select_by_tag(Tags.USER).column_names
    assert "item_mean_price_bucket" in schema.select_by_tag(Tags.ITEM).column_names
    assert "item_n_purchases" in schema.select_by_tag(Tags.CONTINUOUS).column_names
    assert schema["user_id"].int_domain.max >= 3
    retrieval = Dataset(str(pre_dir / "retrieval" / "train"), engine="parquet", cpu=True).schema
    assert "channel" in retrieval.select_by_tag(Tags.CONTEXT).column_names
    assert TARGET not in retrieval.column_names  # positives only: no label column


def test_only_what_a_consumer_reads_is_written(pre_dir):
    # the ranker builds its rows from retriever candidates: no folder of random negatives
    assert sorted(p.name for p in pre_dir.iterdir() if p.is_dir()) == ["catalogue", "features", "retrieval",
                                                                       "splits", "workflow"]
    m = json.loads((pre_dir / "preprocess.json").read_text())
    assert len(read_parquet_dir(pre_dir / "retrieval" / "train")) == m["rows"]["train"]


def test_tampered_workflow_is_refused(pre_dir, tmp_path):
    copy = tmp_path / "pre"
    shutil.copytree(pre_dir, copy)
    with open(copy / "workflow" / "workflow.pkl", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(FunnelError, match="checksum"):
        load_workflow(copy)


def test_failure_keeps_previous_output(pre_dir, synth_dir, tmp_path, monkeypatch):
    out = tmp_path / "pre"
    shutil.copytree(pre_dir, out)
    before = (out / "preprocess.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during fit")

    monkeypatch.setattr("workflows.preprocess.fit_on_tables", boom)
    with pytest.raises(RuntimeError):
        preprocess(PreprocessConfig(data=str(synth_dir), out=str(out), device="cpu"))
    assert (out / "preprocess.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]


def test_user_last_split_and_movielens_features(ml100k_source, tmp_path, monkeypatch):
    from funnel.data import movielens
    from funnel.core.fsutil import atomic_output_dir

    source = ml100k_source.resolve()
    monkeypatch.chdir(tmp_path)  # fitting must not write vocabularies into the working directory
    with atomic_output_dir(tmp_path / "ml") as out:
        movielens.build(out, source)
    m = preprocess(PreprocessConfig(data=str(tmp_path / "ml"), out=str(tmp_path / "pre"), split="user-last",
                                    device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml", "pre"]  # no ./categories left behind
    assert m["users"]["test"] == 943 and m["rows"]["test"] < 3000  # one last basket per user
    assert "genres" in m["features"]["item"]["multi_hot"]
    assert "age_bucket" in pd.read_parquet(tmp_path / "pre" / "catalogue" / "users.parquet").columns
    genres = pd.read_parquet(tmp_path / "pre" / "catalogue" / "items.parquet")["genres"]
    assert genres.map(len).max() > 1  # multi-hot lists survive Categorify


def test_gpu_device_without_gpu_is_a_clear_error(synth_dir, tmp_path, cli):
    from workflows.compute import gpu_count

    if gpu_count():
        pytest.skip("this host has a GPU; the error path is for CPU-only hosts")
    code, _, err = cli("preprocess", synth_dir, "--out", tmp_path / "p", "--device", "gpu")
    assert code == 2 and "--device gpu" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_timestamp_passes_through_as_unix_seconds(pre_dir):
    from merlin.io import Dataset
    from merlin.schema import Tags

    raw = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    out = read_parquet_dir(pre_dir / "retrieval" / "train")
    assert out["timestamp"].dtype == np.int64
    expected = raw["timestamp"].astype(np.int64) // 10**9
    assert sorted(out["timestamp"]) == sorted(expected)
    schema = Dataset(str(pre_dir / "retrieval" / "train"), engine="parquet", cpu=True).schema
    assert schema.select_by_tag(Tags.TIME).column_names == ["timestamp"]
