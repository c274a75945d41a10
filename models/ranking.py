"""DLRM ranker (merlin-models ``DLRMModel``) trained on the candidates that matter.

Labels come from the period the retriever did not see (its validation period): positives are
what users bought then; hard negatives are the retriever's own top candidates (plus the
user's earlier purchases where the domain repurchases) that were not bought; random
negatives are drawn by popularity. Features are the fitted workflow's user and item
features computed *as of the start of that period* (no look-ahead), plus two pair
features serving can compute too: how often the user bought the item before, and the
two-tower score.

Run directory additions::

    RUN/ranker/        SavedModel (DLRM)
    RUN/ranking.json   manifest: config, data, versions, device, epochs, AUC / log loss
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from funnel.errors import FunnelError
from funnel.metrics import recall_at_k
from models import distribute
from models.config import RankingConfig
from models.retrieval import configure_tensorflow, encode_rows, load_tower, precision, top_k, valid_mask

PAIR_FEATURES = ["pair_purchases", "pair_days_since", "retrieval_score"]
NEVER_DAYS = 365.0  # pair_days_since for items the user never bought


def features_as_of(pre: Path, history: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Encoded user and item feature tables computed from ``history`` as of ``cutoff``.

    Uses the saved workflow's sub-workflows, so the encoding is exactly the one serving uses.
    """
    from funnel.data.canonical import read_dataset
    from funnel.preprocess import encode_table, load_workflow
    from workflows import ITEM_SUBGRAPH, USER_SUBGRAPH
    from workflows import history as hist

    manifest = json.loads((pre / "preprocess.json").read_text())
    ds = read_dataset(manifest["dataset"]["path"])
    workflow = load_workflow(pre)
    users = hist.user_table(history, ds.users(), cutoff)
    items = hist.item_table(history, ds.items(), cutoff)
    user_sub, item_sub = workflow.get_subworkflow(USER_SUBGRAPH), workflow.get_subworkflow(ITEM_SUBGRAPH)
    users = encode_table(user_sub, users[user_sub.input_schema.column_names], "user_id", "cpu")
    items = encode_table(item_sub, items[item_sub.input_schema.column_names], "item_id", "cpu")
    return users, items


def recent_items(interactions: pd.DataFrame) -> pd.Series:
    """user_id -> the user's distinct items, most recently bought first."""
    ordered = interactions.sort_values("timestamp", ascending=False, kind="stable")
    return ordered.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(dict.fromkeys(s)))


def item_vectors(run: Path, items: pd.DataFrame, item_schema) -> np.ndarray:
    """Item-tower embeddings for encoded item rows (the run's saved item tower)."""
    return encode_rows(load_tower(run / "item_tower"), items, item_schema)


def candidates(q: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray, vectors: np.ndarray, n: int,
               history: dict[Any, list], repurchase: bool, recent: int = 20) -> pd.DataFrame:
    """Retriever top-n per user, plus the user's ``recent`` latest items where the domain repurchases.

    Returns rows (user_id, item_id, source, retrieval_score) with raw ids, duplicates removed
    (a retrieved item the user bought before keeps source 'retrieval').
    """
    pos = pd.Index(item_ids)
    exclude = None if repurchase else [pos.get_indexer(history.get(u, [])) for u in user_ids]
    top = top_k(q, vectors, n, exclude)
    frames = [pd.DataFrame({"user_id": np.repeat(user_ids, top.shape[1]), "item_id": item_ids[top.ravel()],
                            "source": "retrieval"})]
    if repurchase:
        own = [(u, i) for u in user_ids for i in history.get(u, [])[:recent]]
        if own:
            frames.append(pd.DataFrame(own, columns=["user_id", "item_id"]).assign(source="repurchase"))
    cands = pd.concat(frames, ignore_index=True).drop_duplicates(["user_id", "item_id"], keep="first")
    cands = cands[pos.get_indexer(cands["item_id"]) >= 0].reset_index(drop=True)
    cands["retrieval_score"] = dot_scores(q, user_ids, vectors, item_ids, cands)
    return cands


