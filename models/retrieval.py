"""Two-tower retriever (merlin-models ``TwoTowerModelV2``): in-batch negatives with logQ correction.

``train(config)`` is the typed entry point; ``funnel train retrieval`` is a thin CLI wrapper.
Training uses the preprocessing output's positives up to a validation cutoff (the last
``valid_days`` of the training split, or each user's last training basket for user-last
splits); validation Recall@k over the whole catalogue drives early stopping. With ``refit`` (the
default) the served towers are then trained again from scratch on every training row, the
validation period too, for the best epoch's count: served, the towers know each user's latest
purchases, as the ranker's latest label period's towers (the early-stopped ones) knew everything
before that period.

Run directory::

    RUN/query_tower/            SavedModel: encoded user features -> embedding (served)
    RUN/item_tower/             SavedModel: encoded item features -> embedding (served)
    RUN/item_embeddings.parquet item_id (raw) + embedding, for the whole catalogue
    RUN/validated/              with refit: the early-stopped towers (query_tower/, item_tower/),
                                which never saw the validation period (the ranker's latest label period)
    RUN/retrieval.json          manifest: config, data checksum, versions, device, epochs, metrics
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.io import Dataset
from merlin.models.tf.outputs.base import DotProduct
from merlin.models.tf.outputs.contrastive import ContrastiveOutput
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
from merlin.schema import Schema, Tags

from funnel.core.artifacts import RETRIEVAL_MANIFEST, VALIDATED_TOWERS, read_preprocess_manifest, write_manifest
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir
from funnel.core.metrics import recall_at_k
from funnel.core.topk import dot_top_k
from funnel.data.canonical import Dataset as CanonicalDataset
from models import distribute, optimizers
from models.config import Precision, RetrievalConfig
from models.fit import FitResult, fit_best, fit_fixed, run_manifest
from models.tf_helpers import IdDropout, configure_tensorflow, encode_rows, float32_output, precision
from workflows import OOV_INDEX
from workflows.graph import item_id_columns
from workflows.io import features_as_of, parquet_parts
from workflows.shuffle import ShuffledRows, shuffle_parts
from workflows.codes import ColumnReader, parquet_batches
from workflows.splits import file_label_windows, label_windows

TIME_COLUMN = "timestamp"


def valid_mask(frame: pd.DataFrame, split: str, valid_days: int) -> np.ndarray:
    """Rows held out for validation: the last ``valid_days`` (time) or each user's last basket."""
    return label_windows(frame, split, valid_days, 1) == 0


