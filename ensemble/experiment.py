"""Serving an A/B experiment from one Triton model: each user's variant by a salted hash, each
variant's own exported graph, one merged answer with a ``variant`` per user.

``funnel serve REPO --variant NAME=REPO2 --traffic control=0.5 NAME=0.5 --experiment E`` passes
the plan to the model in ``FUNNEL_EXPERIMENT`` (JSON); without it every user is served by the
repository's own graph and ``variant`` is empty.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.runtime import Recommender
from funnel.core.assignment import assign, parse_traffic
from funnel.core.errors import FunnelError

ENV = "FUNNEL_EXPERIMENT"


def plan(experiment: str, traffic: dict[str, float], variants: dict[str, str]) -> str:
    """The JSON the model reads: experiment name, traffic shares, each variant's ensemble directory."""
    traffic = parse_traffic(traffic)
    if set(traffic) != set(variants):
        raise FunnelError(f"traffic names ({', '.join(traffic)}) must be the variants "
                          f"({', '.join(variants)}): one share per variant")
    if not experiment or not experiment.strip():
        raise FunnelError("--experiment needs a name (it salts the assignment)")
    return json.dumps({"experiment": experiment, "traffic": traffic,
                       "variants": {n: str(Path(p).resolve()) for n, p in variants.items()}})


class Experiment:
    """Several variants' Recommenders behind one ``recommend`` call."""

    def __init__(self, spec: str | dict[str, Any], loaded: dict[str, Recommender] | None = None):
        """``loaded``: Recommenders already in memory by resolved ensemble directory (not loaded twice)."""
        spec = json.loads(spec) if isinstance(spec, str) else spec
        self.name: str = spec["experiment"]
        self.traffic = parse_traffic(spec["traffic"])
        loaded = loaded or {}
        self.recommenders = {n: loaded.get(str(Path(p).resolve())) or Recommender(p)
                             for n, p in spec["variants"].items()}
        first = next(iter(self.recommenders.values()))
        self.k = first.k
        self.max_batch = min(r.max_batch for r in self.recommenders.values())

    def recommend(self, user_ids, k: int | None = None, exclude_items=None, temperature: float = 0.0,
                  seed: int = -1, with_candidates: bool = False) -> dict[str, np.ndarray]:
        users = np.asarray(user_ids, dtype=object).reshape(-1)
        variants = assign(self.name, users, self.traffic)
        k = self.k if k is None else k
        parts = {}
        latency = np.zeros(len(users))
        for name, rec in self.recommenders.items():
            rows = np.flatnonzero(variants == name)
            if len(rows):
                started = time.perf_counter()
                parts[name] = (rows, rec.recommend(users[rows], k, exclude_items, temperature, seed, with_candidates))
                latency[rows] = (time.perf_counter() - started) * 1000.0
        out = merge([p for p in parts.values()], len(users))
        out["variant"] = variants.astype(bytes)
        out["latency_ms"] = latency  # each variant's own time on this request (the log's latency guardrail)
        return out


def merge(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    """Stack per-variant outputs back into request order; lists of different widths are padded
    (empty ids, NaN scores), as the graph pads short lists."""
    out: dict[str, np.ndarray] = {}
    for key in parts[0][1]:
        width = max(p[1][key].shape[1] for p in parts)
        sample = parts[0][1][key]
        fill = np.nan if sample.dtype.kind == "f" else b""
        merged = np.full((n, width), fill, dtype=sample.dtype if sample.dtype.kind == "f" else object)
        for rows, values in parts:
            merged[rows, : values[key].shape[1]] = values[key]
        out[key] = merged
    return out
