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


@dataclass
class LabelPeriod:
    """One label window: what was bought in it, everything before it, and the time features are taken at."""

    label: pd.DataFrame  # raw (user_id, item_id, timestamp, ...) rows of the window
    before: pd.DataFrame  # the training split's rows outside this window and every later one
    cutoff: pd.Timestamp  # features and pair features describe ``before`` as of this time


def label_periods(raw: pd.DataFrame, split: str, valid_days: int, windows: int) -> list[LabelPeriod]:
    """The latest ``windows`` label periods of the training split ``raw`` (``workflows.splits.label_windows``),
    latest first, up to the first window without a row or without history before it."""
    window = label_windows(raw, split, valid_days, windows)
    out = []
    for k in range(windows):
        label, before = raw[window == k], raw[(window < 0) | (window > k)]
        if label.empty or before.empty:
            if k == 0:
                raise FunnelError("ranking: the training split has no label period (no validation rows)")
            break
        out.append(LabelPeriod(label, before, before["timestamp"].max() + pd.Timedelta(seconds=1)))
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
