"""DLRM ranker (merlin-models ``DLRMModel``) trained on the candidates that matter.

The data (labelled retriever candidates from several label periods, features as of each period's
start) comes from :mod:`models.ranking_data`; the epoch with the best Recall@k of held-out users'
full candidate lists (one list per user and period) is kept. Its logit then joins the blend of the sources' scores (:mod:`models.sources`)
with the share that orders those users' candidates best, and ``use_ranker`` records whether
that order beats, on other held-out users, the order serving uses without it (the blend alone).
Serving is a cascade: the ranker scores each user's ``shortlist`` best candidates by the sources'
blend, and every choice above is made on that cascade.

Run directory additions::

    RUN/ranker/        SavedModel (DLRM)
    RUN/item_item.npz  the item-item source's EASE weights (workflows.item_item), fitted on all of train
    RUN/ranking.json   manifest: config, data, versions, device, epochs, AUC / log loss
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.io import Dataset

from funnel.core.artifacts import RANKING_MANIFEST, read_retrieval_manifest, write_manifest
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir
from funnel.core.memory import release_free_memory
from funnel.core.metrics import recalls_at_k
from models import distribute, optimizers
from models.config import RankingConfig
from models.fit import fit_best, run_manifest
from models.ranking_data import RankingData
from models.ranking_rows import rank_candidates
from models.sources import blend_order, tune_ranker_share
from workflows.candidates import BLEND_SCORES, RANKER_SCORE, logit
from models.tf_helpers import configure_tensorflow, precision
from workflows import TARGET
from workflows.codes import row_chunks
from workflows.item_item import ItemItem
from workflows.purchases import PurchaseHistory


def score_pairs(ranker, rows: pd.DataFrame | list[Path], schema, batch_size: int = 8192,
                chunk_batches: int = 32) -> np.ndarray:
    """Ranker probabilities for model rows (a frame or parquet files), in order; ``chunk_batches``
    batches at a time go through the Loader (at H&M size the held-out users' lists are millions of
    rows: a whole copy cost a GB)."""
    inputs = schema.excluding_by_name([TARGET])
    parts = []
    for chunk in row_chunks(rows, inputs.column_names, batch_size * chunk_batches):
        ds = Dataset(chunk, schema=inputs, cpu=True)
        parts += [np.asarray(ranker(batch, training=False)).reshape(-1) for batch, _ in mm.Loader(ds, batch_size, shuffle=False)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def auc_logloss(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC (rank formula, ties averaged) and mean log loss."""
    labels = labels.astype(bool)
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    auc = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else float("nan")
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    logloss = float(-np.mean(labels * np.log(p) + (~labels) * np.log(1 - p)))
    return {"auc": float(auc), "logloss": logloss}


def build_model(cfg: RankingConfig, data: RankingData, strategy):
    """The DLRM, compiled; its sigmoid output stays float32 under a mixed policy."""
    with distribute.scope(strategy), precision(cfg.precision):
        model = mm.DLRMModel(
            data.schema, embedding_dim=cfg.embedding_dim, bottom_block=mm.MLPBlock([cfg.embedding_dim]),
            top_block=mm.MLPBlock(cfg.top_dims), prediction_tasks=mm.BinaryOutput(
                TARGET, to_call=tf.keras.layers.Dense(1, activation="sigmoid", dtype="float32")),
        )
        # no train-time metrics: held-out AUC and list recall are computed per epoch
        model.compile(optimizer=optimizers.make_optimizer(cfg.optimizer, cfg.learning_rate, data.schema), metrics=[])
    distribute.prepare(model, strategy)
    return model


