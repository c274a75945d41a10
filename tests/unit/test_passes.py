"""Preprocessing a batch at a time (workflows/passes.py): the same splits, tables and encoded rows
as plain pandas on the whole frame, whatever the batch size."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from workflows.codes import IdCodes
from workflows.history import HistoryStats
from workflows.io import read_parquet_dir
from workflows.passes import history_pass, split_files


def _interactions(tmp_path, n=5000, seed=4):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "user_id": rng.choice([f"u{i:03d}" for i in range(300)], n),
        "item_id": rng.integers(0, 120, n),
        "timestamp": (pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 40, n), unit="D")
                      + pd.to_timedelta(rng.integers(0, 3, n) * 3600, unit="s")),
        "price": np.where(rng.random(n) < 0.05, np.nan, rng.random(n)).astype(np.float32),
        "channel": rng.integers(1, 3, n).astype(np.int8),
    })
    path = tmp_path / "interactions.parquet"
    frame.to_parquet(path, index=False, row_group_size=700)
    return frame, path


def _reference_split(frame, how):
    """The split written out longhand: last 7 calendar days, or each user's last timestamp."""
    if how == "time":
        cutoff = frame["timestamp"].max().normalize() - pd.Timedelta(days=6)
        test = frame["timestamp"] >= cutoff
    else:
        last = frame.groupby("user_id")["timestamp"].transform("max")
        first = frame.groupby("user_id")["timestamp"].transform("min")
        test = (frame["timestamp"] == last) & (first < last)
        cutoff = frame.loc[~test, "timestamp"].max() + pd.Timedelta(seconds=1)
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True), cutoff


@pytest.mark.parametrize("how", ["time", "user-last"])
def test_split_files_in_small_batches_equal_the_whole_frame_split(tmp_path, how):
    frame, path = _interactions(tmp_path)
    out = tmp_path / "splits"
    out.mkdir()
    got = split_files(path, out, how, 7, part_rows=250, batch_rows=333)
    train, test, cutoff = _reference_split(frame, how)
    pd.testing.assert_frame_equal(pd.read_parquet(got.train), train)
    pd.testing.assert_frame_equal(pd.read_parquet(got.test), test)
    assert got.cutoff == cutoff and got.rows == {"train": len(train), "test": len(test)}
    groups = pq.ParquetFile(got.train).metadata
    assert max(groups.row_group(i).num_rows for i in range(groups.num_row_groups)) <= 250


def test_history_pass_in_groups_equals_plain_groupbys(tmp_path, monkeypatch):
    frame, path = _interactions(tmp_path)
    out = tmp_path / "splits"
    out.mkdir()
    splits = split_files(path, out, "time", 7, part_rows=250, batch_rows=333)
    monkeypatch.setattr("workflows.passes.PAIRS_PER_GROUP", 1000)  # several pair groups, on disk
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(290)] + ["nobody"]})  # 10 buyers missing
    items = pd.DataFrame({"item_id": np.arange(130), "in_stock": True})
    got = history_pass(splits, users, items, ["channel"], tmp_path / "scratch", batch_rows=401)
    assert got.stats.buckets > 1 and not list((tmp_path / "scratch").glob("pairs_*"))

    train, test, cutoff = _reference_split(frame, "time")
    g = train.groupby("user_id")
    u = got.users.set_index("user_id")
    assert u.loc["nobody"].isna().all()
    known = [x for x in g.size().index if x in u.index]
    np.testing.assert_array_equal(u.loc[known, "user_n_purchases"], g.size()[known])
    np.testing.assert_allclose(u.loc[known, "user_repeat_share"],
                               (1 - g["item_id"].nunique() / g.size())[known], rtol=1e-6)
    np.testing.assert_allclose(u.loc[known, "user_days_since_last"],
                               ((cutoff - g["timestamp"].max()) / pd.Timedelta(days=1))[known], rtol=1e-6)
    np.testing.assert_allclose(u.loc[known, "user_mean_price"], g["price"].mean()[known], rtol=1e-6)
    gi = train.groupby("item_id")
    i = got.items.set_index("item_id")
    assert "in_stock" not in i.columns
    np.testing.assert_array_equal(i.loc[gi.size().index, "item_n_buyers"], gi["user_id"].nunique())
    week = train[train["timestamp"] >= cutoff - pd.Timedelta(days=7)].groupby("item_id").size()
    np.testing.assert_array_equal(i["item_n_purchases_last7"], week.reindex(i.index).fillna(0))
    assert (i.loc[~i.index.isin(train["item_id"]), "item_n_purchases"] == 0).all()
    # ids the user table lacks, in order of first appearance (train, then test)
    lacking = pd.unique(pd.concat([train["user_id"], test["user_id"]]))
    assert list(got.stats.user_codes.extra) == [x for x in lacking if x not in set(users["user_id"])]
    assert got.context["channel"].to_dict() == train["channel"].value_counts().to_dict()
    assert len(got.test_users) == test["user_id"].nunique()


