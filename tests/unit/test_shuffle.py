"""Out-of-core shuffling of training rows (workflows/shuffle.py) and the retriever's use of it."""

from pathlib import Path

import numpy as np
import pandas as pd

from workflows.shuffle import shuffle_parts


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
