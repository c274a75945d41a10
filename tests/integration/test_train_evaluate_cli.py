"""`funnel train retrieval` and `funnel evaluate` end to end from the CLI on small synthetic data."""

import json

import pytest


@pytest.mark.integration
def test_train_and_evaluate_from_the_cli(pre_dir, tmp_path, cli):
    (tmp_path / "run.yaml").write_text("epochs: 2\nbatch_size: 256\nembedding_dim: 16\ntower_dims: [32]\n")
    code, out, err = cli("train", "retrieval", pre_dir, "--out", tmp_path / "run", "--config", tmp_path / "run.yaml",
                         "--valid-users", "300")
    assert code == 0, err
    assert "epoch   1" in err and "funnel train retrieval: done" in out
    code, out, err = cli("train", "ranking", pre_dir, "--run", tmp_path / "run", "--epochs", "1", "--candidates", "30",
                         "--embedding-dim", "8", "--top-dims", "16")
    assert code == 0, err
    assert "valid AUC" in err and "funnel train ranking: done" in out
    code, out, err = cli("evaluate", tmp_path / "run", "--k", "10", "12", "--json", tmp_path / "eval.json")
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["served", "popularity", "repurchase", "retrieval", "retrieval+ranking", "oracle"]
    assert 0 <= report["ranker_on_test_candidates"]["auc"] <= 1  # learning is asserted on the fixture run
    assert methods["served"]["recall@12"] > 1.5 * methods["popularity"]["recall@12"]
    assert methods["retrieval"]["recall@12"] > methods["popularity"]["recall@12"]
    # the served graph filters with the stock as of the cutoff (the generator's stock history), not the end's
    pre = json.loads((pre_dir / "preprocess.json").read_text())
    assert "stock history" in report["served"]["inventory"]
    assert report["served"]["in_stock"] < pre["items"]["total"]
    # cold items: bought in the test period and never in training (counted here from the splits)
    import pandas as pd

    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    test = pd.read_parquet(pre_dir / "splits" / "test.parquet")
    cold = test[~test["item_id"].isin(train["item_id"])]
    assert report["cold_items"] == {"items": cold["item_id"].nunique(), "test_rows": len(cold),
                                    "test_users": cold["user_id"].nunique()}
    assert len(cold) > 0  # the generator launches items during the period
    # no history can point at them: popularity and repurchase never recommend one; the oracle does
    assert methods["popularity"]["cold_recall@12"] == methods["repurchase"]["cold_recall@12"] == 0
    assert methods["oracle"]["cold_recall@12"] > 0
    assert "cold items (bought in the test period, never in training)" in out
    assert (tmp_path / "run" / "evaluation.png").stat().st_size > 1000
    markdown = (tmp_path / "run" / "evaluation.md").read_text()
    assert "| **served** |" in markdown and "| retrieval |" in markdown


@pytest.mark.integration
def test_evaluate_needs_a_run(tmp_path, cli):
    code, _, err = cli("evaluate", tmp_path)
    assert code == 2 and "retrieval.json" in err
