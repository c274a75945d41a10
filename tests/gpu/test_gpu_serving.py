"""Serving on a CUDA host with NVIDIA's full Triton (TensorFlow backend): skipped where that cannot exist."""

import shutil

import numpy as np
import pytest

from ensemble.build import ExportConfig, export
from funnel.client import Client
from workflows.compute import gpu_count
from funnel.serving import TritonServer

pytestmark = pytest.mark.skipif(
    not (gpu_count() and shutil.which("tritonserver")),
    reason="needs an NVIDIA GPU and NVIDIA's tritonserver (with the TensorFlow backend) on PATH; this host has neither",
)


def test_tensorflow_backend_answers_like_the_python_runtime(ranker_run, pre_dir, tmp_path):
    import pandas as pd

    users = pd.read_parquet(pre_dir / "splits" / "train.parquet")["user_id"].astype(str).unique()[:20].tolist()
    answers = {}
    for runtime in ("python", "tensorflow"):
        repo = tmp_path / runtime
        export(ExportConfig(run=str(ranker_run), out=str(repo), tf_runtime=runtime))
        with TritonServer(repo, grpc_port=0, log_path=tmp_path / f"{runtime}.log") as srv, Client(srv.url) as c:
            answers[runtime] = c.infer(users + ["never-seen-user"], k=12)
    assert answers["python"]["item_ids"].tolist() == answers["tensorflow"]["item_ids"].tolist()
    np.testing.assert_allclose(answers["python"]["scores"], answers["tensorflow"]["scores"], atol=1e-4)
