"""The ranker's label periods, and the retriever that proposes candidates for the earlier ones.

Window 0 is the retriever's own validation period: the served towers never saw it. The earlier
windows (``RankingConfig.label_windows``) multiply the ranker's positives, but the served towers
were trained on them, so their scores there would be look-ahead: candidates and two-tower scores
for those windows come from a second retriever, trained with the served one's settings on what
came before the earliest window (``RetrievalConfig.windows_back``), kept in memory and used only
to build training rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.schema import Schema, Tags

from funnel.core.artifacts import VALIDATED_TOWERS
from funnel.core.errors import FunnelError
from models.config import RetrievalConfig
from models.tf_helpers import encode_rows, load_tower
from workflows.splits import label_windows


class LabelPeriod:
    """One label window: what was bought in it (``label``), everything before it (``before``) and the
    time its features are taken at (``cutoff``).

    The periods share one frame of the training split without the latest window, ordered so that
    every period's ``before`` is a leading slice of it (``label_periods``): a view, no copy. (Each
    period taking its own copy cost 1.0-1.2 GB a period at H&M size: 31M rows.)
    """

    def __init__(self, label: pd.DataFrame, rows: pd.DataFrame, n_before: int, cutoff: pd.Timestamp):
        self.label, self.cutoff = label, cutoff
        self._rows, self._n = rows, n_before  # the first n_before rows of ``rows`` came before this window

    @property
    def before(self) -> pd.DataFrame:
        """The training split's rows outside this window and every later one (a slice of the shared frame)."""
        return self._rows if self._n == len(self._rows) else self._rows.iloc[: self._n]


def label_periods(raw: pd.DataFrame, split: str, valid_days: int, windows: int) -> list[LabelPeriod]:
    """The latest ``windows`` label periods of the training split ``raw`` (``workflows.splits.label_windows``),
    latest first, up to the first window without a row or without history before it.

    The shared frame holds ``raw``'s rows outside the latest window, the rows before every window
    first, then the earliest window's, ..., the second latest window's last; rows keep ``raw``'s
    order within each of those groups. Everything computed from a period's history depends on its
    rows, not their order (purchase recency breaks ties in row order, and rows with equal times
    share a window).
    """
    window = label_windows(raw, split, valid_days, windows)
    rest = window[window != 0]
    rank = np.where(rest < 0, np.iinfo(np.int64).max, rest)  # the earlier the window, the earlier its rows
    order = np.argsort(-rank, kind="stable")
    rows, rank = raw.take(np.flatnonzero(window != 0)[order]).reset_index(drop=True), rank[order]
    del order
    stamps = rows["timestamp"].to_numpy()
    out = []
    for k in range(windows):
        n_before = len(rows) if k == 0 else int((rank > k).sum())  # descending: the rows before window k lead
        label = raw[window == k]
        if label.empty or not n_before:
            if k == 0:
                raise FunnelError("ranking: the training split has no label period (no validation rows)")
            break
        out.append(LabelPeriod(label, rows, n_before, pd.Timestamp(stamps[:n_before].max()) + pd.Timedelta(seconds=1)))
    return out


@dataclass
class Towers:
    """A retriever's two towers (Keras models)."""

    query: Any
    item: Any

    @classmethod
    def load(cls, run: Path) -> "Towers":
        return cls(load_tower(run / "query_tower"), load_tower(run / "item_tower"))

    @classmethod
    def before_validation(cls, run: Path) -> "Towers":
        """A retrieval run's towers that never saw its validation period (the ranker's latest label
        period): the early-stopped ones where the served towers were refit, else the served ones."""
        validated = run / VALIDATED_TOWERS
        return cls.load(validated if validated.is_dir() else run)

    def encode(self, user_rows: pd.DataFrame, items: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors of encoded user rows and item vectors of the encoded item table."""
        vectors = encode_rows(self.item, items, schema.select_by_tag(Tags.ITEM))
        return encode_rows(self.query, user_rows, schema.select_by_tag(Tags.USER)), vectors


def train_earlier_retriever(pre: Path, retrieval_manifest: dict[str, Any], windows_back: int,
                            scratch: Path) -> tuple[Towers, dict[str, Any]]:
    """Train a retriever with the served one's settings and best epoch count on the training split
    minus its last ``windows_back + 1`` windows (validated on the earliest of them); return its towers
    and its figures.

    It trains in a child process, which saves the towers in ``scratch`` (removed once they are
    loaded back): what training leaves in a process (TensorFlow's allocations, the optimizer's
    slots, the loader's buffers: 2.8 GB at H&M size) leaves with the child instead of staying
    beside every label period's build.
    """
    import multiprocessing
    import shutil
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            figures = pool.submit(_train_and_save, str(pre), retrieval_manifest, windows_back, str(scratch)).result()
    except BrokenProcessPool as exc:  # killed (out of memory, a signal) before it could answer
        shutil.rmtree(scratch, ignore_errors=True)
        raise FunnelError("ranking: the process training the earlier label periods' retriever died before it "
                          "finished (out of memory? `--label-windows 1` needs no such retriever)") from exc
    try:
        return Towers.load(scratch), figures
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_and_save(pre: str, retrieval_manifest: dict[str, Any], windows_back: int, out: str) -> dict[str, Any]:
    """The child's part of :func:`train_earlier_retriever`: train, save both towers in ``out``, return the figures."""
    from models.retrieval import train_in_memory  # the same layer; imported here to keep this module light

    names = {f.name for f in dataclasses.fields(RetrievalConfig)}
    config = {k: v for k, v in retrieval_manifest["config"].items() if k in names}
    # as many epochs as the served retriever's best: no patience epochs past it (this model is a means)
    epochs = max(1, int(retrieval_manifest.get("best_epoch") or config.get("epochs", 1)))
    cfg = RetrievalConfig(**{**config, "pre": pre, "out": "", "windows_back": windows_back,
                             "epochs": epochs, "patience": epochs})
    model, fit, rows = train_in_memory(cfg)
    model.query_encoder.save(str(Path(out) / "query_tower"))
    model.candidate_encoder.save(str(Path(out) / "item_tower"))
    key = f"valid_recall@{cfg.valid_k}"
    return {"windows_back": windows_back, "fit_rows": rows, "best_epoch": fit.best_epoch,
            "train_seconds": round(fit.seconds, 2), key: fit.best[key]}
