"""Two-tower retriever (merlin-models ``TwoTowerModelV2``): in-batch negatives with logQ correction.

``train(config)`` is the typed entry point; ``funnel train retrieval`` is a thin CLI wrapper.
Training uses the preprocessing output's positives up to a validation cutoff (the last
``valid_days`` of the training split, or each user's last training basket for user-last
splits); validation Recall@k over the whole catalogue drives early stopping.

Run directory::

    RUN/query_tower/            SavedModel: encoded user features -> embedding
    RUN/item_tower/             SavedModel: encoded item features -> embedding
    RUN/item_embeddings.parquet item_id (raw) + embedding, for the whole catalogue
    RUN/retrieval.json          manifest: config, data checksum, versions, device, epochs, metrics
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from funnel.errors import FunnelError
from funnel.metrics import recall_at_k
from models import distribute
from models.config import RetrievalConfig

TIME_COLUMN = "timestamp"


def configure_tensorflow(seed: int, threads: int = 0) -> str:
    """Seed everything, size thread pools for this host, and return the device in use ('gpu'/'cpu')."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    n = threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, n)))
    except RuntimeError:  # already initialised in this process
        pass
    tf.keras.utils.set_random_seed(seed)
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


@contextlib.contextmanager
def precision(policy: str) -> Iterator[None]:
    """Build models under a Keras dtype policy (``mixed_float16`` on GPUs, ``mixed_bfloat16`` on
    CPUs with bf16 units); the previous global policy is restored on exit."""
    import tensorflow as tf

    before = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(before)


def float32_output():
    """The last layer of a tower under a mixed policy: embeddings and scores leave in float32."""
    import tensorflow as tf

    return tf.keras.layers.Activation("linear", dtype="float32", name="float32_output")


def valid_mask(frame: pd.DataFrame, split: str, valid_days: int) -> np.ndarray:
    """Rows held out for validation: the last ``valid_days`` (time) or each user's last basket."""
    ts = frame[TIME_COLUMN]
    if split == "user-last":
        last = ts.groupby(frame["user_id"]).transform("max")
        first = ts.groupby(frame["user_id"]).transform("min")
        return ((ts == last) & (first < last)).to_numpy()
    day = 86400 if np.issubdtype(ts.dtype, np.integer) else pd.Timedelta(days=1)
    cutoff = ts.max() - valid_days * day
    return (ts > cutoff).to_numpy()


