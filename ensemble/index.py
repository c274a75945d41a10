"""Faiss index over item embeddings, chosen by catalogue size and checked against exact search."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from funnel.core.topk import dot_top_k

FLAT_MAX = 20_000  # exact search is fast enough up to here
IVF_MAX = 2_000_000  # beyond this, HNSW (IVF's coarse search stops paying off)
TARGET_RECALL = 0.95


def choose_kind(n_items: int) -> str:
    """'flat' for small catalogues, 'ivf' for medium, 'hnsw' for large."""
    if n_items <= FLAT_MAX:
        return "flat"
    return "ivf" if n_items <= IVF_MAX else "hnsw"


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k that the index also returned (-1 padding counts as a miss)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / max(exact.size, 1)


def set_search_param(index, name: str | None, value: int | None) -> None:
    if name:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def build_index(vectors: np.ndarray, queries: np.ndarray, k: int, kind: str = "auto",
                seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build an inner-product index over ``vectors``; tune its search breadth on ``queries``.

    IVF's ``nprobe`` / HNSW's ``efSearch`` double until recall@k against exact search reaches
    95% (or the maximum). Returns the index and a description for the export manifest.
    """

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = vectors.shape
    kind = choose_kind(n) if kind == "auto" else kind
    k = min(k, n)
    t0 = time.perf_counter()
    param, values = None, [None]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = vectors if n <= 64 * nlist else vectors[rng.choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        param, values = "nprobe", [v for v in (8, 16, 32, 64, 128, 256, 512) if v < nlist] + [nlist]
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        param, values = "efSearch", [max(64, k), 128, 256, 512, 1024]
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw or auto)")
    index.add(vectors)
    build_seconds = time.perf_counter() - t0
    exact = dot_top_k(queries, vectors, k)
    recall, chosen = 0.0, None
    for value in values:
        if value is not None and param == "efSearch" and value < k:
            continue
        set_search_param(index, param, value)
        _, found = index.search(queries, k)
        recall, chosen = recall_vs_exact(found, exact), value
        if recall >= TARGET_RECALL:
            break
    info = {"kind": str(kind), "items": int(n), "dim": int(dim), "search_param": param, "search_value": chosen,
            f"recall@{k}_vs_exact": round(float(recall), 4), "recall_queries": int(len(queries)),
            "build_seconds": round(build_seconds, 3)}
    return index, info


def save_index(index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path, info: dict[str, Any], use_gpu: bool | None = None):
    """Read an index, restore its tuned search breadth, move it to the GPU when faiss-gpu is present."""
    index = faiss.read_index(str(path))
    set_search_param(index, info.get("search_param"), info.get("search_value"))
    if use_gpu is None:
        use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