def test_id_codes_extend_past_the_table_in_order_of_appearance():
    codes = IdCodes(pd.Index(["a", "b"]))
    assert list(codes(["b", "x", "a", "y", "x"])) == [1, 2, 0, 3, 2]
    assert list(codes(["y", "z"])) == [3, 4] and list(codes.ids()) == ["a", "b", "x", "y", "z"]
    with pytest.raises(ValueError, match="duplicate"):
        IdCodes(pd.Index(["a", "a"]))


def test_history_stats_added_in_parts_equal_one_call(tmp_path):
    frame, _ = _interactions(tmp_path)
    users = pd.DataFrame({"user_id": sorted(frame["user_id"].unique())})
    items = pd.DataFrame({"item_id": sorted(frame["item_id"].unique())})
    cutoff = frame["timestamp"].max()
    whole = HistoryStats(users, items, cutoff)
    whole.add(frame)
    parts = HistoryStats(users, items, cutoff, buckets=3, scratch=tmp_path)
    for chunk in np.array_split(np.arange(len(frame)), 7):
        parts.add(frame.iloc[chunk])
    for a, b in zip(whole.tables(), parts.tables()):
        pd.testing.assert_frame_equal(a, b, rtol=1e-6)


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("lacking", [False, True])
def test_history_shares_merged_in_row_order_equal_one_pass(tmp_path, on_disk, lacking):
    """What Dask workers hand back: counts of separate row ranges, each coding the ids the tables lack
    on its own, merged in order == one pass (codes of lacking ids included)."""
    frame, _ = _interactions(tmp_path)
    step = 2 if lacking else 1  # every other buyer and every third item lacking from the tables
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(0, 300, step)]})
    items = pd.DataFrame({"item_id": np.arange(0, 120, 3 if lacking else 1)})
    cutoff = frame["timestamp"].max()
    scratch = (lambda name: (tmp_path / name).mkdir() or tmp_path / name) if on_disk else (lambda name: None)
    whole = HistoryStats(users, items, cutoff, buckets=3, scratch=scratch("whole"))
    whole.add(frame)
    merged = HistoryStats(users, items, cutoff, buckets=3, scratch=scratch("merged"))
    for i, chunk in enumerate(np.array_split(np.arange(len(frame)), 5)):
        part = HistoryStats(None, None, cutoff, buckets=3, scratch=scratch(f"part{i}"),
                            codes=(IdCodes(users["user_id"]), IdCodes(items["item_id"])))
        part.add(frame.iloc[chunk])
        merged.merge(part.share())
    assert list(merged.user_codes.extra) == list(whole.user_codes.extra)
    assert list(merged.item_codes.extra) == list(whole.item_codes.extra)
    for a, b in zip(whole.tables(), merged.tables()):
        pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="other id tables"):
        merged.merge(HistoryStats(users.head(3), items, cutoff).share())


def test_row_group_chunks_cover_files_and_folders_in_order(tmp_path):
    from workflows.codes import parquet_batches, parquet_parts, row_group_chunks, row_groups

    frame, path = _interactions(tmp_path)  # 5000 rows in groups of 700
    assert row_group_chunks(path, 1500) == [(path, [0, 1]), (path, [2, 3]), (path, [4, 5]), (path, [6, 7])]
    assert row_group_chunks(path, 10) == [(path, [g]) for g in range(8)]
    folder = tmp_path / "split.parquet"  # a folder of parts, as Dask workers write a split
    folder.mkdir()
    for i, rows in enumerate((slice(0, 1200), slice(1200, 1200), slice(1200, 5000))):
        frame.iloc[rows].to_parquet(folder / f"part.{i:06d}.parquet", index=False, row_group_size=1000)
    parts = parquet_parts(folder)
    assert [p.name for p in parts] == ["part.000000.parquet", "part.000001.parquet", "part.000002.parquet"]
    # (pandas writes an empty frame as one empty row group)
    assert row_group_chunks(folder, 1500) == [(parts[0], [0, 1]), (parts[1], [0]), (parts[2], [0]), (parts[2], [1]),
                                               (parts[2], [2]), (parts[2], [3])]
    assert [(p.name[-9:-8], g) for p, g in row_groups(folder)] == [("0", 0), ("0", 1), ("1", 0), ("2", 0), ("2", 1),
                                                                   ("2", 2), ("2", 3)]
    pd.testing.assert_frame_equal(pd.concat(parquet_batches(folder, rows=333), ignore_index=True), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(folder), frame)  # pandas reads the folder in row order too
    got = pd.concat(parquet_batches(parts[2], ["item_id"], 300, groups=[1, 2]), ignore_index=True)
    np.testing.assert_array_equal(got["item_id"], frame["item_id"].iloc[2200:4200])


