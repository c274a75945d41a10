"""The one training loop both models use: an epoch at a time, validated, best weights kept.

Keras owns the epochs (one ``model.fit`` through :func:`models.distribute.fit_epochs`); after each,
a validation function returns the figures of that epoch, the best epoch by ``key`` is kept,
and training stops after ``patience`` epochs without a gain. :func:`run_manifest` writes the
fields every run manifest shares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from funnel.core.config import as_dict
from funnel.core.versions import package_versions
from models import distribute


@dataclass
class FitResult:
    """What the loop did: one record per epoch, the best epoch and its figures, the time spent."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    rows: int = 0  # training rows per epoch

    @property
    def samples_per_s(self) -> int:
        spent = sum(h["seconds"] for h in self.history)
        return round(self.rows * len(self.history) / spent) if spent else 0


def fit_best(model, dataset, rows: int, epochs: int, batch_size: int, strategy,
             validate: Callable[[], dict[str, float]], key: str, patience: int | None = None,
             on_epoch: Callable[[dict], None] | None = None,
             on_rows: Callable[[int, int, int], None] | None = None) -> FitResult:
    """Train up to ``epochs`` epochs; keep the weights of the epoch with the highest ``validate()[key]``.

    ``rows`` is the number of training rows (for samples/s); ``patience`` None trains every epoch;
    ``on_rows(epoch, rows_done, rows)`` hears about progress within an epoch (about once a second).
    """
    result = FitResult(rows=rows)
    state = {"best": float("-inf"), "weights": None, "waited": 0}
    start = time.perf_counter()

    def after_epoch(epoch: int, loss: float, seconds: float) -> bool:
        figures = validate()
        record = {"epoch": epoch, "loss": loss, **figures, "seconds": round(seconds, 2),
                  "samples_per_s": round(rows / seconds) if seconds > 0 else 0}
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        if figures[key] > state["best"]:
            state.update(best=figures[key], weights=model.get_weights(), waited=0)
            result.best_epoch, result.best = epoch, figures
            return False
        state["waited"] += 1
        return patience is not None and state["waited"] >= patience

    on_batch = None if on_rows is None else (
        lambda epoch, steps: on_rows(epoch, min(steps * batch_size * distribute.replicas(strategy), rows), rows))
    distribute.fit_epochs(model, dataset, batch_size, strategy, epochs, after_epoch, on_batch)
    best_weights = state["weights"]
    model.set_weights(best_weights)
    result.seconds = time.perf_counter() - start
    return result


def fit_fixed(model, dataset, rows: int, epochs: int, batch_size: int, strategy,
              on_epoch: Callable[[dict], None] | None = None,
              on_rows: Callable[[int, int, int], None] | None = None,
              tag: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train exactly ``epochs`` epochs and keep the last one's weights (no validation: the count was
    chosen elsewhere). Returns one record per epoch (``tag``'s fields first, then epoch, loss, time);
    ``on_epoch`` and ``on_rows`` as in :func:`fit_best`."""
    history: list[dict[str, Any]] = []

    def after_epoch(epoch: int, loss: float, seconds: float) -> bool:
        record = {**(tag or {}), "epoch": epoch, "loss": loss, "seconds": round(seconds, 2),
                  "samples_per_s": round(rows / seconds) if seconds > 0 else 0}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        return False

    on_batch = None if on_rows is None else (
        lambda epoch, steps: on_rows(epoch, min(steps * batch_size * distribute.replicas(strategy), rows), rows))
    distribute.fit_epochs(model, dataset, batch_size, strategy, epochs, after_epoch, on_batch)
    return history


def run_manifest(stage: str, cfg, data: dict[str, Any], device: str, strategy, fit: FitResult,
                 metrics: dict[str, Any]) -> dict[str, Any]:
    """The fields every run manifest (retrieval.json, ranking.json) shares."""
    return {
        "stage": stage,
        "config": as_dict(cfg),
        "data": data,
        "versions": package_versions(),
        "device": device,
        "replicas": distribute.replicas(strategy),
        "precision": str(cfg.precision),
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch,
        "train_seconds": round(fit.seconds, 2),
        "samples_per_s": fit.samples_per_s,
        "history": fit.history,
        "metrics": metrics,
    }
