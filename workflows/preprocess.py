"""``funnel preprocess DATA --out PRE``: split, build feature tables, fit and apply the workflow.

Output directory (written to a temporary directory, renamed on success)::

    PRE/splits/{train,test}.parquet        raw ids: user_id, item_id, timestamp (+ price, channel, ...)
    PRE/features/{users,items}.parquet     raw feature tables as of the cutoff (serving reads these)
    PRE/workflow/                          the fitted NVTabular workflow (+ categories)
    PRE/retrieval/{train,test}/            transformed positives + schema (two-tower input)
    PRE/catalogue/{items,users}.parquet    every known item/user encoded, with *_raw ids
    PRE/preprocess.json                    config, sizes, timings, checksums

The ranker's rows are built at training time from the retriever's candidates
(``models.ranking_data``); its schema comes from the saved workflow, so no labelled folder with
random negatives is written here.
"""

from __future__ import annotations

import resource
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.io import Dataset

from funnel.core.artifacts import PREPROCESS_MANIFEST, write_manifest
from funnel.core.config import as_dict
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir, sha256_files
from funnel.data.canonical import read_dataset
from workflows import CONTEXT_SUBGRAPH, ITEM_SUBGRAPH, TARGET, TIME, USER_SUBGRAPH, history
from workflows.compute import dask_client, resolve_device
from workflows.config import PreprocessConfig, Split
from workflows.graph import build_workflow, infer_spec
from workflows.splits import split
from workflows.tables import (encoded_tables, fit_on_tables, join_rows, parts, row_positions, vocabulary,
                              weighted_vocabulary)

# Rows per transformed parquet part (the unit of Dask parallelism and of the join's memory).
PART_ROWS = 100_000


