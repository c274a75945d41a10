"""Fitting on the feature tables and encoding rows by joins (workflows/tables.py).

The joined rows are compared with NVTabular's own ``workflow.transform`` of the raw rows joined
with the feature tables (the way preprocessing used to run), with the same fitted workflow.
"""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from workflows import OOV_INDEX, TARGET
from workflows.io import load_workflow, read_parquet_dir
from workflows.tables import vocabulary, weighted_vocabulary


def _nvtabular_rows(pre, split: str) -> pd.DataFrame:
    from merlin.io import Dataset

    workflow = load_workflow(pre)
    raw = pd.read_parquet(pre / "splits" / f"{split}.parquet")
    rows = raw[["user_id", "item_id", "timestamp"] + [c for c in ("channel",) if c in raw]].copy()
    rows["timestamp"] = rows["timestamp"].astype("datetime64[ns]").astype(np.int64) // 10**9
    rows[TARGET] = np.int8(1)
    joined = (rows.merge(pd.read_parquet(pre / "features" / "users.parquet"), on="user_id", how="left")
              .merge(pd.read_parquet(pre / "features" / "items.parquet"), on="item_id", how="left"))
    out = workflow.transform(Dataset(joined[workflow.input_schema.column_names], cpu=True)).to_ddf().compute()
    return out.drop(columns=[TARGET]).reset_index(drop=True)


def _assert_same(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    for col in expected.columns:
        a, b = expected[col], got[col]
        assert a.dtype == b.dtype, col
        if a.dtype == object:  # multi-hot lists
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), col
        else:
            np.testing.assert_allclose(a.to_numpy(np.float64), b.to_numpy(np.float64), rtol=1e-6, err_msg=col)


@pytest.mark.parametrize("split", ["train", "test"])
def test_joined_rows_equal_nvtabular_transform(pre_dir, split):
    expected = _nvtabular_rows(pre_dir, split)
    got = read_parquet_dir(pre_dir / "retrieval" / split)
    _assert_same(expected, got)
    if split == "test":  # cold users: no table row's id, every feature as a left join leaves it
        cold = ~pd.read_parquet(pre_dir / "splits" / "test.parquet")["user_id"].isin(
            pd.read_parquet(pre_dir / "splits" / "train.parquet")["user_id"]).to_numpy()
        assert cold.any() and (got["user_id"].to_numpy()[cold] == OOV_INDEX).all()


def test_multi_hot_rows_equal_nvtabular_transform(ml100k_source, tmp_path):
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data import movielens
    from workflows.preprocess import PreprocessConfig, preprocess

    with atomic_output_dir(tmp_path / "ml") as out:
        movielens.build(out, ml100k_source.resolve())
    preprocess(PreprocessConfig(data=str(tmp_path / "ml"), out=str(tmp_path / "pre"), split="user-last", device="cpu"))
    got = read_parquet_dir(tmp_path / "pre" / "retrieval" / "test")
    assert got["genres"].map(len).max() > 1
    _assert_same(_nvtabular_rows(tmp_path / "pre", "test"), got)


def test_vocabulary_counts_threshold_and_order():
    values = pd.Series([5, 3, 3, 9, 9, 9, 7, 7, 3, None, 1], name="item_id")
    counts = Counter(v for v in values.dropna())
    expected = sorted((v for v, n in counts.items() if n >= 2), key=lambda v: (-counts[v], v))
    got = vocabulary(values, threshold=2)
    assert got.name == "item_id" and got.tolist() == expected == [3, 9, 7]
    assert vocabulary(values).tolist() == [3, 9, 7, 1, 5]


def test_weighted_vocabulary_counts_each_row_its_weight_times():
    values = pd.Series(["b", "a", None, "c", "a", "d"], name="postal_code")
    weights = np.array([2, 1, 5, 3, 1, 0])
    counts = Counter()
    for v, w in zip(values, weights):
        if v is not None:
            counts[v] += int(w)
    expected = sorted((v for v, n in counts.items() if n >= 2), key=lambda v: (-counts[v], v))
    assert weighted_vocabulary(values, weights, threshold=2).tolist() == expected == ["c", "a", "b"]
    genres = pd.Series([np.array(["x", "y"]), np.array(["y"]), np.array([], dtype=object), None], name="genres")
    got = weighted_vocabulary(genres, np.array([1, 4, 7, 2]), threshold=1)
    assert got.name == "genres" and got.tolist() == ["y", "x"]  # y: 1 + 4, x: 1


def test_ids_and_features_counted_over_purchases(pre_dir):
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    categories = pre_dir / "workflow" / "categories"
    items = pd.read_parquet(categories / "unique.item_id.parquet")["item_id"].tolist()
    purchases = train["item_id"].value_counts()
    assert purchases.loc[items].is_monotonic_decreasing  # the most bought item gets the first code
    # a user feature's vocabulary counts the training purchases of the users with that value (>= 3)
    users = pd.read_parquet(pre_dir / "features" / "users.parquet")
    per_purchase = Counter(train.merge(users, on="user_id")["postal_code"].dropna())
    kept = pd.read_parquet(categories / "unique.postal_code.parquet")["postal_code"].dropna().tolist()
    assert set(kept) == {v for v, n in per_purchase.items() if n >= 3}
    assert [per_purchase[v] for v in kept] == sorted((per_purchase[v] for v in kept), reverse=True)
    # normalisation statistics are over the users with training history
    catalogue = pd.read_parquet(pre_dir / "catalogue" / "users.parquet")
    z = catalogue[catalogue["user_id_raw"].isin(train["user_id"])]["user_n_purchases"]
    assert abs(z.mean()) < 1e-3 and abs(z.std(ddof=0) - 1) < 1e-2