def load_tower(path: Path):
    """A saved merlin-models tower or model (Keras SavedModel) with merlin's layers registered."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import merlin.models.tf  # noqa: F401  (registers the custom layers)
    import tensorflow as tf

    if not Path(path).exists():
        raise FunnelError(f"{path}: no saved model (run `funnel train` first)")
    return tf.keras.models.load_model(str(path), compile=False)  # inference only


def encode_rows(encoder, frame: pd.DataFrame, schema, batch_size: int = 4096) -> np.ndarray:
    """Run a tower over every row of an encoded feature frame, in order."""
    import merlin.models.tf as mm
    from merlin.io import Dataset

    ds = Dataset(frame[schema.column_names], schema=schema, cpu=True)
    out = []
    for batch, _ in mm.Loader(ds, batch_size=batch_size, shuffle=False):
        out.append(encoder(batch, training=False).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def top_k(query: np.ndarray, items: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Exact top-k item positions per query row by dot product (excluded positions; -1 = unknown, ignored)."""
    scores = query @ items.T
    if exclude is not None:
        for row, cols in enumerate(exclude):
            cols = np.asarray(cols)
            scores[row, cols[cols >= 0]] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def train(cfg: RetrievalConfig, on_epoch=None) -> dict[str, Any]:
    """Train the two-tower model, save the run, return the manifest."""
    cfg.validate()
    device = configure_tensorflow(cfg.seed, cfg.threads)
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.io import Dataset
    from merlin.models.tf.outputs.base import DotProduct
    from merlin.models.tf.outputs.contrastive import ContrastiveOutput
    from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
    from merlin.schema import Tags

    from funnel.fsutil import atomic_output_dir
    from funnel.preprocess import read_parquet_dir

    pre = Path(cfg.pre)
    if not (pre / "preprocess.json").exists():
        raise FunnelError(f"{pre}: not a preprocessing output (run `funnel preprocess` first)")
    pre_manifest = json.loads((pre / "preprocess.json").read_text())
    full_schema = Dataset(str(pre / "retrieval" / "train"), engine="parquet", cpu=True).schema
    if TIME_COLUMN not in full_schema.column_names:
        raise FunnelError(f"{pre}: made by an older funnel preprocess (no timestamp column); run it again")
    schema = full_schema.select_by_tag(Tags.USER) + full_schema.select_by_tag(Tags.ITEM)
    user_schema, item_schema = schema.select_by_tag(Tags.USER), schema.select_by_tag(Tags.ITEM)

    rows = read_parquet_dir(pre / "retrieval" / "train")
    raw_train = pd.read_parquet(pre / "splits" / "train.parquet")
    held = valid_mask(raw_train, pre_manifest["split"]["how"], cfg.valid_days)
    fit_rows = rows[~valid_mask(rows, pre_manifest["split"]["how"], cfg.valid_days)]
    fit_rows = fit_rows.sample(frac=1.0, random_state=cfg.seed)  # one shuffle; the loader keeps order
    train_ds = Dataset(fit_rows[schema.column_names], schema=schema, cpu=True)

    users = pd.read_parquet(pre / "catalogue" / "users.parquet")
    items = pd.read_parquet(pre / "catalogue" / "items.parquet")
    truth = raw_train[held].groupby("user_id")["item_id"].apply(set)
    rng = np.random.default_rng(cfg.seed)
    valid_users = truth.index.to_numpy()
    if len(valid_users) > cfg.valid_users:
        valid_users = rng.choice(valid_users, cfg.valid_users, replace=False)
    user_rows = users.set_index("user_id_raw").loc[valid_users].reset_index()
    seen = raw_train[~held].groupby("user_id")["item_id"].apply(set)
    item_pos = pd.Index(items["item_id_raw"])
    repurchase = bool(pre_manifest["dataset"]["repurchase"])

    cardinality = int(item_schema["item_id"].int_domain.max) + 1
    freq = np.bincount(fit_rows["item_id"].to_numpy(), minlength=cardinality).astype(np.float32)
    freq[freq == 0] = 1.0  # never-sampled ids (reserved, OOV) keep a finite correction
    strategy = distribute.choose_strategy(cfg.devices)
    with distribute.scope(strategy), precision(cfg.precision):
        # logits and their logQ correction stay in float32 (merlin's correction is float32 only)
        post = (PopularityLogitsCorrection(freq, reg_factor=cfg.logq_reg, schema=item_schema, dtype="float32")
                if cfg.logq else None)

        def tower():
            mlp = mm.MLPBlock([*cfg.tower_dims, cfg.embedding_dim], no_activation_last_layer=True)
            return mlp if cfg.precision == "float32" else mlp.connect(float32_output())

        query = mm.Encoder(user_schema, tower())
        candidate = mm.Encoder(item_schema, tower())
        output = ContrastiveOutput(
            to_call=DotProduct(), negative_samplers="in-batch", post=post, logits_temperature=cfg.temperature,
            store_negative_ids=cfg.logq, schema=item_schema.select_by_tag(Tags.ITEM_ID), dtype="float32",
        )
        model = mm.TwoTowerModelV2(query, candidate, outputs=output)
        # no train-time metrics: validation recall over the whole catalogue is computed per epoch below
        model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), metrics=[], run_eagerly=False)
    distribute.prepare(model, strategy)

    def validate_epoch() -> float:
        q = encode_rows(model.query_encoder, user_rows, user_schema)
        c = encode_rows(model.candidate_encoder, items, item_schema)
        exclude = None
        if not repurchase:
            exclude = [item_pos.get_indexer(list(seen.get(u, ()))) for u in valid_users]
        top = top_k(q, c, cfg.valid_k, exclude)
        recs = [items["item_id_raw"].to_numpy()[row] for row in top]
        return recall_at_k(recs, [truth[u] for u in valid_users], cfg.valid_k)

    history: list[dict[str, float]] = []
    best, best_weights, waited = -1.0, None, 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        fit = distribute.fit_epoch(model, train_ds, cfg.batch_size, strategy)
        seconds = time.perf_counter() - t0
        recall = validate_epoch()
        record = {"epoch": epoch + 1, "loss": float(fit["loss"][-1]), f"valid_recall@{cfg.valid_k}": recall,
                  "seconds": round(seconds, 2), "samples_per_s": round(len(fit_rows) / seconds)}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if recall > best:
            best, best_weights, waited = recall, model.get_weights(), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    train_seconds = time.perf_counter() - start
    model.set_weights(best_weights)

    embeddings = encode_rows(model.candidate_encoder, items, item_schema)
    with atomic_output_dir(cfg.out) as out:
        model.query_encoder.save(str(out / "query_tower"))
        model.candidate_encoder.save(str(out / "item_tower"))
        emb = pd.DataFrame(embeddings, columns=[str(i) for i in range(embeddings.shape[1])])
        emb.insert(0, "item_id", items["item_id_raw"].to_numpy())
        emb.to_parquet(out / "item_embeddings.parquet", index=False)
        manifest = {
            "stage": "retrieval",
            "config": asdict(cfg),
            "data": {"pre": str(pre.resolve()), "content_checksum": pre_manifest["dataset"]["content_checksum"],
                     "workflow_checksum": pre_manifest["workflow_checksum"], "fit_rows": int(len(fit_rows)),
                     "valid_rows": int(held.sum()), "valid_users": int(len(valid_users))},
            "versions": _versions(),
            "device": device,
            "replicas": distribute.replicas(strategy),
            "precision": cfg.precision,
            "epochs_run": len(history),
            "best_epoch": int(np.argmax([h[f"valid_recall@{cfg.valid_k}"] for h in history]) + 1),
            "train_seconds": round(train_seconds, 2),
            "samples_per_s": round(len(fit_rows) * len(history) / sum(h["seconds"] for h in history)),
            "history": history,
            "metrics": {f"valid_recall@{cfg.valid_k}": best},
        }
        (out / "retrieval.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("funnel", "merlin-models", "merlin-core", "nvtabular", "tensorflow-cpu", "tensorflow", "numpy", "pandas"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
