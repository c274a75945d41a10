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

from funnel.core.errors import FunnelError
from models.config import RetrievalConfig
from models.tf_helpers import encode_rows, load_tower
from workflows.splits import label_windows


class LabelPeriod:
    """One label window: what was bought in it (``label``), everything before it (``before``) and the
    time its features are taken at (``cutoff``).

    The periods share one frame of the training split without the latest window, which is the
    latest period's ``before``; an earlier period takes its own rows from it when first asked and
    drops them at :meth:`release`. (Each period holding its own copy cost 1.2 GB a period at H&M
    size: 31M rows.)
    """

    def __init__(self, label: pd.DataFrame, rows: pd.DataFrame, keep: np.ndarray | None, cutoff: pd.Timestamp):
        self.label, self.cutoff = label, cutoff
        self._rows, self._keep = rows, keep  # keep: the rows of ``rows`` before this window (None: all)
        self._before: pd.DataFrame | None = None

    @property
    def before(self) -> pd.DataFrame:
        """The training split's rows outside this window and every later one."""
        if self._keep is None:
            return self._rows
        if self._before is None:
            self._before = self._rows[self._keep]
        return self._before

    def release(self) -> None:
        """Forget this period's own copy of ``before`` (taken again if asked for)."""
        self._before = None


def label_periods(raw: pd.DataFrame, split: str, valid_days: int, windows: int) -> list[LabelPeriod]:
    """The latest ``windows`` label periods of the training split ``raw`` (``workflows.splits.label_windows``),
    latest first, up to the first window without a row or without history before it."""
    window = label_windows(raw, split, valid_days, windows)
    rows = raw[window != 0]  # the latest period's history, and every earlier one's within it
    rest = window[window != 0]
    stamps = rows["timestamp"].to_numpy()
    out = []
    for k in range(windows):
        keep = None if k == 0 else (rest < 0) | (rest > k)
        label = raw[window == k]
        if label.empty or not (len(rows) if keep is None else keep.any()):
            if k == 0:
                raise FunnelError("ranking: the training split has no label period (no validation rows)")
            break
        latest = stamps.max() if keep is None else stamps[keep].max()
        out.append(LabelPeriod(label, rows, keep, pd.Timestamp(latest) + pd.Timedelta(seconds=1)))
    return out


@dataclass
class Towers:
    """A retriever's two towers (Keras models)."""

    query: Any
    item: Any

    @classmethod
    def load(cls, run: Path) -> "Towers":
        return cls(load_tower(run / "query_tower"), load_tower(run / "item_tower"))

    def encode(self, user_rows: pd.DataFrame, items: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors of encoded user rows and item vectors of the encoded item table."""
        vectors = encode_rows(self.item, items, schema.select_by_tag(Tags.ITEM))
        return encode_rows(self.query, user_rows, schema.select_by_tag(Tags.USER)), vectors


def train_earlier_retriever(pre: Path, retrieval_manifest: dict[str, Any], windows_back: int) -> tuple[Towers, dict[str, Any]]:
    """Train a retriever with the served one's settings and best epoch count on the training split
    minus its last ``windows_back + 1`` windows (validated on the earliest of them), in memory
    (nothing is written); return its towers and its figures."""
    from models.retrieval import train_in_memory  # the same layer; imported here to keep this module light

    names = {f.name for f in dataclasses.fields(RetrievalConfig)}
    config = {k: v for k, v in retrieval_manifest["config"].items() if k in names}
    # as many epochs as the served retriever's best: no patience epochs past it (this model is a means)
    epochs = max(1, int(retrieval_manifest.get("best_epoch") or config.get("epochs", 1)))
    cfg = RetrievalConfig(**{**config, "pre": str(pre), "out": "", "windows_back": windows_back,
                             "epochs": epochs, "patience": epochs})
    model, fit, rows = train_in_memory(cfg)
    key = f"valid_recall@{cfg.valid_k}"
    figures = {"windows_back": windows_back, "fit_rows": rows, "best_epoch": fit.best_epoch,
               "train_seconds": round(fit.seconds, 2), key: fit.best[key]}
    return Towers(model.query_encoder, model.candidate_encoder), figures