def _unix_seconds(ts: pd.Series) -> pd.Series:
    return (ts.astype("datetime64[ns]").astype(np.int64) // 1_000_000_000).astype(np.int64)


def _write_rows(rows: pd.DataFrame, encoded: dict[str, pd.DataFrame], keys: dict[str, str], schema,
               folder: Path) -> None:
    """The transformed rows in parts of ``PART_ROWS``, with the workflow's schema (merlin's writer).

    Each part is joined when the writer asks for it (a delayed task: on the Dask workers when a
    cluster is in use), so at most a few parts are in memory besides the raw rows.
    """
    import dask
    import dask.dataframe as dd

    columns = schema.column_names
    positions = row_positions(rows, encoded, keys)
    passthrough = {c: rows[c].to_numpy() for c in columns if not any(c in e.columns for e in encoded.values())}
    shared = dask.delayed(encoded, name=f"encoded-tables-{uuid.uuid4().hex}", traverse=False)  # no hashing
    make = dask.delayed(join_rows, pure=False)
    meta = join_rows({n: p[:0] for n, p in positions.items()}, {c: v[:0] for c, v in passthrough.items()},
                     encoded, columns)
    ddf = dd.from_delayed([make({n: p[part] for n, p in positions.items()},
                                {c: v[part] for c, v in passthrough.items()}, shared, columns)
                           for part in parts(len(rows), PART_ROWS)], meta=meta, verify_meta=False)
    Dataset(ddf, schema=schema, cpu=True).to_parquet(str(folder), output_files=ddf.npartitions)


def preprocess(cfg: PreprocessConfig, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the preprocessing stage and return the manifest (also written to preprocess.json)."""
    if not cfg.data or not cfg.out:
        raise FunnelError("preprocess: need a dataset directory and an output directory")
    step = step or (lambda name: None)
    device = resolve_device(cfg.device)
    ds = read_dataset(cfg.data)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        step(name)

    interactions = ds.interactions()
    result = split(interactions, cfg.split, cfg.test_days)
    train, test = result.train, result.test
    tick("split")

    users = history.user_table(train, ds.users(), result.cutoff)
    items = history.item_table(train, ds.items(), result.cutoff)
    buckets_u = {"user_mean_price": history.price_boundaries(users["user_mean_price"])} if "price" in train else {}
    buckets_i = {"item_mean_price": history.price_boundaries(items["item_mean_price"])} if "price" in train else {}
    user_spec = infer_spec(users, "user_id", buckets_u)
    item_spec = infer_spec(items, "item_id", buckets_i)
    context = [c for c in ("channel",) if c in train.columns]
    tick("features")

    with atomic_output_dir(cfg.out) as out, dask_client(device, cfg.workers, cfg.scheduler) as client:
        (out / "splits").mkdir()
        cols = list(interactions.columns)  # user_id, item_id, timestamp first, then price, channel, ...
        train[cols].to_parquet(out / "splits" / "train.parquet", index=False)
        test[cols].to_parquet(out / "splits" / "test.parquet", index=False)
        (out / "features").mkdir()
        users.to_parquet(out / "features" / "users.parquet", index=False)
        items.to_parquet(out / "features" / "items.parquet", index=False)

        user_in = users[user_spec.inputs]
        item_in = items[item_spec.inputs]
        stage = out / "_stage"  # Categorify's vocabularies until Workflow.save copies them
        stage.mkdir()
        rows = ["user_id", "item_id", *context, TIME]
        train_rows = train.assign(**{TIME: _unix_seconds(train["timestamp"])})[rows]
        test_rows = test.assign(**{TIME: _unix_seconds(test["timestamp"])})[rows]
        # ids, context and categorical features are counted over the training purchases (a
        # feature value of a user counts once per purchase of that user); normalisation is per entity
        vocabs = {key: vocabulary(train[key], cfg.id_freq_threshold) for key in ("user_id", "item_id")}
        vocabs.update({col: vocabulary(train[col]) for col in context})
        for table, spec in ((user_in, user_spec), (item_in, item_spec)):
            weights = table[spec.key].map(train[spec.key].value_counts()).fillna(0).to_numpy(np.int64)
            vocabs.update({col: weighted_vocabulary(table[col], weights, cfg.feature_freq_threshold)
                           for col in (*spec.categorical, *spec.multi_hot)})
        keys = {USER_SUBGRAPH: "user_id", ITEM_SUBGRAPH: "item_id", **({CONTEXT_SUBGRAPH: context[0]} if context else {})}
        tables = {USER_SUBGRAPH: user_in, ITEM_SUBGRAPH: item_in,
                  **({CONTEXT_SUBGRAPH: vocabs[context[0]].to_frame()} if context else {})}
        tick("vocabularies")

        workflow = build_workflow(user_spec, item_spec, context, cfg.id_freq_threshold, cfg.feature_freq_threshold,
                                  vocab_dir=str(stage), vocabs=vocabs)
        fit_tables = {USER_SUBGRAPH: user_in[user_in["user_id"].isin(train["user_id"].unique())],
                      ITEM_SUBGRAPH: item_in[item_in["item_id"].isin(train["item_id"].unique())]}
        sample = train_rows.head(100).merge(user_in, on="user_id", how="left").merge(item_in, on="item_id",
                                                                                      how="left")
        fit_on_tables(workflow, fit_tables, sample.assign(**{TARGET: np.int8(1)}), device)
        tick("fit")

        encoded = encoded_tables(workflow, keys, tables, [train_rows, test_rows], device)
        schema = workflow.output_schema.excluding_by_name([TARGET])
        for name, frame in (("train", train_rows), ("test", test_rows)):
            _write_rows(frame, encoded, keys, schema, out / "retrieval" / name)
        tick("transform_retrieval")

        (out / "catalogue").mkdir()
        encoded[ITEM_SUBGRAPH].iloc[:len(item_in)].to_parquet(out / "catalogue" / "items.parquet", index=False)
        encoded[USER_SUBGRAPH].iloc[:len(user_in)].to_parquet(out / "catalogue" / "users.parquet", index=False)
        tick("catalogue")

        workflow.save(str(out / "workflow"))
        shutil.rmtree(stage)
        tick("save")

        manifest = {
            "config": as_dict(cfg),
            "device": device,
            "dask": {"workers": cfg.workers, "scheduler": cfg.scheduler, "client": bool(client)},
            "dataset": {"name": ds.name, "path": str(Path(cfg.data).resolve()), "repurchase": ds.repurchase,
                        "content_checksum": ds.meta.get("content_checksum")},
            "split": {"how": str(cfg.split), "test_days": cfg.test_days if cfg.split == Split.TIME else None,
                      "cutoff": str(result.cutoff)},
            "rows": {
                "interactions": int(len(interactions)),
                "train": int(len(train)),
                "test": int(len(test)),
            },
            "users": {"total": int(len(users)), "train": int(train["user_id"].nunique()),
                      "test": int(test["user_id"].nunique()),
                      "test_cold": int((~test["user_id"].drop_duplicates().isin(train["user_id"])).sum())},
            "items": {"total": int(len(items)), "train": int(train["item_id"].nunique()),
                      "test": int(test["item_id"].nunique()),
                      "test_cold": int((~test["item_id"].drop_duplicates().isin(train["item_id"])).sum())},
            "features": {"user": asdict(user_spec), "item": asdict(item_spec), "context": context},
            "timings_s": timings,
            "rows_per_s": round(len(interactions) / max(sum(timings.values()), 1e-9)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workflow_checksum": sha256_files([out / "workflow" / "workflow.pkl"]),
        }
        manifest["timings_s"]["total"] = round(sum(timings.values()), 3)
        write_manifest(out / PREPROCESS_MANIFEST, manifest)
    return manifest
