"""The cuDF path: skipped on hosts without an NVIDIA GPU and cuDF (the CPU path is tested everywhere)."""

import importlib.util

import pandas as pd
import pytest

from workflows.compute import gpu_count
from workflows.io import read_parquet_dir
from workflows.preprocess import PreprocessConfig, preprocess

pytestmark = pytest.mark.skipif(
    not (gpu_count() and importlib.util.find_spec("cudf")),
    reason="needs an NVIDIA GPU and cuDF (pip install -e '.[gpu]'); this host has none",
)


def test_gpu_matches_cpu(synth_dir, pre_dir, tmp_path):
    manifest = preprocess(PreprocessConfig(data=str(synth_dir), out=str(tmp_path / "pre"), device="gpu"))
    assert manifest["device"] == "gpu"
    for sub in ("retrieval/train", "retrieval/test"):
        cpu = read_parquet_dir(pre_dir / sub)
        gpu = read_parquet_dir(tmp_path / "pre" / sub)
        key = list(cpu.columns)
        pd.testing.assert_frame_equal(cpu.sort_values(key).reset_index(drop=True),
                                      gpu.sort_values(key).reset_index(drop=True), check_dtype=False, rtol=1e-4)


def test_auto_picks_gpu():
    from workflows.compute import resolve_device

    assert resolve_device("auto") == "gpu"
