"""No look-ahead: what happens after the cutoff cannot reach any feature, model, baseline or served list.

The small synthetic dataset is copied and the future is rewritten: every test-period purchase
becomes one planted article (rarely bought before) at a hundred times its price, and that article
goes out of stock the day after the cutoff. Anything that saw the test period (popularity "last 7
days", item features, vocabularies, validation, negatives' popularity, the trending list, the
inventory of an evaluation export) would move the planted article. Preprocessing, both models,
the baselines and the served graph must come out identical to the untouched dataset's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

K = 12


@pytest.fixture(scope="module")
def planted(synth_dir, tmp_path_factory) -> tuple:
    """The small dataset with its test period rewritten; returns (data dir, planted item, cutoff)."""
    from workflows.splits import split

    data = tmp_path_factory.mktemp("planted") / "data"
    shutil.copytree(synth_dir, data)
    rows = pd.read_parquet(data / "interactions.parquet")
    cutoff = split(rows, "time", 7).cutoff
    future = rows["timestamp"] >= cutoff
    counts = rows.loc[~future, "item_id"].value_counts()
    item = counts.index[-1]  # the least bought article of the past
    assert future.sum() > 100 and counts.iloc[-1] <= 2
    rows.loc[future, "item_id"] = item
    rows.loc[future, "price"] = rows.loc[future, "price"] * 100
    rows.to_parquet(data / "interactions.parquet", index=False)
    stock = pd.read_parquet(data / "stock.parquet")
    gone = pd.DataFrame({"item_id": [item], "timestamp": [cutoff + pd.Timedelta(days=1)], "in_stock": [False]})
    pd.concat([stock, gone.astype(stock.dtypes.to_dict())], ignore_index=True).to_parquet(
        data / "stock.parquet", index=False)
    items = pd.read_parquet(data / "items.parquet")
    items.loc[items["item_id"] == item, "in_stock"] = False
    items.to_parquet(data / "items.parquet", index=False)
    return data, item, cutoff


@pytest.fixture(scope="module")
def planted_pre(planted, tmp_path_factory):
    from workflows.preprocess import PreprocessConfig, preprocess

    out = tmp_path_factory.mktemp("planted-pre") / "pre"
    preprocess(PreprocessConfig(data=str(planted[0]), out=str(out), device="cpu"))  # as pre_dir
    return out


def frame(path) -> pd.DataFrame:
    """A parquet file, or a directory of parquet parts (NVTabular's output, with its schema files)."""
    parts = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def test_the_future_really_changed(planted, planted_pre, pre_dir):
    _, item, _ = planted
    test = frame(planted_pre / "splits" / "test.parquet")
    assert (test["item_id"] == item).all()
    assert not frame(pre_dir / "splits" / "test.parquet")["item_id"].eq(item).all()


@pytest.mark.parametrize("part", [
    "splits/train.parquet", "features/users.parquet", "features/items.parquet", "catalogue/items.parquet",
    "catalogue/users.parquet", "retrieval/train",
])
def test_preprocessing_outputs_ignore_the_future(part, planted_pre, pre_dir):
    pdt.assert_frame_equal(frame(planted_pre / part), frame(pre_dir / part))


def test_models_baselines_and_served_lists_ignore_the_future(planted, planted_pre, pre_dir, ranked_run,
                                                            train_small, tmp_path):
    from funnel.evaluate import EvalData, popularity, repurchase, served

    run = train_small(planted_pre, tmp_path / "run")
    for name in ("item_embeddings.parquet",):
        pdt.assert_frame_equal(frame(run / name), frame(ranked_run / name))
    gate = json.loads((run / "ranking.json").read_text())["metrics"]
    gate_before = json.loads((ranked_run / "ranking.json").read_text())["metrics"]
    assert gate == gate_before  # validation, the held-out users' gate and its decision

    now, before = EvalData(planted_pre), EvalData(pre_dir)
    np.testing.assert_array_equal(now.users, before.users)
    assert popularity(now, K) == popularity(before, K)
    assert repurchase(now, K) == repurchase(before, K)
    lists_now, facts_now = served(now, run, K)
    lists_before, facts_before = served(before, ranked_run, K)
    assert lists_now == lists_before
    # the planted article was in stock at the cutoff: an evaluation export must not know it sold out
    assert "as of" in facts_now["inventory"] and facts_now["in_stock"] == facts_before["in_stock"]
