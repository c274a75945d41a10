"""Out-of-core shuffling of training rows (workflows/shuffle.py) and the retriever's use of it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflows.shuffle import permute_parts, shuffle_parts


def _parts(n, size):
    rows = pd.DataFrame({"i": np.arange(n), "x": np.arange(n) * 0.5,
                         "tags": [np.arange(i % 3 + 1, dtype=np.int32) for i in range(n)]})
    return rows, [rows.iloc[s:s + size] for s in range(0, n, size)]


def test_every_row_once_in_a_new_order(tmp_path):
    rows, parts = _parts(1000, 90)
    out = shuffle_parts(iter(parts), 1000, tmp_path / "a", seed=1, bucket_rows=128)
    got = out.read()
    assert out.rows == 1000 and len(out.files) == 8  # ceil(1000 / 128) buckets, each one part
    assert sorted(got["i"]) == list(range(1000))
    assert not (got["i"].to_numpy() == np.arange(1000)).all()
    back = got.set_index("i").loc[rows["i"]]
    np.testing.assert_array_equal(back["x"].to_numpy(), rows["x"].to_numpy())
    assert all(np.array_equal(a, b) for a, b in zip(back["tags"], rows["tags"]))  # list columns survive
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [Path(f).name for f in out.files]  # no buckets left


def test_the_order_mixes_the_whole_input(tmp_path):
    """Rows from the first and last input parts both reach the first output part (not a per-part shuffle),
    and the same seed gives the same order."""
    _, parts = _parts(2000, 100)
    first = shuffle_parts(iter(parts), 2000, tmp_path / "a", seed=3, bucket_rows=500).read()
    again = shuffle_parts(iter(parts), 2000, tmp_path / "b", seed=3, bucket_rows=500).read()
    assert first["i"].tolist() == again["i"].tolist()
    head = first["i"].to_numpy()[:500]
    assert (head < 100).any() and (head >= 1900).any()
    # each row's output position is roughly uniform: mean position of early input rows ~ the middle
    position = np.empty(2000)
    position[first["i"].to_numpy()] = np.arange(2000)
    assert abs(position[:1000].mean() - 999.5) < 60


def test_no_rows_keeps_the_columns(tmp_path):
    rows, _ = _parts(5, 5)
    out = shuffle_parts(iter([rows.iloc[:0]]), 0, tmp_path / "e", seed=0)
    assert out.rows == 0 and list(out.read().columns) == ["i", "x", "tags"]


def test_permute_parts_writes_the_given_order(tmp_path):
    """Output row j is input row order[j], across input parts and buckets (pandas' iloc computes the same)."""
    rows, parts = _parts(1000, 90)
    order = np.random.default_rng(5).permutation(1000)
    out = permute_parts(iter(parts), order, tmp_path / "p", bucket_rows=128)
    got = out.read()
    assert out.rows == 1000 and len(out.files) == 8
    expected = rows.iloc[order].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["i", "x"]], expected[["i", "x"]])
    assert all(np.array_equal(a, b) for a, b in zip(got["tags"], expected["tags"]))
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [Path(f).name for f in out.files]


def test_permute_parts_casts_later_parts_and_refuses_a_wrong_count(tmp_path):
    first = pd.DataFrame({"a": np.arange(3, dtype=np.int64), "b": np.ones(3, np.float32)})
    second = pd.DataFrame({"a": np.arange(3, 5, dtype=np.int32), "b": np.ones(2, np.float32)})
    got = permute_parts(iter([first, second]), np.array([4, 0, 3, 1, 2]), tmp_path / "c").read()
    assert got["a"].tolist() == [4, 0, 3, 1, 2] and got["a"].dtype == np.int64
    with pytest.raises(ValueError, match="4 rows for an order of 5"):
        permute_parts(iter([first, second.iloc[:1]]), np.arange(5), tmp_path / "d")
    with pytest.raises(ValueError, match="more rows"):
        permute_parts(iter([first, second]), np.arange(4), tmp_path / "e")
    empty = permute_parts(iter([first.iloc[:0]]), np.zeros(0, np.int64), tmp_path / "f")
    assert empty.rows == 0 and list(empty.read().columns) == ["a", "b"]


def test_staged_ranking_rows_come_back_in_pandas_sample_order(tmp_path):
    """The ranker's rows, staged a period at a time and shuffled on disk, are in the order the
    in-memory ``pd.concat(periods).sample(frac=1, random_state=seed)`` gave (so runs before and
    after the rows moved to disk train on the same batches)."""
    from models.ranking_data import StagedRows

    rng = np.random.default_rng(0)
    periods = [pd.DataFrame({"user_id": rng.integers(0, 50, n), "score": rng.random(n).astype(np.float32),
                             "extra": ["x"] * n}) for n in (700, 0, 450, 300)]
    staged = StagedRows(tmp_path / "s")
    staged.columns = ["user_id", "score"]
    for period in periods:
        staged.add(period)
    got = staged.shuffle(seed=7).read()
    expected = pd.concat(periods, ignore_index=True).sample(frac=1.0, random_state=7).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected[["user_id", "score"]])
    assert staged.rows == [700, 0, 450, 300] and not (tmp_path / "s" / "staged").exists()


def test_retriever_trains_on_the_rows_before_the_validation_cutoff(pre_dir):
    from models.config import RetrievalConfig
    from models.retrieval import RetrievalData, valid_mask
    from workflows.io import read_parquet_dir

    data = RetrievalData.load(RetrievalConfig(pre=str(pre_dir), out="unused", valid_days=7))
    try:
        got = data.fit_rows.read()
        folder = data.fit_folder
        assert folder.exists()
    finally:
        data.close()
    assert not folder.exists()
    raw = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    held = valid_mask(raw, "time", 7)
    expected = read_parquet_dir(pre_dir / "retrieval" / "train")[~held][data.schema.column_names]
    key = list(expected.columns)
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True))
    counts = np.bincount(expected["item_id"], minlength=len(data.item_counts))
    np.testing.assert_array_equal(data.item_counts, counts)
