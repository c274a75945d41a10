"""Two-tower training on tiny data: shapes, learning, save/load round trip, manifest."""

import json

import numpy as np
import pandas as pd

from models.retrieval import load_tower


def test_manifest_is_complete(retrieval_run, pre_dir):
    m = json.loads((retrieval_run / "retrieval.json").read_text())
    for key in ("config", "data", "versions", "device", "epochs_run", "best_epoch", "train_seconds",
                "samples_per_s", "history", "metrics"):
        assert key in m, key
    pre = json.loads((pre_dir / "preprocess.json").read_text())
    assert m["data"]["content_checksum"] == pre["dataset"]["content_checksum"]
    assert m["device"] == "cpu" and m["epochs_run"] == 3 and "tensorflow-cpu" in m["versions"]
    assert m["data"]["fit_rows"] + 0 < pre["rows"]["train"]  # validation rows held out


def test_loss_goes_down_and_model_learns(retrieval_run):
    m = json.loads((retrieval_run / "retrieval.json").read_text())
    losses = [h["loss"] for h in m["history"]]
    assert losses[-1] < losses[0]
    recall = m["metrics"]["valid_recall@10"]
    assert recall > 0.05  # far above random (10 of 400 items -> 0.025)


def test_item_embeddings_cover_the_catalogue(retrieval_run, pre_dir):
    emb = pd.read_parquet(retrieval_run / "item_embeddings.parquet")
    items = pd.read_parquet(pre_dir / "features" / "items.parquet")
    assert set(emb["item_id"]) == set(items["item_id"])  # raw ids, every item (cold ones too)
    assert emb.shape[1] == 1 + 16 and np.isfinite(emb.drop(columns=["item_id"]).to_numpy()).all()


def test_saved_query_tower_round_trip(retrieval_run, pre_dir):
    from merlin.io import Dataset
    from merlin.schema import Tags

    from models.retrieval import encode_rows

    schema = Dataset(str(pre_dir / "retrieval" / "train"), engine="parquet", cpu=True).schema.select_by_tag(Tags.USER)
    users = pd.read_parquet(pre_dir / "catalogue" / "users.parquet").head(300)
    first = encode_rows(load_tower(retrieval_run / "query_tower"), users, schema)
    second = encode_rows(load_tower(retrieval_run / "query_tower"), users, schema)
    assert first.shape == (300, 16)
    np.testing.assert_allclose(first, second, rtol=1e-6)
    assert np.linalg.matrix_rank(first) > 4  # users get different embeddings