@dataclass
class RetrievalData:
    """The training rows and the validation users of one preprocessing output."""

    pre: Path
    pre_manifest: dict[str, Any]
    schema: Schema  # user + item features of the two towers
    fit_rows: ShuffledRows  # encoded positives before the validation cutoff, shuffled once, on disk
    item_counts: np.ndarray  # training rows per encoded item id (the logQ correction's frequencies)
    fit_folder: Path  # where fit_rows live (removed by close())
    items: pd.DataFrame  # the encoded catalogue, features as of the validation start (item_id_raw + features)
    valid_rows: pd.DataFrame  # encoded features of the validation users, as of the validation start
    valid_users: np.ndarray  # raw ids
    truth: pd.Series  # raw user id -> set of raw item ids bought in the validation period
    seen: pd.Series  # raw user id -> set of raw item ids bought before it
    held_rows: int
    repurchase: bool

    @property
    def user_schema(self) -> Schema:
        return self.schema.select_by_tag(Tags.USER)

    @property
    def item_schema(self) -> Schema:
        return self.schema.select_by_tag(Tags.ITEM)

    @classmethod
    def load(cls, cfg: RetrievalConfig, every_row: bool = False) -> "RetrievalData":
        """The rows before the validation period (``every_row``: the validation period's too, for the
        refit; validation is then in-sample and not used)."""
        pre = Path(cfg.pre)
        pre_manifest = read_preprocess_manifest(pre)
        full_schema = Dataset(str(pre / "retrieval" / "train"), engine="parquet", cpu=True).schema
        if TIME_COLUMN not in full_schema.column_names:
            raise FunnelError(f"{pre}: made by an older funnel preprocess (no timestamp column); run it again")
        schema = full_schema.select_by_tag(Tags.USER) + full_schema.select_by_tag(Tags.ITEM)
        split = pre_manifest["split"]["how"]
        split_file = pre / "splits" / "train.parquet"
        # on raw ids (out-of-vocabulary users share one code); with ``windows_back``, the training split
        # ends that many label windows early: those windows are neither trained on nor validated on.
        # The split is read a batch at a time; per row only its window is held.
        window, latest_before = file_label_windows(split_file, split, cfg.valid_days, cfg.windows_back + 1)
        held, keep = window == cfg.windows_back, window < 0
        if every_row:
            keep = window <= cfg.windows_back
        if not keep.any():
            raise FunnelError(f"{pre}: nothing left to train on before the validation period; lower valid_days "
                              "(and label_windows)")
        cardinality = int(schema["item_id"].int_domain.max) + 1
        item_counts = np.zeros(cardinality, dtype=np.int64)

        def fit_parts():  # the encoded rows before the validation cutoff, one stored part at a time
            offset = 0
            times = ColumnReader(split_file, TIME_COLUMN)
            for path in parquet_parts(pre / "retrieval" / "train"):
                part = pd.read_parquet(path, columns=[*schema.column_names, TIME_COLUMN])
                end = offset + len(part)
                seconds = times.take(len(part))
                if end > len(window) or not np.array_equal(part[TIME_COLUMN].to_numpy(), seconds // 10**9):
                    break
                mine = keep[offset:end]
                item_counts[:] += np.bincount(part["item_id"].to_numpy()[mine], minlength=cardinality)
                offset = end
                yield part.loc[mine, schema.column_names]
            if offset != len(window):
                raise FunnelError(f"{pre}: retrieval/train does not match splits/train.parquet row for row; "
                                  "run `funnel preprocess` again")

        held_parts = []

        def before_parts():  # the rows before the validation period; the validation rows kept aside
            offset = 0
            for part in parquet_batches(split_file):
                mine = window[offset:offset + len(part)]
                offset += len(part)
                held_parts.append(part.loc[mine == cfg.windows_back, ["user_id", "item_id"]])
                yield part[mine < 0]

        # validation sees features as of its own start: nothing from the validation period itself
        users, items = features_as_of(pre, before_parts(), latest_before + pd.Timedelta(seconds=1))
        truth = pd.concat(held_parts, ignore_index=True).groupby("user_id")["item_id"].apply(set)
        del held_parts
        valid_users = truth.index.to_numpy()
        if len(valid_users) > cfg.valid_users:
            valid_users = np.random.default_rng(cfg.seed).choice(valid_users, cfg.valid_users, replace=False)
        mine, offset = [], 0  # seen items: only the validation users'
        for part in parquet_batches(split_file, ["user_id", "item_id"]):
            chosen = (window[offset:offset + len(part)] < 0) & part["user_id"].isin(valid_users).to_numpy()
            offset += len(part)
            mine.append(part[chosen])
        mine = pd.concat(mine, ignore_index=True)

        # last, so nothing after it can fail and leave the folder behind
        folder = Path(tempfile.mkdtemp(prefix="funnel-fit-rows-"))
        try:  # one shuffle, out of core; the loader keeps this order every epoch
            fit_rows = shuffle_parts(fit_parts(), int(keep.sum()), folder, cfg.seed)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(pre=pre, pre_manifest=pre_manifest, schema=schema, fit_rows=fit_rows, item_counts=item_counts,
                   fit_folder=folder, items=items,
                   valid_rows=users.set_index("user_id_raw").loc[valid_users].reset_index(),
                   valid_users=valid_users, truth=truth,
                   seen=mine.groupby("user_id")["item_id"].apply(set), held_rows=int(held.sum()),
                   repurchase=bool(pre_manifest["dataset"]["repurchase"]))

    def close(self) -> None:
        """Remove the shuffled training rows."""
        shutil.rmtree(self.fit_folder, ignore_errors=True)

    def train_dataset(self) -> Dataset:
        """The shuffled training rows as a merlin Dataset read part by part."""
        return Dataset(self.fit_rows.files, engine="parquet", schema=self.schema, cpu=True)


def item_frequencies(data: RetrievalData) -> np.ndarray:
    """The logQ correction's item frequencies: how often each item id is a positive in the training rows."""
    cardinality = int(data.item_schema["item_id"].int_domain.max) + 1
    freq = np.zeros(cardinality, dtype=np.float32)
    freq[: len(data.item_counts)] = data.item_counts[:cardinality]
    freq[freq == 0] = 1.0  # never-sampled ids (reserved, OOV) keep a finite correction
    return freq


def build_model(cfg: RetrievalConfig, data: RetrievalData, strategy):
    """The two-tower model, compiled: in-batch negatives with logQ correction, float32 logits."""
    item_schema = data.item_schema
    freq = item_frequencies(data)
    with distribute.scope(strategy), precision(cfg.precision):
        # logits and their logQ correction stay in float32 (merlin's correction is float32 only)
        post = (PopularityLogitsCorrection(freq, reg_factor=cfg.logq_reg, schema=item_schema, dtype="float32")
                if cfg.logq else None)

        def tower():
            mlp = mm.MLPBlock([*cfg.tower_dims, cfg.embedding_dim], no_activation_last_layer=True)
            return mlp if cfg.precision == Precision.FLOAT32 else mlp.connect(float32_output())

        output = ContrastiveOutput(
            to_call=DotProduct(), negative_samplers="in-batch", post=post, logits_temperature=cfg.temperature,
            store_negative_ids=cfg.logq, schema=item_schema.select_by_tag(Tags.ITEM_ID), dtype="float32",
        )
        # item-id dropout: the item tower also learns to place an item from its features alone,
        # which is all it has for an article nobody bought before the cutoff (cold items)
        id_columns = item_id_columns(item_schema)
        item_pre = IdDropout(id_columns, cfg.item_id_dropout, OOV_INDEX) if cfg.item_id_dropout and id_columns else None
        model = mm.TwoTowerModelV2(mm.Encoder(data.user_schema, tower()),
                                   mm.Encoder(item_schema, tower(), pre=item_pre), outputs=output)
        # no train-time metrics: validation recall over the whole catalogue is computed per epoch
        optimizer = optimizers.make_optimizer(cfg.optimizer, cfg.learning_rate, data.schema)
        model.compile(optimizer=optimizer, metrics=[], run_eagerly=False)
    distribute.prepare(model, strategy)
    return model


def validation(cfg: RetrievalConfig, data: RetrievalData, model) -> Callable[[], dict[str, float]]:
    """Recall@valid_k of the validation users over the whole catalogue (seen items excluded
    where the domain does not repurchase), as a function of the model's current weights."""
    item_pos = pd.Index(data.items["item_id_raw"])
    item_ids = data.items["item_id_raw"].to_numpy()
    exclude = None
    if not data.repurchase:
        exclude = [item_pos.get_indexer(list(data.seen.get(u, ()))) for u in data.valid_users]
    truth = [data.truth[u] for u in data.valid_users]

    def validate() -> dict[str, float]:
        q = encode_rows(model.query_encoder, data.valid_rows, data.user_schema)
        c = encode_rows(model.candidate_encoder, data.items, data.item_schema)
        recs = [item_ids[row] for row in dot_top_k(q, c, cfg.valid_k, exclude)]
        return {f"valid_recall@{cfg.valid_k}": recall_at_k(recs, truth, cfg.valid_k)}

    return validate


def save_run(cfg: RetrievalConfig, data: RetrievalData, model, fit: FitResult, device: str,
             strategy, validated=None, refit: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both towers, the catalogue's item embeddings (features as of the training cutoff, as served)
    and retrieval.json, written atomically; with a refit, ``model`` is the refit one and
    ``validated`` the folder of the early-stopped one's towers (``fit``'s), copied to ``VALIDATED_TOWERS``."""
    catalogue = pd.read_parquet(data.pre / "catalogue" / "items.parquet")
    embeddings = encode_rows(model.candidate_encoder, catalogue, data.item_schema)
    key = f"valid_recall@{cfg.valid_k}"
    with atomic_output_dir(cfg.out) as out:
        model.query_encoder.save(str(out / "query_tower"))
        model.candidate_encoder.save(str(out / "item_tower"))
        if validated is not None:  # the early-stopped towers, saved by _fit before the refit
            shutil.copytree(validated, out / VALIDATED_TOWERS)
        emb = pd.DataFrame(embeddings, columns=[str(i) for i in range(embeddings.shape[1])])
        emb.insert(0, "item_id", catalogue["item_id_raw"].to_numpy())
        emb.to_parquet(out / "item_embeddings.parquet", index=False)
        manifest = run_manifest(
            "retrieval", cfg,
            {"pre": str(data.pre.resolve()), "content_checksum": data.pre_manifest["dataset"]["content_checksum"],
             "workflow_checksum": data.pre_manifest["workflow_checksum"], "fit_rows": int(data.fit_rows.rows),
             "valid_rows": data.held_rows, "valid_users": int(len(data.valid_users))},
            device, strategy, fit, {key: fit.best[key]})
        if refit is not None:
            manifest["refit"] = refit
        write_manifest(out / RETRIEVAL_MANIFEST, manifest)
    return manifest


def train(cfg: RetrievalConfig, on_epoch: Callable[[dict], None] | None = None,
          on_rows: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Train the two-tower model, save the run, return the manifest (``on_rows(epoch, done, rows)``:
    progress within an epoch)."""
    cfg.require_paths()
    return _fit(cfg, on_epoch, on_rows)


def settled(cfg: RetrievalConfig, data: RetrievalData) -> RetrievalConfig:
    """``cfg`` with its data-dependent defaults decided: item-id dropout only where new items exist
    (the data has a stock history), the optimizer by the embedding tables' sizes."""
    cfg = cfg.resolved(CanonicalDataset(Path(data.pre_manifest["dataset"]["path"]), {}).has_stock_history)
    return replace(cfg, optimizer=optimizers.resolve(cfg.optimizer, data.schema))


def train_fixed_epochs(cfg: RetrievalConfig, model=None) -> tuple[Any, dict[str, Any]]:
    """Train the two-tower model for exactly ``cfg.epochs`` epochs on the rows before its validation
    window and keep the last epoch's weights, without writing a run: for a retriever used only inside
    another stage (``models.label_periods``). No epoch is chosen on the validation window, whose
    purchases that stage uses as labels (as the served refit's epoch count is not chosen on its rows).
    ``model``: a two-tower already trained (with the same settings, on fewer rows) to train on from
    its weights and optimizer state, its logQ correction's item frequencies set to these rows'.
    Returns the model and its figures (the validation window's recall after the last epoch)."""
    if not cfg.pre:
        raise FunnelError("retrieval: need a preprocessing directory")
    configure_tensorflow(cfg.seed, cfg.threads)
    data = RetrievalData.load(cfg)
    try:
        cfg = settled(cfg, data)
        if model is None:
            strategy = distribute.choose_strategy(cfg.devices)
            model = build_model(cfg, data, strategy)
        else:  # it goes on under the strategy it was built in, sampling corrected by these rows' frequencies
            strategy = model.distribute_strategy
            corrections = [o.post for o in model.model_outputs if isinstance(o.post, PopularityLogitsCorrection)]
            if cfg.logq and len(corrections) != 1:
                raise FunnelError(f"retrieval: found {len(corrections)} logQ corrections to update in the model, not 1")
            for correction in corrections:
                correction.update(item_frequencies(data))
        start = time.perf_counter()
        fit_fixed(model, data.train_dataset(), int(data.fit_rows.rows), cfg.epochs, cfg.batch_size, strategy)
        seconds = time.perf_counter() - start
        return model, {"fit_rows": int(data.fit_rows.rows), "epochs": cfg.epochs, "train_seconds": round(seconds, 2),
                       **validation(cfg, data, model)()}
    finally:
        data.close()


def _fit(cfg: RetrievalConfig, on_epoch, on_rows=None) -> dict[str, Any]:
    device = configure_tensorflow(cfg.seed, cfg.threads)
    data = RetrievalData.load(cfg)
    cfg = settled(cfg, data)  # the run records the values used
    scratch = None
    try:
        strategy = distribute.choose_strategy(cfg.devices)
        model = build_model(cfg, data, strategy)
        fit = fit_best(model, data.train_dataset(), data.fit_rows.rows, cfg.epochs, cfg.batch_size, strategy,
                       validation(cfg, data, model), f"valid_recall@{cfg.valid_k}", cfg.patience, on_epoch, on_rows)
        if not (cfg.refit and cfg.windows_back == 0):
            return save_run(cfg, data, model, fit, device, strategy)
        data.close()
        scratch = Path(tempfile.mkdtemp(prefix="funnel-validated-towers-"))
        model.query_encoder.save(str(scratch / "query_tower"))
        model.candidate_encoder.save(str(scratch / "item_tower"))
        del model  # the refit's model takes its place in memory
        served, refit = refit_towers(cfg, strategy, max(1, fit.best_epoch), on_epoch, on_rows)
        return save_run(cfg, data, served, fit, device, strategy, validated=scratch, refit=refit)
    finally:
        data.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def refit_towers(cfg: RetrievalConfig, strategy, epochs: int, on_epoch=None, on_rows=None) -> tuple[Any, dict[str, Any]]:
    """A new two-tower model trained from scratch (same seed) on every training row, the validation
    period's too, for ``epochs`` epochs: the served towers. Returns it and its figures for the manifest
    (no validation figure: it saw the validation period). ``on_epoch`` hears ``{"refit": True, ...}``."""
    tf.keras.utils.set_random_seed(cfg.seed)
    data = RetrievalData.load(cfg, every_row=True)
    try:
        model = build_model(cfg, data, strategy)
        start = time.perf_counter()
        rows = int(data.fit_rows.rows)
        history = fit_fixed(model, data.train_dataset(), rows, epochs, cfg.batch_size, strategy, on_epoch, on_rows,
                            tag={"refit": True})
        return model, {"epochs": epochs, "fit_rows": rows, "train_seconds": round(time.perf_counter() - start, 2),
                       "history": history}
    finally:
        data.close()
