"""Preprocessing on a real 2-worker Dask LocalCluster (the history pass and the transform on the
workers) gives the same output as one process."""

import json

import numpy as np
import pandas as pd
import pytest

from workflows.io import read_parquet_dir
from workflows.preprocess import PreprocessConfig, preprocess

KEY = ["user_id", "item_id"]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


@pytest.mark.integration
def test_two_worker_cluster_matches_single_process(synth_dir, pre_dir, tmp_path):
    cfg = PreprocessConfig(data=str(synth_dir), out=str(tmp_path / "pre"), device="cpu", workers=2)
    manifest = preprocess(cfg)
    assert manifest["dask"]["client"] is True
    assert len(manifest["dask"]["worker_peak_rss_mb"]) == 2 and min(manifest["dask"]["worker_peak_rss_mb"]) > 50
    for sub in ("retrieval/train", "retrieval/test"):
        single = _sorted(read_parquet_dir(pre_dir / sub))
        cluster = _sorted(read_parquet_dir(tmp_path / "pre" / sub))
        pd.testing.assert_frame_equal(single, cluster, check_exact=False, rtol=1e-5)
    for name in ("user_id", "item_id", "product_type_name"):
        a = pd.read_parquet(pre_dir / "workflow" / "categories" / f"unique.{name}.parquet")
        b = pd.read_parquet(tmp_path / "pre" / "workflow" / "categories" / f"unique.{name}.parquet")
        pd.testing.assert_frame_equal(a, b)
    for rel in ("catalogue/items.parquet", "catalogue/users.parquet", "features/items.parquet",
                "features/users.parquet", "splits/train.parquet", "splits/test.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(pre_dir / rel), pd.read_parquet(tmp_path / "pre" / rel), obj=rel)
    single = json.loads((pre_dir / "preprocess.json").read_text())
    assert {k: manifest[k] for k in ("rows", "users", "items")} == {k: single[k] for k in ("rows", "users", "items")}
    assert (tmp_path / "pre" / "splits" / "train.parquet").is_dir()  # written by the workers, a part each
    # the retriever's data, read from the split's parts, is the single process's
    from models.config import RetrievalConfig
    from models.retrieval import RetrievalData

    loaded = [RetrievalData.load(RetrievalConfig(pre=str(p), out=str(tmp_path / "unused"), windows_back=1))
              for p in (pre_dir, tmp_path / "pre")]
    try:
        a, b = loaded
        for name in ("item_counts", "valid_users"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
        pd.testing.assert_series_equal(a.truth, b.truth)
        pd.testing.assert_series_equal(a.seen, b.seen)
        rows = [pd.concat([pd.read_parquet(f) for f in d.fit_rows.files], ignore_index=True) for d in loaded]
        pd.testing.assert_frame_equal(*rows)
    finally:
        for d in loaded:
            d.close()


@pytest.mark.integration
def test_passes_on_two_workers_equal_the_passes_in_the_driver(tmp_path, monkeypatch):
    """The split written by the workers (a folder of parts) and the aggregates counted on them
    (several tasks, pair groups on disk, ids the tables lack), merged in the driver == the passes in
    the driver."""
    from distributed import Client, LocalCluster

    from workflows.passes import history_pass, split_files

    rng = np.random.default_rng(7)
    n = 6000
    frame = pd.DataFrame({
        "user_id": rng.choice([f"u{i:03d}" for i in range(400)], n),
        "item_id": rng.integers(0, 150, n),
        "timestamp": pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 40 * 86400, n), unit="s"),
        "price": rng.random(n).astype(np.float32),
        "channel": rng.integers(1, 3, n).astype(np.int8),
    })
    source = tmp_path / "interactions.parquet"
    frame.to_parquet(source, index=False, row_group_size=500)
    for name in ("splits", "splits_user_last", "spread", "spread_user_last"):
        (tmp_path / name).mkdir()
    splits = split_files(source, tmp_path / "splits", "time", 7, part_rows=300)
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(0, 400, 3)]})
    items = pd.DataFrame({"item_id": np.arange(0, 150, 2)})
    monkeypatch.setattr("workflows.passes.PAIRS_PER_GROUP", 1000)
    alone = history_pass(splits, users, items, ["channel"], tmp_path / "a", batch_rows=700)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        spread = history_pass(splits, users, items, ["channel"], tmp_path / "b", batch_rows=700, client=client)
        for how, suffix in (("time", ""), ("user-last", "_user_last")):
            single = splits if how == "time" else split_files(source, tmp_path / f"splits{suffix}", how, 7, 300)
            split = split_files(source, tmp_path / f"spread{suffix}", how, 7, 300, batch_rows=1100, client=client)
            assert split.train.is_dir() and len(list(split.train.glob("*.parquet"))) == 6  # 12 groups of 500, 2 a task
            assert (split.rows, split.cutoff, split.columns) == (single.rows, single.cutoff, single.columns)
            for name in ("train", "test"):
                pd.testing.assert_frame_equal(pd.read_parquet(getattr(split, name)), pd.read_parquet(getattr(single, name)))
        on_parts = history_pass(split, users, items, ["channel"], tmp_path / "c", batch_rows=700, client=client)
    pd.testing.assert_frame_equal(on_parts.users, history_pass(single, users, items, ["channel"], tmp_path / "d").users)
    assert spread.stats.buckets > 1 and not list((tmp_path / "b").iterdir())
    pd.testing.assert_frame_equal(alone.users, spread.users)
    pd.testing.assert_frame_equal(alone.items, spread.items)
    assert list(alone.stats.user_codes.extra) == list(spread.stats.user_codes.extra)
    assert list(alone.stats.item_codes.extra) == list(spread.stats.item_codes.extra)
    pd.testing.assert_series_equal(alone.context["channel"].sort_index(), spread.context["channel"].sort_index())
    np.testing.assert_array_equal(alone.context_seen["channel"], spread.context_seen["channel"])
    np.testing.assert_array_equal(alone.test_users, spread.test_users)
    np.testing.assert_array_equal(alone.test_items, spread.test_items)
    # and against plain pandas: the workers' counts are the purchases
    train = frame[frame["timestamp"] < splits.cutoff]
    got = spread.users.set_index("user_id")["user_n_purchases"].dropna()
    expected = train.groupby("user_id").size()
    assert got.to_dict() == expected[expected.index.isin(users["user_id"])].astype(np.float32).to_dict()


@pytest.mark.integration
def test_existing_scheduler_address(synth_dir, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, host="127.0.0.1") as cluster:
        cfg = PreprocessConfig(data=str(synth_dir), out=str(tmp_path / "pre"), device="cpu",
                               scheduler=cluster.scheduler_address)
        manifest = preprocess(cfg)
    assert manifest["dask"]["scheduler"].startswith("tcp://127.0.0.1")
    assert len(read_parquet_dir(tmp_path / "pre" / "retrieval" / "train")) == manifest["rows"]["train"]


@pytest.mark.integration
def test_unreachable_scheduler_is_a_clear_error(synth_dir, tmp_path, cli):
    code, _, err = cli("preprocess", synth_dir, "--out", tmp_path / "p", "--device", "cpu",
                       "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and "cannot connect" in err
    assert not (tmp_path / "p").exists()
