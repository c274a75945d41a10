"""The exported ensemble in-process: what the Triton model runs, and the reference for parity tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from merlin.dag import postorder_iter_nodes
from merlin.dag.runtime import Runtime
from merlin.systems.dag.ensemble import Ensemble
from merlin.table import TensorTable

from funnel.core.artifacts import EXPORT_MANIFEST
from funnel.core.errors import FunnelError
from funnel.core.signing import verify_files

MAX_EXCLUDE = 10_000
OUTPUTS = ("item_ids", "scores", "sources")
CANDIDATE_OUTPUTS = ("candidate_ids", "candidate_sources", "candidate_scores", "candidate_tiers", "propensities")


class RequestError(ValueError):
    """A malformed request: answered with a clear error, the server stays up."""


class Recommender:
    """Load an export's ensemble directory and answer batches of users.

    The pickled graph (``ensemble.pkl``) is unpickled only if its HMAC under this host's signing
    key (``funnel.core.signing``, kept outside the repository) matches the export manifest: a
    checksum alone would not stop a replaced pickle that comes with its own checksum.
    """

    def __init__(self, ensemble_dir: str | Path):
        self.path = Path(ensemble_dir)
        manifest_path = self.path / EXPORT_MANIFEST
        if not manifest_path.exists():
            raise FunnelError(f"{self.path}: not a funnel ensemble (no export.json)")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        verify_files([self.path / "ensemble.pkl"], self.manifest.get("ensemble_signature"),
                     str(self.path / "ensemble.pkl"))
        self.ensemble = Ensemble.load(str(self.path))
        for node in postorder_iter_nodes(self.ensemble.graph.output_node):
            node.op.load_artifacts(str(self.path))
        limits = self.manifest["limits"]
        self.k, self.max_k, self.max_batch = limits["k"], limits["max_k"], limits["max_batch"]
        self._runtime = Runtime()

    def request_table(self, user_ids, k: int | None = None, exclude_items=None, temperature: float = 0.0,
                      seed: int = -1):
        """Validate one request and broadcast its request-level values to every user."""
        users = np.asarray(user_ids, dtype=object).reshape(-1) if not isinstance(user_ids, np.ndarray) else user_ids
        if users.ndim != 1:
            raise RequestError(f"user_id must be a 1-D list of ids (got shape {tuple(users.shape)})")
        if not 1 <= len(users) <= self.max_batch:
            raise RequestError(f"user_id: between 1 and {self.max_batch} users per request (got {len(users)})")
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.max_k:
            raise RequestError(f"k must be between 1 and {self.max_k} (got {k})")
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature < 0:
            raise RequestError(f"temperature must be finite and >= 0 (got {temperature})")
        exclude = np.asarray([] if exclude_items is None else exclude_items, dtype=object).reshape(-1)
        if len(exclude) > MAX_EXCLUDE:
            raise RequestError(f"exclude_items: at most {MAX_EXCLUDE} ids (got {len(exclude)})")
        _check_text(users, "user_id")
        _check_text(exclude, "exclude_items")
        n = len(users)
        return TensorTable({
            "user_id": users.astype(object),
            "k": np.full(n, k, dtype=np.int32),
            "exclude_items": np.tile(exclude, (n, 1)) if len(exclude) else np.empty((n, 0), dtype=object),
            "temperature": np.full(n, temperature, dtype=np.float32),
            "seed": np.full(n, int(seed), dtype=np.int64),
        })

    def run(self, table, with_candidates: bool = False) -> dict[str, np.ndarray]:
        out = self._runtime.transform(self.ensemble.graph, table)
        names = OUTPUTS + (CANDIDATE_OUTPUTS if with_candidates else ())
        present = set(out.columns)  # exports made before an output existed lack it
        return {name: out[name].values for name in names if name in present}

    def recommend(self, user_ids, k: int | None = None, exclude_items=None, temperature: float = 0.0,
                  seed: int = -1, with_candidates: bool = False) -> dict[str, np.ndarray]:
        """``item_ids`` (bytes), ``scores``, ``sources`` (bytes): arrays of shape (users, k).

        ``with_candidates`` adds every ranked candidate (``candidate_ids``, ``candidate_sources``,
        ``candidate_scores``, ``candidate_tiers``) and the shown items' ``propensities``, as the
        served-prediction log records them.
        """
        return self.run(self.request_table(user_ids, k, exclude_items, temperature, seed), with_candidates)


def _check_text(values: np.ndarray, name: str) -> None:
    """Ids arrive as bytes over gRPC: each must be UTF-8 text (a request error names the first that is not)."""
    for row, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"{name}: entry {row} is not valid UTF-8 text ({value[:20]!r})") from None