@pytest.mark.parametrize("how", ["time", "user-last"])
def test_split_spans_merged_in_row_order_give_the_rule_of_one_pass(tmp_path, how):
    from workflows.splits import SplitSpan, split_rule

    frame, _ = _interactions(tmp_path)
    whole = split_rule([frame], how, 7)
    merged = SplitSpan(per_user=how == "user-last")
    for chunk in np.array_split(np.arange(len(frame)), 6):
        span = SplitSpan(per_user=how == "user-last")
        span.add(frame.iloc[chunk])
        merged.merge(span)
    rule = merged.rule(how, 7)
    np.testing.assert_array_equal(rule.is_test(frame), whole.is_test(frame))
    if how == "user-last":
        assert list(rule.codes.ids()) == list(pd.unique(frame["user_id"]))


def test_preprocess_in_small_batches_writes_the_same_output(synth_dir, pre_dir, tmp_path, monkeypatch):
    """A pass of 20k-row batches and on-disk pair groups gives the fixture's output file for file."""
    from workflows.preprocess import PreprocessConfig, preprocess

    monkeypatch.setattr("workflows.codes.BATCH_ROWS", 20_000)
    monkeypatch.setattr("workflows.passes.PAIRS_PER_GROUP", 15_000)
    preprocess(PreprocessConfig(data=str(synth_dir), out=str(tmp_path / "pre"), device="cpu"))
    for rel in ("splits/train.parquet", "splits/test.parquet", "features/users.parquet", "features/items.parquet",
                "catalogue/users.parquet", "catalogue/items.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(pre_dir / rel), pd.read_parquet(tmp_path / "pre" / rel),
                                      rtol=1e-6, obj=rel)
    for rel in ("retrieval/train", "retrieval/test"):
        pd.testing.assert_frame_equal(read_parquet_dir(pre_dir / rel), read_parquet_dir(tmp_path / "pre" / rel),
                                      obj=rel)
    a, b = (json.loads((p / "preprocess.json").read_text()) for p in (pre_dir, tmp_path / "pre"))
    assert {k: a[k] for k in ("split", "rows", "users", "items")} == {k: b[k] for k in ("split", "rows", "users", "items")}


@pytest.mark.parametrize("how", ["time", "user-last"])
def test_label_windows_of_a_file_read_in_batches_equal_the_frames(tmp_path, how):
    from workflows.splits import file_label_windows, label_windows

    frame, path = _interactions(tmp_path)
    for windows in (1, 3):
        expected = label_windows(frame, how, 5, windows)
        got, before = file_label_windows(path, how, 5, windows, batch_rows=333)
        np.testing.assert_array_equal(got, expected)
        assert before == frame["timestamp"][expected < 0].max()


def test_column_reader_hands_out_a_column_in_steps_of_any_size(tmp_path):
    from workflows.codes import ColumnReader

    frame, path = _interactions(tmp_path)
    reader = ColumnReader(path, "timestamp", rows=333)
    got = [reader.take(n) for n in (1, 500, 0, 2000, 10_000)]
    np.testing.assert_array_equal(np.concatenate(got), frame["timestamp"].to_numpy().view(np.int64))
    assert [len(g) for g in got] == [1, 500, 0, 2000, len(frame) - 2501]


def test_isin_by_hashing_equals_numpys_on_strings_and_numbers():
    from workflows.codes import isin

    rng = np.random.default_rng(0)
    for make in (lambda n: rng.integers(0, 50, n), lambda n: np.array([f"u{i}" for i in rng.integers(0, 50, n)], dtype=object)):
        values, test = make(200), make(30)  # duplicates on both sides
        np.testing.assert_array_equal(isin(values, test), np.isin(values, test))
    assert not isin(np.array(["a"], dtype=object), np.array([], dtype=object)).any()


def test_row_chunks_of_files_equal_the_chunks_of_their_concatenated_frame(tmp_path):
    """Fixed-size chunks across parquet files (several row groups each, one file empty) hold the
    rows the same chunks of the concatenated frame hold, so the scores of held-out lists read from
    disk come in the same batches as from memory."""
    from workflows.codes import row_chunks

    frames = [pd.DataFrame({"a": np.arange(s, s + n, dtype=np.int32), "b": np.arange(s, s + n) * 0.5,
                            "c": ["x"] * n}) for s, n in ((0, 23), (23, 0), (23, 40), (63, 7))]
    files = []
    for i, f in enumerate(frames):
        files.append(tmp_path / f"period_{i}.parquet")
        f.to_parquet(files[-1], index=False, row_group_size=6)
    whole = pd.concat(frames, ignore_index=True)
    for size in (1, 5, 10, 70, 100):
        got = list(row_chunks(files, ["a", "b"], size))
        want = list(row_chunks(whole, ["a", "b"], size))
        assert [len(g) for g in got] == [len(w) for w in want] == [min(size, 70 - s) for s in range(0, 70, size)]
        for g, w in zip(got, want):
            pd.testing.assert_frame_equal(g.reset_index(drop=True), w.reset_index(drop=True))
