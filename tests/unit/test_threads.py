"""Serving processes limit their thread pools (ensemble/threads.py), checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ensemble.threads import thread_count

PROBE = """
import json
import numpy  # OpenBLAS loaded before the limit, as in a Triton stub
from ensemble.threads import limit_threads
import faiss, tensorflow as tf
from threadpoolctl import threadpool_info
done = limit_threads()
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
faiss_threads = faiss.omp_get_max_threads()
tf.constant(1.0) + 1.0  # TensorFlow's context now exists: a second call cannot change it
again = limit_threads(3)
print(json.dumps({"done": done, "blas": blas, "faiss": faiss_threads,
                  "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads(), "again": again}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("FUNNEL_THREADS", "FUNNEL_FAISS_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_thread_per_pool_by_default():
    got = probe()
    assert got["done"] == {"blas_openmp": 1, "faiss": 1, "tensorflow": 1}
    assert got["blas"] and set(got["blas"]) == {1}  # NumPy's OpenBLAS, already loaded
    assert got["faiss"] == 1
    assert (got["intra"], got["inter"]) == (1, 1)
    # once TensorFlow has run, its pools stay and the call says so
    assert got["again"]["tensorflow"] == "unchanged" and got["again"]["faiss"] == 3


def test_width_from_the_environment():
    got = probe(FUNNEL_THREADS="2", FUNNEL_FAISS_THREADS="1")
    assert got["done"] == {"blas_openmp": 2, "faiss": 1, "tensorflow": 2}
    assert set(got["blas"]) == {2} and (got["intra"], got["inter"]) == (2, 2)


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_width_is_a_clear_error(value):
    with pytest.raises(ValueError, match="FUNNEL_THREADS must be a positive integer"):
        thread_count({"FUNNEL_THREADS": value})
    assert thread_count({}) == 1 and thread_count({"FUNNEL_THREADS": "4"}) == 4
