"""Threads per serving process: one by default, so model instances and Triton's own threads share the cores.

A Triton model instance answers one batch at a time. Left to themselves, NumPy's OpenBLAS, Faiss's
OpenMP and TensorFlow each start a pool as wide as the host and spin between calls, and on a small
host those pools take the cores from each other, from Triton's request threads and from the other
instances: on the 2-core development host a 16-user call of the graph took 14.5 ms with the
default pools and 10.9 ms with one thread each (``bench/batching.py`` measures the served effect).
More throughput comes from more instances (``funnel export --instances N``), not wider pools.

``FUNNEL_THREADS`` sets the width (default 1); ``FUNNEL_FAISS_THREADS``, where set, overrides it for Faiss.
"""

from __future__ import annotations

import os

ENV = "FUNNEL_THREADS"
FAISS_ENV = "FUNNEL_FAISS_THREADS"


def thread_count(env: dict[str, str] | None = None) -> int:
    """The width ``FUNNEL_THREADS`` asks for (default 1); a clear error for anything but a positive integer."""
    value = (os.environ if env is None else env).get(ENV, "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV} must be a positive integer (got {value!r})")
    return n


def limit_threads(n: int | None = None) -> dict[str, int | str]:
    """Limit this process's BLAS/OpenMP pools, Faiss and TensorFlow to ``n`` threads; return what was set.

    TensorFlow takes its pool sizes only before it first runs an op: call this before loading a
    SavedModel. Where TensorFlow already ran, its pools stay as they are (reported as ``"unchanged"``).
    """
    import faiss
    import tensorflow as tf
    from threadpoolctl import threadpool_limits

    n = thread_count() if n is None else int(n)
    threadpool_limits(n)  # every BLAS and OpenMP library loaded in the process (NumPy's OpenBLAS, Faiss's OpenMP)
    faiss_threads = int(os.environ.get(FAISS_ENV, n))
    faiss.omp_set_num_threads(faiss_threads)
    tf_threads: int | str = n
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # TensorFlow's context already exists
        tf_threads = "unchanged"
    return {"blas_openmp": n, "faiss": faiss_threads, "tensorflow": tf_threads}