def dot_scores(q: np.ndarray, user_ids: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray,
               pairs: pd.DataFrame) -> np.ndarray:
    """Two-tower score of each (user_id, item_id) pair (raw ids; unknown items score 0)."""
    u = pd.Index(user_ids).get_indexer(pairs["user_id"])
    i = pd.Index(item_ids).get_indexer(pairs["item_id"])
    scores = np.einsum("ij,ij->i", q[u], vectors[np.maximum(i, 0)]).astype(np.float32)
    return np.where(i >= 0, scores, 0.0).astype(np.float32)


def pair_history(pairs: pd.DataFrame, history: pd.DataFrame, now: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: log1p(times the user bought the item) and log1p(days since the last time, or 365)."""
    grouped = history.groupby(["user_id", "item_id"])["timestamp"]
    stats = pd.DataFrame({"n": grouped.size(), "last": grouped.max()}).reset_index()
    joined = pairs[["user_id", "item_id"]].merge(stats, on=["user_id", "item_id"], how="left")
    days = ((now - joined["last"]) / pd.Timedelta(days=1)).clip(lower=0).fillna(NEVER_DAYS)
    return (np.log1p(joined["n"].fillna(0).to_numpy()).astype(np.float32),
            np.log1p(days.to_numpy()).astype(np.float32))


def assemble(pairs: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, history: pd.DataFrame,
             now: pd.Timestamp) -> pd.DataFrame:
    """Model rows for raw (user_id, item_id) pairs: encoded user + item features + pair features.

    ``users``/``items`` are encoded tables with ``user_id_raw``/``item_id_raw``; the result keeps
    the raw ids in ``user_id_raw``/``item_id_raw`` beside the encoded ``user_id``/``item_id``.
    Pair features describe ``history`` as seen at ``now``.
    """
    bought, since = pair_history(pairs, history, now)
    out = pairs.assign(pair_purchases=bought, pair_days_since=since)
    out = out.rename(columns={"user_id": "user_id_raw", "item_id": "item_id_raw"})
    out = out.merge(users, on="user_id_raw", how="left").merge(items, on="item_id_raw", how="left")
    return out


def rank_candidates(scores: np.ndarray, cands: pd.DataFrame, k: int) -> pd.Series:
    """Top-k raw item ids per user by ``scores`` (ties keep candidate order)."""
    ranked = cands.assign(_score=scores).sort_values(["user_id", "_score"], ascending=[True, False], kind="stable")
    return ranked.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(s[:k]))


def ranking_schema(pre: Path):
    """Schema of the ranker's inputs: user + item features, pair features, the target."""
    from merlin.io import Dataset
    from merlin.schema import ColumnSchema, Schema, Tags

    from workflows import TARGET

    base = Dataset(str(pre / "ranking" / "train"), engine="parquet", cpu=True).schema
    pair = Schema([ColumnSchema(name, tags=[Tags.CONTINUOUS], dtype=np.float32, is_list=False) for name in PAIR_FEATURES])
    return base.select_by_tag(Tags.USER) + base.select_by_tag(Tags.ITEM) + pair + base.select_by_name([TARGET])


def score_pairs(ranker, frame: pd.DataFrame, schema, batch_size: int = 8192) -> np.ndarray:
    """Ranker probabilities for model rows, in order."""
    import merlin.models.tf as mm
    from merlin.io import Dataset

    from workflows import TARGET

    inputs = schema.excluding_by_name([TARGET])
    ds = Dataset(frame[inputs.column_names], schema=inputs, cpu=True)
    parts = [np.asarray(ranker(batch, training=False)).reshape(-1) for batch, _ in mm.Loader(ds, batch_size, shuffle=False)]
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


def train(cfg: RankingConfig, on_epoch=None) -> dict[str, Any]:
    """Build labelled candidates, train the DLRM, save it into the run, return the manifest."""
    cfg.validate()
    device = configure_tensorflow(cfg.seed, cfg.threads)
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.io import Dataset
    from merlin.schema import Tags

    from workflows import TARGET

    pre, run = Path(cfg.pre), Path(cfg.run)
    if not (run / "retrieval.json").exists():
        raise FunnelError(f"{run}: no retriever here (run `funnel train retrieval` first)")
    rmanifest = json.loads((run / "retrieval.json").read_text())
    pre_manifest = json.loads((pre / "preprocess.json").read_text())
    repurchase = bool(pre_manifest["dataset"]["repurchase"])
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()

    # The label period = the retriever's validation period; features describe only what came before.
    raw = pd.read_parquet(pre / "splits" / "train.parquet")
    held = valid_mask(raw, pre_manifest["split"]["how"], rmanifest["config"]["valid_days"])
    before, label = raw[~held], raw[held]
    cutoff = before["timestamp"].max() + pd.Timedelta(seconds=1)  # every feature describes `before` only
    users, items = features_as_of(pre, before, cutoff)
    schema = ranking_schema(pre)
    user_schema, item_schema = schema.select_by_tag(Tags.USER), schema.select_by_tag(Tags.ITEM)

    label_users = label["user_id"].unique()
    if len(label_users) > cfg.max_users:
        label_users = rng.choice(label_users, cfg.max_users, replace=False)
    history = recent_items(before).to_dict()

    item_ids = items["item_id_raw"].to_numpy()
    vectors = item_vectors(run, items, item_schema)
    q = encode_rows(load_tower(run / "query_tower"),
                    users.set_index("user_id_raw").loc[label_users].reset_index(), user_schema)
    cands = candidates(q, label_users, item_ids, vectors, cfg.candidates, history, repurchase)

    bought = label[label["user_id"].isin(label_users)][["user_id", "item_id"]].drop_duplicates()
    bought = bought[bought["item_id"].isin(item_ids)]
    bought_key = set(zip(bought["user_id"], bought["item_id"]))
    is_pos = np.fromiter((k in bought_key for k in zip(cands["user_id"], cands["item_id"])), bool, len(cands))
    n_pos = bought.groupby("user_id").size()
    hard = cands[~is_pos].sample(frac=1.0, random_state=cfg.seed)
    hard = hard[hard.groupby("user_id").cumcount().to_numpy()
                < cfg.hard_negatives * n_pos.reindex(hard["user_id"]).fillna(1).to_numpy()]
    counts = before["item_id"].value_counts()
    counts = counts[counts.index.isin(item_ids)]
    weights = counts.to_numpy(np.float64) ** 0.75
    draws = rng.choice(len(counts), len(bought) * cfg.random_negatives, p=weights / weights.sum())
    rand = pd.DataFrame({"user_id": np.repeat(bought["user_id"].to_numpy(), cfg.random_negatives),
                         "item_id": counts.index.to_numpy()[draws]})
    rand = rand[[k not in bought_key for k in zip(rand["user_id"], rand["item_id"])]]
    pairs = pd.concat([bought.assign(**{TARGET: 1}), hard[["user_id", "item_id"]].assign(**{TARGET: 0}),
                       rand.assign(**{TARGET: 0})], ignore_index=True)
    pairs = pairs.drop_duplicates(["user_id", "item_id"], keep="first").reset_index(drop=True)
    pairs["retrieval_score"] = dot_scores(q, label_users, vectors, item_ids, pairs)
    rows = assemble(pairs, users, items, before, cutoff)
    rows[TARGET] = rows[TARGET].astype(np.int32)
    valid_users = rng.choice(label_users, max(1, int(len(label_users) * cfg.valid_share)), replace=False)
    is_valid = rows["user_id_raw"].isin(valid_users).to_numpy()
    fit_rows = rows[~is_valid].sample(frac=1.0, random_state=cfg.seed)
    valid_rows = rows[is_valid]
    # the held-out users' full candidate lists: how the ranker is used, so how it is judged
    valid_cands = cands[cands["user_id"].isin(valid_users)].reset_index(drop=True)
    valid_full = assemble(valid_cands[["user_id", "item_id", "retrieval_score"]], users, items, before, cutoff)
    valid_full[TARGET] = 0
    valid_truth = bought[bought["user_id"].isin(valid_users)].groupby("user_id")["item_id"].apply(set)
    k = cfg.valid_k

    def valid_recall(scores: np.ndarray) -> float:
        top = rank_candidates(scores, valid_cands, k).reindex(valid_truth.index)
        return recall_at_k([t if isinstance(t, list) else [] for t in top], list(valid_truth), k)

    retrieval_recall = valid_recall(valid_cands["retrieval_score"].to_numpy())
    build_seconds = time.perf_counter() - start

    strategy = distribute.choose_strategy(cfg.devices)
    with distribute.scope(strategy), precision(cfg.precision):
        model = mm.DLRMModel(
            schema, embedding_dim=cfg.embedding_dim, bottom_block=mm.MLPBlock([cfg.embedding_dim]),
            top_block=mm.MLPBlock(cfg.top_dims), prediction_tasks=mm.BinaryOutput(
                TARGET, to_call=tf.keras.layers.Dense(1, activation="sigmoid", dtype="float32")),  # float32 scores
        )
        # no train-time metrics: held-out AUC and list recall are computed per epoch below
        model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), metrics=[])
    distribute.prepare(model, strategy)
    train_ds = Dataset(fit_rows[schema.column_names], schema=schema, cpu=True)
    history_log = []
    best, best_weights = -1.0, None
    t_train = time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        fit = distribute.fit_epoch(model, train_ds, cfg.batch_size, strategy)
        seconds = time.perf_counter() - t0
        figures = auc_logloss(valid_rows[TARGET].to_numpy(), score_pairs(model, valid_rows, schema))
        recall = valid_recall(score_pairs(model, valid_full, schema))
        record = {"epoch": epoch + 1, "loss": float(fit["loss"][-1]), "valid_auc": figures["auc"],
                  "valid_logloss": figures["logloss"], f"valid_recall@{k}": recall, "seconds": round(seconds, 2),
                  "samples_per_s": round(len(fit_rows) / seconds)}
        history_log.append(record)
        if on_epoch:
            on_epoch(record)
        if recall > best:
            best, best_weights = recall, model.get_weights()
    model.set_weights(best_weights)
    train_seconds = time.perf_counter() - t_train

    from funnel.fsutil import atomic_output_dir

    with atomic_output_dir(run / "ranker") as out:
        model.save(str(out))
    best_rec = max(history_log, key=lambda h: h[f"valid_recall@{k}"])
    manifest = {
        "stage": "ranking",
        "config": asdict(cfg),
        "data": {"pre": str(pre.resolve()), "content_checksum": pre_manifest["dataset"]["content_checksum"],
                 "label_period_start": str(cutoff), "label_users": int(len(label_users)),
                 "rows": int(len(rows)), "positives": int(rows[TARGET].sum()),
                 "hard_negatives": int(len(hard)), "random_negatives": int(len(rand)),
                 "candidates_per_user": round(len(cands) / max(len(label_users), 1), 1),
                 "label_recall_of_candidates": round(float(is_pos.sum()) / max(len(bought), 1), 4),
                 "build_seconds": round(build_seconds, 2)},
        "versions": rmanifest["versions"],
        "device": device,
        "replicas": distribute.replicas(strategy),
        "precision": cfg.precision,
        "epochs_run": len(history_log),
        "train_seconds": round(train_seconds, 2),
        "samples_per_s": round(len(fit_rows) * len(history_log) / sum(h["seconds"] for h in history_log)),
        "history": history_log,
        "metrics": {"valid_auc": best_rec["valid_auc"], "valid_logloss": best_rec["valid_logloss"],
                    f"valid_recall@{k}": best_rec[f"valid_recall@{k}"],
                    f"valid_recall@{k}_retrieval_order": retrieval_recall},
        # a ranker that orders the held-out users' candidates worse than the retrieval score is not used
        "use_ranker": bool(best_rec[f"valid_recall@{k}"] >= retrieval_recall),
    }
    (run / "ranking.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
