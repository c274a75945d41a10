"""``funnel preprocess DATA --out PRE``: split, build feature tables, fit and apply the workflow.

Output directory (written to a temporary directory, renamed on success)::

    PRE/splits/{train,test}.parquet        raw ids: user_id, item_id, timestamp (+ price, channel, ...)
    PRE/features/{users,items}.parquet     raw feature tables as of the cutoff (serving reads these)
    PRE/workflow/                          the fitted NVTabular workflow (+ categories)
    PRE/retrieval/{train,test}/            transformed positives + schema (two-tower input)
    PRE/catalogue/{items,users}.parquet    every known item/user encoded, with *_raw ids
    PRE/preprocess.json                    config, sizes, timings, checksums

The interactions are never held whole: the split and the history aggregates are passes over
``interactions.parquet`` a batch at a time (``workflows.passes``), and the transform reads the split
files one row group per task. With ``--workers``/``--scheduler`` all three run on the Dask workers
(which then need the output folder's file system; each split is then a folder of part files, one
per task, read like the file): the driver merges the passes' counts, O(users + items), and holds the
feature tables.

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
import pyarrow.parquet as pq
from merlin.io import Dataset

from funnel.core.artifacts import PREPROCESS_MANIFEST, write_manifest
from funnel.core.config import as_dict
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir, sha256_files
from funnel.data.canonical import INTERACTIONS, read_dataset
from workflows import CONTEXT_SUBGRAPH, ITEM_SUBGRAPH, TARGET, TIME, USER_SUBGRAPH, history
from workflows.codes import grown, parquet_batches, parquet_parts, row_groups
from workflows.compute import dask_client, resolve_device
from workflows.config import PreprocessConfig, Split
from workflows.graph import build_workflow, infer_spec
from workflows.passes import history_pass, split_files
from workflows.tables import (encoded_tables, fit_on_tables, join_rows, lacking_ids, row_positions,
                              vocabulary_of_counts, weighted_vocabulary)

# Rows per transformed parquet part (a row group of the split files; the unit of Dask parallelism
# and of the join's memory).
PART_ROWS = 100_000


def _peak_rss_mb() -> int:
    """This process's peak resident memory (MB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _unix_seconds(ts: pd.Series) -> pd.Series:
    return (ts.astype("datetime64[ns]").astype(np.int64) // 1_000_000_000).astype(np.int64)


def _encode_part(path: str, group: int | None, shared: tuple, keys: dict[str, str], columns: list[str]) -> pd.DataFrame:
    """The workflow's output for one row group of a split file (``group`` None: no rows)."""
    encoded, indexes, raw_columns = shared
    file = pq.ParquetFile(path)
    raw = (file.read_row_group(group, columns=raw_columns) if group is not None
           else file.schema_arrow.empty_table().select(raw_columns)).to_pandas()
    positions = row_positions(raw, indexes, keys)
    passthrough = {c: (_unix_seconds(raw["timestamp"]) if c == TIME else raw[c]).to_numpy()
                   for c in columns if not any(c in e.columns for e in encoded.values())}
    return join_rows(positions, passthrough, encoded, columns)


def _write_rows(split_file: Path, encoded: dict[str, pd.DataFrame], keys: dict[str, str], schema,
                folder: Path) -> None:
    """The transformed rows of a split file, one part per row group, with the workflow's schema
    (merlin's writer).

    Each part is read and joined when the writer asks for it (a delayed task: on the Dask workers
    when a cluster is in use), so at most a few parts are in memory.
    """
    import dask
    import dask.dataframe as dd

    columns = schema.column_names
    raw_columns = list(dict.fromkeys([*keys.values(), "timestamp"]))
    indexes = {name: pd.Index(encoded[name][f"{key}_raw"]) for name, key in keys.items()}
    shared = dask.delayed((encoded, indexes, raw_columns), name=f"encoded-tables-{uuid.uuid4().hex}",
                          traverse=False)  # no hashing
    make = dask.delayed(_encode_part, pure=False)
    first_file = parquet_parts(split_file)[0]
    meta = _encode_part(str(first_file), None, (encoded, indexes, raw_columns), keys, columns)
    groups = row_groups(split_file) or [(first_file, None)]
    ddf = dd.from_delayed([make(str(file), g, shared, keys, columns) for file, g in groups], meta=meta,
                          verify_meta=False)
    Dataset(ddf, schema=schema, cpu=True).to_parquet(str(folder), output_files=ddf.npartitions)


def preprocess(cfg: PreprocessConfig, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the preprocessing stage and return the manifest (also written to preprocess.json)."""
    if not cfg.data or not cfg.out:
        raise FunnelError("preprocess: need a dataset directory and an output directory")
    step = step or (lambda name: None)
    device = resolve_device(cfg.device)
    ds = read_dataset(cfg.data)
    timings: dict[str, float] = {}
    peaks: dict[str, int] = {}  # the process's peak RSS (MB) by the end of each step
    clock = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        peaks[name] = _peak_rss_mb()
        clock = now
        step(name)

    with atomic_output_dir(cfg.out) as out, dask_client(device, cfg.workers, cfg.scheduler) as client:
        (out / "splits").mkdir()
        splits = split_files(ds.path / INTERACTIONS, out / "splits", str(cfg.split), cfg.test_days, PART_ROWS,
                             client=client)
        tick("split")

        context = [c for c in ("channel",) if c in splits.columns]
        stage = out / "_stage"  # Categorify's vocabularies until Workflow.save copies them; pair counts
        aggregates = history_pass(splits, ds.users(), ds.items(), context, stage / "pairs", client=client)
        users, items, stats = aggregates.users, aggregates.items, aggregates.stats
        buckets_u = {"user_mean_price": history.price_boundaries(users["user_mean_price"])} if stats.has_price else {}
        buckets_i = {"item_mean_price": history.price_boundaries(items["item_mean_price"])} if stats.has_price else {}
        user_spec = infer_spec(users, "user_id", buckets_u)
        item_spec = infer_spec(items, "item_id", buckets_i)
        (out / "features").mkdir()
        users.to_parquet(out / "features" / "users.parquet", index=False)
        items.to_parquet(out / "features" / "items.parquet", index=False)
        tick("features")

        user_in = users[user_spec.inputs]
        item_in = items[item_spec.inputs]
        bought = {"user_id": grown(stats.user["n"], len(stats.user_codes), 0),
                  "item_id": grown(stats.item["n"], len(stats.item_codes), 0)}
        codes = {"user_id": stats.user_codes, "item_id": stats.item_codes}
        # ids, context and categorical features are counted over the training purchases (a
        # feature value of a user counts once per purchase of that user); normalisation is per entity
        vocabs = {key: vocabulary_of_counts(pd.Series(bought[key], index=pd.Index(codes[key].ids(), name=key)),
                                            cfg.id_freq_threshold) for key in ("user_id", "item_id")}
        vocabs.update({col: vocabulary_of_counts(aggregates.context[col]) for col in context})
        for table, spec in ((user_in, user_spec), (item_in, item_spec)):
            weights = bought[spec.key][:len(table)]
            vocabs.update({col: weighted_vocabulary(table[col], weights, cfg.feature_freq_threshold)
                           for col in (*spec.categorical, *spec.multi_hot)})
        keys = {USER_SUBGRAPH: "user_id", ITEM_SUBGRAPH: "item_id", **({CONTEXT_SUBGRAPH: context[0]} if context else {})}
        tables = {USER_SUBGRAPH: user_in, ITEM_SUBGRAPH: item_in,
                  **({CONTEXT_SUBGRAPH: vocabs[context[0]].to_frame()} if context else {})}
        lacking = {USER_SUBGRAPH: stats.user_codes.extra.to_numpy(), ITEM_SUBGRAPH: stats.item_codes.extra.to_numpy(),
                   **({CONTEXT_SUBGRAPH: lacking_ids(vocabs[context[0]], aggregates.context_seen[context[0]])}
                      if context else {})}
        tick("vocabularies")

        workflow = build_workflow(user_spec, item_spec, context, cfg.id_freq_threshold, cfg.feature_freq_threshold,
                                  vocab_dir=str(stage), vocabs=vocabs)
        fit_tables = {USER_SUBGRAPH: user_in[bought["user_id"][:len(user_in)] > 0],
                      ITEM_SUBGRAPH: item_in[bought["item_id"][:len(item_in)] > 0]}
        head = next(parquet_batches(splits.train, ["user_id", "item_id", *context, "timestamp"], 100))
        sample = (head.head(100).assign(**{TIME: _unix_seconds(head["timestamp"])})[["user_id", "item_id", *context, TIME]]
                  .merge(user_in, on="user_id", how="left").merge(item_in, on="item_id", how="left"))
        fit_on_tables(workflow, fit_tables, sample.assign(**{TARGET: np.int8(1)}), device)
        tick("fit")

        encoded = encoded_tables(workflow, keys, tables, lacking, device)
        schema = workflow.output_schema.excluding_by_name([TARGET])
        for name, file in (("train", splits.train), ("test", splits.test)):
            _write_rows(file, encoded, keys, schema, out / "retrieval" / name)
        tick("transform_retrieval")

        (out / "catalogue").mkdir()
        encoded[ITEM_SUBGRAPH].iloc[:len(item_in)].to_parquet(out / "catalogue" / "items.parquet", index=False)
        encoded[USER_SUBGRAPH].iloc[:len(user_in)].to_parquet(out / "catalogue" / "users.parquet", index=False)
        tick("catalogue")

        workflow.save(str(out / "workflow"))
        shutil.rmtree(stage)
        tick("save")

        n_users, n_items = bought["user_id"], bought["item_id"]
        manifest = {
            "config": as_dict(cfg),
            "device": device,
            "dask": {"workers": cfg.workers, "scheduler": cfg.scheduler, "client": bool(client),
                     # each worker's peak RSS (MB) since it started (a long-lived cluster's includes earlier work)
                     **({"worker_peak_rss_mb": sorted(client.run(_peak_rss_mb).values())} if client else {})},
            "dataset": {"name": ds.name, "path": str(Path(cfg.data).resolve()), "repurchase": ds.repurchase,
                        "content_checksum": ds.meta.get("content_checksum")},
            "split": {"how": str(cfg.split), "test_days": cfg.test_days if cfg.split == Split.TIME else None,
                      "cutoff": str(splits.cutoff)},
            "rows": {
                "interactions": splits.rows["train"] + splits.rows["test"],
                "train": splits.rows["train"],
                "test": splits.rows["test"],
            },
            "users": {"total": int(len(users)), "train": int((n_users > 0).sum()),
                      "test": int(len(aggregates.test_users)), "test_cold": int((n_users[aggregates.test_users] == 0).sum())},
            "items": {"total": int(len(items)), "train": int((n_items > 0).sum()),
                      "test": int(len(aggregates.test_items)), "test_cold": int((n_items[aggregates.test_items] == 0).sum())},
            "features": {"user": asdict(user_spec), "item": asdict(item_spec), "context": context},
            "timings_s": timings,
            "rows_per_s": round((splits.rows["train"] + splits.rows["test"]) / max(sum(timings.values()), 1e-9)),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_by_step": peaks,
            "workflow_checksum": sha256_files([out / "workflow" / "workflow.pkl"]),
        }
        manifest["timings_s"]["total"] = round(sum(timings.values()), 3)
        write_manifest(out / PREPROCESS_MANIFEST, manifest)
    return manifest
