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

import glob
import resource
import shutil
import time
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
from workflows import ITEM_SUBGRAPH, TARGET, TIME, USER_SUBGRAPH, history
from workflows.compute import dask_client, resolve_device
from workflows.config import PreprocessConfig, Split
from workflows.graph import build_workflow, infer_spec
from workflows.io import encode_table
from workflows.splits import split

# Rows per staged parquet part (the unit of Dask parallelism). Small enough that the dtype sampling
# merlin does before each fit and transform phase (``Dataset.sample_dtypes``: the head of the first
# part) stays cheap: with 1M-row parts it read a whole part a dozen times, 20 of 57 s at 1M rows.
PART_ROWS = 100_000


def _stage(rows: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, folder: Path) -> str:
    """Join feature tables onto interaction rows part by part and write parquet parts.

    Parts of ``PART_ROWS`` rows bound the memory of the join and are the unit of Dask
    parallelism when NVTabular reads them back. Returns the glob of the parts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n_parts = max(1, int(np.ceil(len(rows) / PART_ROWS)))
    for i in range(n_parts):
        part = rows.iloc[i * PART_ROWS : (i + 1) * PART_ROWS]
        part.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left").to_parquet(
            folder / f"part_{i:04d}.parquet", index=False
        )
    return str(folder / "*.parquet")


def _unix_seconds(ts: pd.Series) -> pd.Series:
    return (ts.astype("datetime64[ns]").astype(np.int64) // 1_000_000_000).astype(np.int64)


def _dataset(paths: str, device: str):
    return Dataset(sorted(glob.glob(paths)), engine="parquet", cpu=device == "cpu")


def _write(dataset, out: Path, drop: list[str] | None = None) -> None:
    """Write a transformed merlin Dataset (optionally without some columns) with its schema."""
    if drop:
        schema = dataset.schema.excluding_by_name(drop)
        dataset = Dataset(dataset.to_ddf().drop(columns=drop), schema=schema)
    dataset.to_parquet(str(out), output_files=max(1, dataset.to_ddf().npartitions))


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
        stage = out / "_stage"
        rows = ["user_id", "item_id", *context, TIME]
        train_rows = train.assign(**{TIME: _unix_seconds(train["timestamp"])})[rows]
        test_rows = test.assign(**{TIME: _unix_seconds(test["timestamp"])})[rows]
        positive = {TARGET: np.int8(1)}
        train_glob = _stage(train_rows.assign(**positive), user_in, item_in, stage / "train_pos")
        test_glob = _stage(test_rows.assign(**positive), user_in, item_in, stage / "test_pos")
        tick("stage")

        workflow = build_workflow(user_spec, item_spec, context, cfg.id_freq_threshold, cfg.feature_freq_threshold,
                                  vocab_dir=str(stage))
        workflow.fit(_dataset(train_glob, device))
        tick("fit")

        _write(workflow.transform(_dataset(train_glob, device)), out / "retrieval" / "train", drop=[TARGET])
        _write(workflow.transform(_dataset(test_glob, device)), out / "retrieval" / "test", drop=[TARGET])
        tick("transform_retrieval")

        (out / "catalogue").mkdir()
        encode_table(workflow.get_subworkflow(ITEM_SUBGRAPH), item_in, "item_id", device).to_parquet(
            out / "catalogue" / "items.parquet", index=False
        )
        encode_table(workflow.get_subworkflow(USER_SUBGRAPH), user_in, "user_id", device).to_parquet(
            out / "catalogue" / "users.parquet", index=False
        )
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
