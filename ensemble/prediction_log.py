"""Served-prediction logging: a sampled record per served user, written asynchronously as parquet.

Records are queued by the serving thread (a cheap append) and written by a background thread
every ``flush_records`` records or ``flush_seconds`` seconds into hive-partitioned parquet:
``LOG_DIR/date=YYYY-MM-DD/part-<pid>-<n>.parquet``. Each file is written under a temporary name
and renamed, so readers never see half a file. The queue is bounded (``max_buffer`` records):
when the writer falls behind, new records are dropped and counted (``dropped``), never blocking
a request. ``close()`` (Triton's ``finalize``: a clean shutdown, SIGTERM or SIGINT of the server)
flushes everything; a hard crash (``kill -9``, power loss) loses at most the unflushed buffer:
``flush_seconds`` (1 s by default) of sampled traffic, or ``flush_records`` records if fewer.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

SCHEMA_FIELDS = ("request_id", "time", "model_version", "experiment", "variant", "user_id", "items", "scores",
                 "propensities", "sources", "candidates", "candidate_sources", "candidate_scores", "candidate_tiers",
                 "temperature", "latency_ms")


class PredictionLogger:
    """Sample and write served predictions; thread-safe ``log_batch`` from the serving path."""

    def __init__(self, log_dir: str | Path, sample: float = 0.05, model_version: str = "",
                 flush_records: int = 1000, flush_seconds: float = 1.0, max_buffer: int = 100_000, seed: int | None = None):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"log sample rate must be within [0, 1] (got {sample})")
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sample, self.model_version = float(sample), model_version
        self.flush_records, self.flush_seconds = int(flush_records), float(flush_seconds)
        self.logged = self.dropped = self.files = 0
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=max_buffer)
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="funnel-prediction-log", daemon=True)
        self._writer.start()

    def log_batch(self, request_id: str, user_ids: np.ndarray, out: dict[str, np.ndarray], experiment: str = "",
                  temperature: float = 0.0, latency_ms: float | None = None) -> int:
        """Queue the sampled users of one answered request; returns how many were queued.

        ``propensities``: each shown item's probability of being drawn at its position given the
        items above it (Plackett-Luce for a sampled answer, 1.0 for a deterministic one); the
        list's probability is their product. ``candidate_scores`` and ``candidate_tiers`` are
        aligned with ``candidates`` (NaN: a candidate that could not be drawn) and, with the
        request's ``temperature``, define the whole draw (``funnel.ope`` recomputes the chance
        of any item landing in the list from them). ``latency_ms``: the time the server spent
        answering (``out["latency_ms"]`` per user where an experiment timed each variant's part,
        else the request's), for latency guardrails per variant.
        """
        if self.sample <= 0:
            return 0
        keep = np.flatnonzero(self._rng.random(len(user_ids)) < self.sample) if self.sample < 1 else range(len(user_ids))
        now = time.time()
        queued = 0
        for row in keep:
            record = {
                "request_id": request_id, "time": now, "model_version": self.model_version,
                "experiment": experiment, "variant": _text(out["variant"][row]) if "variant" in out else "",
                "user_id": _text(user_ids[row]),
                "items": [_text(v) for v in out["item_ids"][row] if v],
                "scores": [float(s) for s in out["scores"][row] if not np.isnan(s)],
                "propensities": _propensities(out, row, temperature <= 0),
                "sources": [_text(v) for v in out["sources"][row] if v],
                "candidates": [_text(v) for v in out["candidate_ids"][row] if v],
                "candidate_sources": [_text(v) for v in out["candidate_sources"][row] if v],
                "candidate_scores": _aligned(out, "candidate_scores", row),
                "candidate_tiers": _aligned(out, "candidate_tiers", row),
                "temperature": float(temperature),
                "latency_ms": float(out["latency_ms"][row]) if "latency_ms" in out else (
                    None if latency_ms is None else float(latency_ms)),
            }
            try:
                self._queue.put_nowait(record)
                queued += 1
            except queue.Full:
                self.dropped += 1
        return queued

    def _run(self) -> None:
        buffer: list[dict[str, Any]] = []
        last = time.monotonic()
        while True:
            try:
                buffer.append(self._queue.get(timeout=0.2))
            except queue.Empty:
                pass
            due = len(buffer) >= self.flush_records or (buffer and time.monotonic() - last >= self.flush_seconds)
            stopping = self._stop.is_set() and self._queue.empty()
            if due or (stopping and buffer):
                self._write(buffer)
                buffer, last = [], time.monotonic()
            if stopping:
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime(records[0]["time"]))
        folder = self.dir / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{self.files:06d}.parquet"
        table = pa.Table.from_pylist(records)
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
        self.files += 1
        self.logged += len(records)

    def close(self, timeout: float = 30.0) -> None:
        """Flush every queued record and stop the writer."""
        self._stop.set()
        self._writer.join(timeout)


def _propensities(out: dict[str, np.ndarray], row: int, deterministic: bool) -> list[float]:
    shown = [bool(v) for v in out["item_ids"][row]]
    if "propensities" not in out:
        return [1.0] * sum(shown) if deterministic else []
    return [float(p) for p, keep in zip(out["propensities"][row], shown) if keep]


def _aligned(out: dict[str, np.ndarray], name: str, row: int) -> list[float]:
    """One float per logged candidate (NaN kept, padding dropped); empty when the export lacks the output."""
    if name not in out:
        return []
    return [float(v) for v, c in zip(out[name][row], out["candidate_ids"][row]) if c]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_logs(log_dir: str | Path):
    """All logged records as a pandas frame (empty when there are none)."""
    path = Path(log_dir)
    if not path.exists() or not any(path.rglob("*.parquet")):
        return pd.DataFrame(columns=list(SCHEMA_FIELDS))
    return ds.dataset(str(path), format="parquet", partitioning="hive",
                      exclude_invalid_files=True).to_table().to_pandas()
