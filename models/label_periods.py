"""The ranker's label periods, and the retriever that proposes candidates for the earlier ones.

Window 0 is the retriever's own validation period: the served towers never saw it. The earlier
windows (``RankingConfig.label_windows``) multiply the ranker's positives, but the served towers
were trained on them, so their scores there would be look-ahead: candidates and two-tower scores
for those windows come from other retrievers, trained with the served one's settings on what came
before each window (``RankingConfig.earlier_retrievers`` "updated": the earliest window's in full,
each later one's updated from it; "each": all from scratch) or before the earliest ("one";
``RetrievalConfig.windows_back``), used only to build training rows.
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
from funnel.core.child import call_in_child
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


def train_earlier_retrievers(pre: Path, retrieval_manifest: dict[str, Any], windows_back: list[int],
                             scratch: Path, update_epochs: int = 0) -> list[tuple[Path, dict[str, Any]]]:
    """Train one retriever per value ``k`` of ``windows_back``, each with the served one's settings
    on the training split minus its last ``k + 1`` windows (the last epoch's weights kept; its recall
    on the earliest of them reported); return, for each, the folder its towers were saved in (under
    ``scratch``: the caller loads them with :meth:`Towers.load` and may remove them) and its figures.

    ``update_epochs`` 0: each from scratch for the served one's best epoch count. Else only the
    largest ``k`` (the earliest period's) trains that long; each smaller ``k`` in turn is the one
    before it trained ``update_epochs`` more epochs (weights and optimizer state kept) on its own,
    longer, rows: on MovieLens-100k three full trainings cost ~100 s, an update ~3 s an epoch.

    They train one after the other in a child process: what training leaves in a process
    (TensorFlow's allocations, the optimizer's slots, the loader's buffers: 2.8 GB at H&M size)
    leaves with the child instead of staying beside every label period's build; the child imports
    TensorFlow once for all of them (a process each cost MovieLens-100k ~5 s a retriever). On any
    failure or stop, the child is stopped and ``scratch`` removed; a child whose parent dies is
    killed by the kernel (Linux), so it never trains on for nobody.
    """
    import shutil

    try:
        figures = call_in_child("models.label_periods:_train_and_save_each",
                                (str(pre), retrieval_manifest, windows_back, str(scratch), update_epochs),
                                died="ranking: the process training the earlier label periods' retrievers died before "
                                     "it finished (out of memory? `--label-windows 1` needs no such retriever)",
                                name="funnel-earlier-retrievers")
    except BaseException:  # an error, or a stop (Ctrl-C, SIGTERM): the child has been stopped
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return [(scratch / f"windows_back_{k}", f) for k, f in zip(windows_back, figures)]


def _train_and_save_each(pre: str, retrieval_manifest: dict[str, Any], windows_back: list[int],
                         scratch: str, update_epochs: int = 0) -> list[dict[str, Any]]:
    """The child's part of :func:`train_earlier_retrievers`: each retriever in turn (the earliest
    first when later ones are updates of it), its memory returned to the system before the next
    unless the next goes on from it. Figures in ``windows_back``'s order."""
    import tensorflow as tf

    from funnel.core.memory import release_free_memory

    figures: dict[int, dict[str, Any]] = {}
    model, previous = None, None
    for k in sorted(windows_back, reverse=True) if update_epochs else windows_back:
        model, figures[k] = _train_and_save(pre, retrieval_manifest, k, str(Path(scratch) / f"windows_back_{k}"),
                                            model if update_epochs else None, update_epochs)
        if previous is not None and update_epochs:
            figures[k]["updated_from_windows_back"] = previous
        previous = k
        if not update_epochs:
            model = None
            tf.keras.backend.clear_session()
            release_free_memory()  # collects the model first
    return [figures[k] for k in windows_back]


def _train_and_save(pre: str, retrieval_manifest: dict[str, Any], windows_back: int, out: str,
                    model=None, update_epochs: int = 0) -> tuple[Any, dict[str, Any]]:
    """One retriever of :func:`train_earlier_retrievers`: train (``model``: go on from it for
    ``update_epochs``), save both towers in ``out``, return the model and its figures."""
    from models.retrieval import train_fixed_epochs  # the same layer; imported here to keep this module light

    names = {f.name for f in dataclasses.fields(RetrievalConfig)}
    config = {k: v for k, v in retrieval_manifest["config"].items() if k in names}
    # as many epochs as the served retriever's best, the last one's weights kept: the served towers are
    # refit the same way, and no epoch is chosen on the label period this retriever proposes candidates for
    epochs = max(1, int(retrieval_manifest.get("best_epoch") or config.get("epochs", 1)))
    if model is not None:
        epochs = update_epochs
    cfg = RetrievalConfig(**{**config, "pre": pre, "out": "", "windows_back": windows_back,
                             "epochs": epochs, "patience": epochs})
    model, figures = train_fixed_epochs(cfg, model)
    model.query_encoder.save(str(Path(out) / "query_tower"))
    model.candidate_encoder.save(str(Path(out) / "item_tower"))
    return model, {"windows_back": windows_back, **figures}
