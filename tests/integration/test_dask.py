"""NVTabular on a real 2-worker Dask LocalCluster gives the same output as one process."""

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
    for sub in ("retrieval/train", "retrieval/test"):
        single = _sorted(read_parquet_dir(pre_dir / sub))
        cluster = _sorted(read_parquet_dir(tmp_path / "pre" / sub))
        pd.testing.assert_frame_equal(single, cluster, check_exact=False, rtol=1e-5)
    for name in ("user_id", "item_id", "product_type_name"):
        a = pd.read_parquet(pre_dir / "workflow" / "categories" / f"unique.{name}.parquet")
        b = pd.read_parquet(tmp_path / "pre" / "workflow" / "categories" / f"unique.{name}.parquet")
        pd.testing.assert_frame_equal(a, b)
    for name in ("items", "users"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(pre_dir / "catalogue" / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "pre" / "catalogue" / f"{name}.parquet"),
        )


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