def per_user_recall(data: RankingData, k: int, gate: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Recall@k of each list (a held-out user in one label period) of one half of the held-out users
    (the gate's, or the epoch choice's) when their candidates are ordered by the given scores (one
    score per row of ``data.valid_cands``), in ``data.valid_truth`` order."""
    mine = data.valid_cands["user_id"].isin(data.gate_lists).to_numpy() == gate
    cands = data.valid_cands[mine]
    truth = data.valid_truth[data.valid_truth.index.isin(data.gate_lists) == gate]

    def recall(scores: np.ndarray) -> np.ndarray:
        top = rank_candidates(scores[mine], cands, k).reindex(truth.index)
        return recalls_at_k([t if isinstance(t, list) else [] for t in top], list(truth), k)

    return recall


def list_recall(data: RankingData, k: int, gate: bool) -> Callable[[np.ndarray], float]:
    """Mean of :func:`per_user_recall` (0 when the half has no user)."""
    per_user = per_user_recall(data, k, gate)
    return lambda scores: float(np.mean(per_user(scores))) if len(data.valid_truth) else 0.0


def gate_decision(ranker: np.ndarray, retrieval: np.ndarray, seed: int, clusters: np.ndarray | None = None,
                  resamples: int = 2000) -> dict[str, float]:
    """Is the ranker's per-list recall gain over the retrieval order positive with 95% confidence?

    A paired bootstrap: ``lift`` is the mean gain over the gate's lists, ``ci95`` its 2.5%-97.5%
    interval; ``clusters`` (one code per list: its user) resamples users with all their lists, since
    one user's lists in several label periods are not independent. The ranker is used only when the
    interval's lower end is above 0, so a small gate (a few dozen users on MovieLens-100k) does not
    switch on a ranker by chance.
    """
    gain = ranker - retrieval
    codes = np.arange(len(gain)) if clusters is None else pd.factorize(np.asarray(clusters))[0]
    n = int(codes.max()) + 1 if len(codes) else 0
    if n < 2:
        return {"lift": float(gain.mean()) if len(gain) else 0.0, "ci95": [0.0, 0.0], "use": False}
    sums, counts = np.bincount(codes, gain, minlength=n), np.bincount(codes, minlength=n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"lift": float(gain.mean()), "ci95": [float(low), float(high)], "use": bool(low > 0)}


def gate_verdict(overall: dict[str, Any], latest: dict[str, Any], ranker_share: float) -> tuple[bool, str]:
    """Whether serving uses the ranker, and why (or why not), from :func:`gate_decision` over every
    label period's gate lists (``overall``) and over the latest period's alone (``latest``).

    The earlier periods add gate lists, but their candidates come from a retriever trained before them
    and the blend without the ranker was tuned on the latest period, so a ranker can win there and lose
    where serving runs (MovieLens-100k with 10 label periods: +0.045 [+0.025, +0.066] overall, -0.013 in
    the latest period, and a served Recall@10 of 0.1250 with it against 0.1322 without). So the ranker
    also has to gain in the latest period (its lift above 0; its own interval is too wide on small data
    to demand confidence there), and its tuned share of the blend must be above 0.
    """
    if not overall["use"]:
        return False, "no confident gain over the blend order"
    if latest["lift"] <= 0:
        return False, f"no gain in the latest label period ({latest['lift']:+.4f}), where serving's candidates come from"
    if ranker_share <= 0:
        return False, "its tuned share of the blend is 0"
    return True, "confident gain over the blend order"


def validation(cfg: RankingConfig, data: RankingData, model) -> Callable[[], dict[str, float]]:
    """Per epoch: AUC and log loss of every held-out row, Recall@k of the epoch-choice half."""
    recall = list_recall(data, cfg.valid_k, gate=False)

    def validate() -> dict[str, float]:
        figures = auc_logloss(data.valid_rows[TARGET].to_numpy(), score_pairs(model, data.valid_rows, data.schema))
        return {"valid_auc": figures["auc"], "valid_logloss": figures["logloss"],
                f"valid_recall@{cfg.valid_k}": recall(score_pairs(model, data.valid_full, data.schema))}

    return validate


def fit_item_item(cfg: RankingConfig, tuned: dict[str, Any]) -> ItemItem:
    """EASE with the tuned lambda and "bought next" weight on all of train as of the cutoff, scoring with the
    tuned recency: what serving scores."""
    pre = Path(cfg.pre)
    raw = pd.read_parquet(pre / "splits" / "train.parquet", columns=["user_id", "item_id", "timestamp"])
    users = pd.Index(pd.read_parquet(pre / "catalogue" / "users.parquet", columns=["user_id_raw"])["user_id_raw"])
    items = pd.Index(pd.read_parquet(pre / "catalogue" / "items.parquet", columns=["item_id_raw"])["item_id_raw"])
    history = PurchaseHistory.build(raw, users, items, raw["timestamp"].max())
    return ItemItem.fit(history, tuned["lambda"], cfg.item_item_neighbours, cfg.item_item_max_items,
                        recency=tuned.get("recency", 0.0), sequence=tuned.get("sequence", 0.0))


def save_item_item(model: ItemItem, run: Path) -> None:
    """``RUN/item_item.npz``, written whole or not at all."""
    with tempfile.TemporaryDirectory(dir=run) as tmp:
        model.save(Path(tmp) / "item_item.npz")
        os.replace(Path(tmp) / "item_item.npz", run / "item_item.npz")


def train(cfg: RankingConfig, on_epoch: Callable[[dict], None] | None = None,
          on_step: Callable[[str], None] | None = None,
          on_rows: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Build labelled candidates, train the DLRM, save it into the run, return the manifest
    (``on_step`` hears what the data build is doing, ``on_rows(epoch, done, rows)`` how far an epoch is)."""
    cfg.require_paths()
    device = configure_tensorflow(cfg.seed, cfg.threads)
    run = Path(cfg.run)
    if not (run / "retrieval.json").exists():
        raise FunnelError(f"{run}: no retriever here (run `funnel train retrieval` first)")
    retrieval_manifest = read_retrieval_manifest(run)
    start = time.perf_counter()
    data = RankingData.build(cfg, retrieval_manifest, on_step)
    try:
        return _train(cfg, data, device, run, start, on_epoch, on_rows)
    finally:
        data.close()  # the training rows on disk


def _train(cfg: RankingConfig, data: RankingData, device: str, run: Path,
           start: float, on_epoch: Callable[[dict], None] | None,
           on_rows: Callable[[int, int, int], None] | None) -> dict[str, Any]:
    """:func:`train` once the data is built."""
    key, gate_key = f"valid_recall@{cfg.valid_k}", f"gate_recall@{cfg.valid_k}"
    build_seconds = time.perf_counter() - start
    release_free_memory()  # the build's frames are gone: the served EASE fit and training reuse their pages
    # the served item-item source (the tuned lambda and recency on everything before the cutoff), fitted before
    # the DLRM exists, so its dense items x items work does not add to the model's memory
    served_item_item = fit_item_item(cfg, data.item_item) if data.item_item else None
    release_free_memory()
    cfg = replace(cfg, optimizer=optimizers.resolve(cfg.optimizer, data.schema))  # the run records the one used

    strategy = distribute.choose_strategy(cfg.devices)
    # the DLRM's initial weights from the seed alone, whatever the data build drew before (loading
    # towers, training the earlier periods' retriever): on MovieLens-100k the draw decided the gate
    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, data, strategy)
    fit = fit_best(model, data.train_dataset(), data.fit_rows.rows, cfg.epochs, cfg.batch_size, strategy,
                   validation(cfg, data, model), key, None, on_epoch, on_rows)
    with atomic_output_dir(run / "ranker") as out:
        model.save(str(out))
    # The ranker's logit joins the blend with the share that orders the epoch-choice users' candidates
    # best. The gate: on held-out users that played no part in either choice, does that blend order
    # their candidates better than the blend without the ranker? If not, serving keeps the blend alone.
    gate = per_user_recall(data, cfg.valid_k, gate=True)
    cands = data.valid_cands.assign(**{RANKER_SCORE: logit(score_pairs(model, data.valid_full, data.schema))})
    choice = data.valid_truth[~data.valid_truth.index.isin(data.gate_lists)]
    first = data.blend["weights"]  # the sources' blend: picks the shortlist the ranker scores
    with_ranker, share_facts = tune_ranker_share(cands, choice, cfg.valid_k, first, cfg.shortlist)
    ranker_recall = gate(cands[RANKER_SCORE].to_numpy())
    fused_recall = gate(blend_order(cands, with_ranker, first, cfg.shortlist))
    blend_recall = gate(blend_order(data.valid_cands, first))
    # what the shortlist costs (or gains): the same blend with the ranker scoring more or fewer candidates
    by_shortlist = {str(n or "all"): round(float(gate(blend_order(cands, with_ranker, first, n)).mean()), 5)
                    for n in sorted({25, 50, 100, cfg.shortlist} - {0}) + [0]} if len(fused_recall) else {}
    gate_lists = data.valid_truth.index[data.valid_truth.index.isin(data.gate_lists)]  # in per_user_recall's order
    decision = gate_decision(fused_recall, blend_recall, cfg.seed, data.list_users.loc[gate_lists].to_numpy())
    latest = gate_lists.str.startswith("0|")  # the period the served towers never saw, alone
    latest_decision = gate_decision(fused_recall[latest], blend_recall[latest], cfg.seed)
    use_ranker, gate_reason = gate_verdict(decision, latest_decision, with_ranker[RANKER_SCORE])
    # the gate users' recall under each single score, beside the blend's and the ranker's
    orders = {name: float(gate(sign * cands[name].to_numpy()).mean()) if len(ranker_recall) else 0.0
              for name, sign in {**BLEND_SCORES, RANKER_SCORE: 1.0}.items()}
    blend_facts = {**data.blend, "with_ranker": share_facts, f"gate_recall@{cfg.valid_k}_by_score": orders,
                   f"gate_recall@{cfg.valid_k}_by_shortlist": by_shortlist}
    item_item = None
    if served_item_item is not None:  # the served source: the same lambda fitted on everything before the cutoff
        item_item = {**data.item_item, "fitted": True}
        save_item_item(served_item_item, run)
    metrics = {"valid_auc": fit.best["valid_auc"], "valid_logloss": fit.best["valid_logloss"], key: fit.best[key],
               gate_key: float(fused_recall.mean()) if len(fused_recall) else 0.0,
               f"{gate_key}_ranker_alone": float(ranker_recall.mean()) if len(ranker_recall) else 0.0,
               f"{gate_key}_blend_order": float(blend_recall.mean()) if len(blend_recall) else 0.0,
               "gate_lift": decision["lift"], "gate_lift_ci95": decision["ci95"],
               "gate_lift_latest_period": latest_decision["lift"], "gate_lift_latest_period_ci95": latest_decision["ci95"]}
    facts = {**data.facts, "gate_users": int(data.list_users.loc[gate_lists].nunique()),
             "gate_lists": int(len(gate_lists)), "build_seconds": round(build_seconds, 2)}
    manifest = run_manifest("ranking", cfg, facts, device, strategy, fit, metrics)
    manifest["use_ranker"] = bool(use_ranker)  # a JSON true, not "True"
    manifest["gate_reason"] = gate_reason
    manifest["item_item"] = item_item
    manifest["blend"] = blend_facts
    write_manifest(run / RANKING_MANIFEST, manifest)
    return manifest
