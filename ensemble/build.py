"""``funnel export RUN --out triton_repo``: build the retrieve -> filter -> rank ensemble and export it.

Repository layout (built in a temporary directory next to ``--out`` and swapped in whole)::

    triton_repo/funnel/config.pbtxt          python-backend model: the whole graph in one executor
    triton_repo/funnel/1/model.py            imports ensemble.triton_model (installed funnel)
    triton_repo/funnel/1/ensemble/           merlin-systems Ensemble (graph config only) + artifacts:
        ensemble.pkl, metadata.json          Ensemble.save (its HMAC is verified before unpickling)
        users.parquet, items.parquet         encoded user / item features (the fitted sub-workflows' output)
        item_attributes.parquet              raw item attributes (category rules, raw ids)
        inventory.parquet                    item_id, in_stock (the ops stage may replace it live)
        history.npz, trending.npz            purchases per user; trending items and their shares
        item_item.npz                        EASE item-item weights (from the run; empty without one)
        new_items.npz                        new items (never bought in training, on sale) and their freshness
        query_tower/, ranker/                SavedModels
        item_index.faiss, index.json         Faiss index and its measured recall
        item_vectors.npy                     item embeddings (scores for non-retrieved candidates)
    triton_repo/funnel/1/ensemble/export.json  the export manifest (also printed by the CLI)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.dag import ColumnSelector, postorder_iter_nodes
from merlin.schema import Schema
from merlin.systems.dag.ensemble import Ensemble

from ensemble.config import ExcludeSeen, ExportConfig, Inventory, TfRuntime
from workflows.candidates import RANKER_SCORE, NewItems
from workflows.item_item import ItemItem
from workflows.purchases import PurchaseHistory
from ensemble.index import build_index, save_index
from ensemble.ops import FilterCandidates, OrderItems, RankCandidates, RetrieveCandidates, UserFeatures
from ensemble.ops.base import EXCLUDE, K, REQUEST_COLUMNS, SEED, TEMPERATURE, USER_ID, column
from ensemble.ops.online import OnlineHistory
from ensemble.online_store import open_store
from ensemble.savedmodel import NUMPY_TO_TRITON, SavedModelRunner, signature_spec
from funnel.core.artifacts import (EXPORT_MANIFEST, MODEL_NAME, MODEL_VERSION, ensemble_dir, read_preprocess_manifest,
                                   read_ranking_manifest, read_retrieval_manifest, run_pre_dir, write_manifest)
from funnel.core.config import as_dict
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir, sha256_files
from funnel.core.signing import sign_files
from funnel.core.versions import package_versions
from funnel.data.canonical import read_dataset


def request_schema():
    """The graph's inputs (after the runtime broadcast request-level values to every user)."""
    return Schema([column(USER_ID, np.object_), column(K, np.int32), column(EXCLUDE, np.object_, True),
                   column(TEMPERATURE, np.float32), column(SEED, np.int64)])


def _load_run(run: Path) -> tuple[dict, dict | None, dict, Path]:
    retrieval = read_retrieval_manifest(run)
    pre = run_pre_dir(run, retrieval)
    return retrieval, read_ranking_manifest(run), read_preprocess_manifest(pre), pre


def write_tables(cfg: ExportConfig, run: Path, pre: Path, pre_manifest: dict, dest: Path) -> dict[str, Any]:
    """Write every data artifact of the graph into ``dest``; return facts for the manifest."""
    dataset = read_dataset(pre_manifest["dataset"]["path"])
    users = pd.read_parquet(pre / "catalogue" / "users.parquet")
    items = pd.read_parquet(pre / "catalogue" / "items.parquet")
    users.to_parquet(dest / "users.parquet", index=False)
    items.to_parquet(dest / "items.parquet", index=False)

    emb = pd.read_parquet(run / "item_embeddings.parquet").set_index("item_id")
    missing = items.loc[~items["item_id_raw"].isin(emb.index), "item_id_raw"]
    if len(missing):
        raise FunnelError(f"{run / 'item_embeddings.parquet'}: no embedding for item {missing.iloc[0]!r} "
                          f"({len(missing)} missing); retrain or re-run preprocessing")
    vectors = np.ascontiguousarray(emb.loc[items["item_id_raw"]].to_numpy(np.float32))
    np.save(dest / "item_vectors.npy", vectors)

    raw_items = dataset.items()
    attrs = items[["item_id_raw"]].rename(columns={"item_id_raw": "item_id"}).merge(raw_items, on="item_id", how="left")
    for col, _ in cfg.category_rules().items():
        if col not in attrs.columns:
            raise FunnelError(f"export: exclude_categories column {col!r} is not an item attribute "
                              f"(have: {', '.join(c for c in attrs.columns if c != 'item_id')})")
    as_of = pd.Timestamp(pre_manifest["split"]["cutoff"])
    in_stock, inventory = stock(cfg, dataset, attrs, as_of)
    attrs.drop(columns=[c for c in ("in_stock",) if c in attrs]).to_parquet(dest / "item_attributes.parquet", index=False)
    pd.DataFrame({"item_id": attrs["item_id"].astype(str), "in_stock": in_stock.to_numpy()}).to_parquet(
        dest / "inventory.parquet", index=False)

    train = pd.read_parquet(pre / "splits" / "train.parquet", columns=["user_id", "item_id", "timestamp"])
    user_index, item_index = pd.Index(users["user_id_raw"]), pd.Index(items["item_id_raw"])
    PurchaseHistory.build(train, user_index, item_index, as_of).save(dest / "history.npz")

    recent = train[train["timestamp"] >= train["timestamp"].max() - pd.Timedelta(days=cfg.trending_days)]
    counts = recent["item_id"].value_counts()
    rows = item_index.get_indexer(counts.index)
    keep = rows >= 0
    np.savez(dest / "trending.npz", items=rows[keep].astype(np.int32),
             share=(counts.to_numpy()[keep] / max(counts.sum(), 1)).astype(np.float32))

    # new items: nobody bought them in training, on sale in the stock this export serves, and (with a
    # stock history) for how long as of that stock's time
    on_sale = pd.Series(in_stock.to_numpy(), index=attrs["item_id"].astype(str).to_numpy())
    flags = on_sale.reindex(item_index.astype(str)).fillna(True).to_numpy(dtype=bool)
    stock_time = as_of if cfg.inventory == Inventory.CUTOFF else dataset.interactions(["timestamp"])["timestamp"].max()
    new = NewItems.at(pd.unique(train["item_id"]), item_index.to_numpy(), flags,
                      dataset.days_on_sale_at(item_index.to_numpy(), stock_time))
    new.save(dest / "new_items.npz")

    if (run / "item_item.npz").exists():  # fitted and tuned by `funnel train ranking`
        shutil.copy2(run / "item_item.npz", dest / "item_item.npz")
    else:  # no item-item source: empty weights, every item-item score 0
        ItemItem.empty(len(items)).save(dest / "item_item.npz")

    shutil.copytree(run / "query_tower", dest / "query_tower")
    if (run / "ranker").exists():
        shutil.copytree(run / "ranker", dest / "ranker")
    return {"users": int(len(users)), "items": int(len(items)), "as_of": str(as_of), "vectors": vectors,
            "in_stock": int(in_stock.sum()), "inventory": inventory, "trending_items": int(keep.sum()),
            "new_items": int(len(new.rows))}


def stock(cfg: ExportConfig, dataset, attrs: pd.DataFrame, as_of: pd.Timestamp) -> tuple[pd.Series, str]:
    """In-stock flags for the catalogue (``attrs`` rows) and a description for the manifest.

    ``latest``: the dataset's current ``in_stock`` (what production serves). ``cutoff``: the stock
    as of the training cutoff from the dataset's stock history, so an evaluation of the export
    on the test period knows no later stock-out; without a history every item counts as in stock.
    """
    if cfg.inventory == Inventory.LATEST:
        if "in_stock" not in attrs:
            return pd.Series(True, index=attrs.index), "latest (no in_stock column: every item in stock)"
        return attrs["in_stock"].fillna(True).astype(bool), "latest (the dataset's current stock)"
    flags = dataset.in_stock_at(attrs["item_id"].to_numpy(), as_of)
    if flags is None:
        return pd.Series(True, index=attrs.index), f"as of {as_of} (no stock history: every item in stock)"
    return pd.Series(flags, index=attrs.index), f"as of {as_of} (stock history)"


def sample_queries(dest: Path, users: int, seed: int) -> np.ndarray:
    """Query-tower embeddings of up to ``users`` known users (the index's recall check)."""
    table = pd.read_parquet(dest / "users.parquet")
    if len(table) > users:
        table = table.sample(users, random_state=seed)
    tower = SavedModelRunner(dest / "query_tower")
    return tower({c: table[c].to_numpy() for c in table.columns if c != "user_id_raw"})


def build_graph(cfg: ExportConfig, dest: Path, repurchase: bool, use_ranker: bool, as_of: str = "",
                blend_weights: dict[str, float] | None = None, affinity: list[str] | None = None,
                shortlist: tuple[dict[str, float], int] = ({}, 0)):
    """The merlin-systems Ensemble: request >> UserFeatures >> Retrieve >> Filter >> Rank >> Order."""
    users = pd.read_parquet(dest / "users.parquet")
    items = pd.read_parquet(dest / "items.parquet")
    user_cols = [c for c in users.columns if c != "user_id_raw"]
    item_cols = [c for c in items.columns if c != "item_id_raw"]
    exclude_seen = cfg.exclude_seen
    if exclude_seen == ExcludeSeen.AUTO:
        exclude_seen = ExcludeSeen.NEVER if repurchase else ExcludeSeen.ALL
    graph = ColumnSelector(REQUEST_COLUMNS) >> UserFeatures(dest, user_cols, {c: str(users[c].dtype) for c in user_cols})
    retrieve = RetrieveCandidates(dest, cfg.candidates, cfg.recent, cfg.trending, repurchase, cfg.item_item,
                                  cfg.new_items)
    if cfg.features:
        open_store(cfg.features)  # fail now, not at serving time
        online = OnlineHistory(dest, cfg.features, as_of, cfg.recent)
        retrieve.online_width = online.width
        graph = graph >> online
    graph = (
        graph
        >> retrieve
        >> FilterCandidates(dest, exclude_seen, cfg.seen_days, cfg.out_of_stock, cfg.category_rules(),
                            cfg.exclude_items)
        >> RankCandidates(dest, item_cols, use_ranker, cfg.trending_for_known, blend_weights, affinity, *shortlist,
                          new_item_slots=cfg.new_item_slots)
        >> OrderItems(dest, cfg.max_k)
    )
    return Ensemble(graph, request_schema()), exclude_seen


# One row per user (the batch dimension): a request of n users sends user_id [n, 1] and repeats its
# k / temperature / seed ([n, 1]) and exclude_items ([n, E]) on every row. Concurrent requests are
# queued by Triton's dynamic batcher and answered together (ensemble/triton_model.py).
CONFIG_PBTXT = """name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "user_id" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "exclude_items" data_type: TYPE_STRING dims: [ -1 ] optional: true }},
  {{ name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "item_ids" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "sources" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "variant" data_type: TYPE_STRING dims: [ 1 ] }}
]
{batcher}instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def model_config(name: str, max_batch: int, instances: int, batch_delay_us: int) -> str:
    """The funnel model's config.pbtxt (``batch_delay_us`` -1: no dynamic batcher)."""
    batcher = "" if batch_delay_us < 0 else (
        f"dynamic_batching {{ max_queue_delay_microseconds: {int(batch_delay_us)} }}\n")
    return CONFIG_PBTXT.format(name=name, max_batch=int(max_batch), instances=int(instances), batcher=batcher)

TOWER_PBTXT = """name: "{name}"
{backend}
max_batch_size: 0
input [
{inputs}
]
output [
  {{ name: "{output}" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
]
{instances}"""

TOWER_PY = '''"""Triton python-backend model for one funnel SavedModel (--tf-runtime python-bls)."""
from ensemble.triton_tower import TritonPythonModel  # noqa: F401
'''


def write_model_runtime(tmp: Path, dest: Path, name: str, runtime: str, instances: int) -> tuple[str, dict]:
    """Put the SavedModel ``dest/name`` into its own Triton model; return its model name and signature."""
    spec = signature_spec(dest / name)
    model = f"{MODEL_NAME}_{name}"
    (tmp / model / "1").mkdir(parents=True)
    shutil.copytree(dest / name, tmp / model / "1" / "model.savedmodel")
    inputs = ",\n".join(f'  {{ name: "{n}" data_type: {NUMPY_TO_TRITON[d]} dims: [ -1{", 1" if r == 2 else ""} ] }}'
                        for n, (d, r) in spec["inputs"].items())
    if runtime == TfRuntime.TENSORFLOW:
        backend, group = 'platform: "tensorflow_savedmodel"', ""  # Triton places it (GPU when there is one)
    else:
        backend, group = 'backend: "python"', f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
        (tmp / model / "1" / "model.py").write_text(TOWER_PY)
    (tmp / model / "config.pbtxt").write_text(TOWER_PBTXT.format(name=model, backend=backend, inputs=inputs,
                                                                output=spec["output"], instances=group))
    return model, spec


MODEL_PY = '''"""Triton python-backend entry point of a funnel export (the code lives in the installed funnel)."""
from ensemble.triton_model import TritonPythonModel  # noqa: F401
'''


def serving_blend(ranking: dict[str, Any] | None) -> dict[str, float]:
    """The weights that order candidates: the blend with the ranker's logit where its gate let it in,
    the blend of the sources' scores otherwise (runs without a ranking stage: the two-tower score).
    Runs trained before the ranker joined the blend order by the ranker alone."""
    blend = (ranking or {}).get("blend") or {}
    if ranking and ranking.get("use_ranker", True):
        return (blend.get("with_ranker") or {}).get("weights") or {RANKER_SCORE: 1.0}
    return blend.get("weights") or {"retrieval_score": 1.0}


def serving_shortlist(ranking: dict[str, Any] | None, override: int = -1) -> tuple[dict[str, float], int]:
    """The cascade's first stage where the ranker is used: the sources' blend and how many of each user's
    best candidates by it the ranker scores: ``override`` where >= 0, else the trained value (0: all, as
    runs trained before the shortlist did)."""
    if not (ranking and ranking.get("use_ranker", True)):
        return {}, 0
    first = ((ranking.get("blend") or {}).get("weights")) or {}
    n = override if override >= 0 else int((ranking.get("config") or {}).get("shortlist", 0))
    return (first, n) if first and n else ({}, 0)


def export(cfg: ExportConfig, progress=None) -> dict[str, Any]:
    """Build the ensemble from a run and write a complete Triton repository atomically."""
    progress = progress or (lambda step: None)
    run = Path(cfg.run)
    retrieval, ranking, pre_manifest, pre = _load_run(run)
    repurchase = bool(pre_manifest["dataset"]["repurchase"])
    use_ranker = bool(ranking and ranking.get("use_ranker", True))
    blend_weights = serving_blend(ranking)
    shortlist = serving_shortlist(ranking, cfg.ranker_shortlist)
    start = time.perf_counter()
    out = Path(cfg.out)
    with atomic_output_dir(out) as tmp:
        if (out / "README.md").exists():
            shutil.copy2(out / "README.md", tmp / "README.md")
        dest = ensemble_dir(tmp)
        dest.mkdir(parents=True)
        progress("tables")
        facts = write_tables(cfg, run, pre, pre_manifest, dest)
        vectors = facts.pop("vectors")
        progress("index")
        queries = sample_queries(dest, 1000, cfg.seed)
        index, index_info = build_index(vectors, queries, min(cfg.candidates, len(vectors)), cfg.index, cfg.seed)
        save_index(index, dest / "item_index.faiss")
        write_manifest(dest / "index.json", index_info)
        progress("graph")
        affinity = ((ranking or {}).get("data") or {}).get("affinity_columns") or []
        ensemble, exclude_seen = build_graph(cfg, dest, repurchase, use_ranker, facts["as_of"], blend_weights, affinity,
                                             shortlist)
        runtime = TfRuntime.PYTHON if cfg.tf_runtime == TfRuntime.AUTO else cfg.tf_runtime
        if runtime != TfRuntime.PYTHON:
            for node in postorder_iter_nodes(ensemble.graph.output_node):
                op = node.op
                if isinstance(op, RetrieveCandidates):
                    op.triton_model, op.triton_spec = write_model_runtime(tmp, dest, "query_tower", runtime, cfg.instances)
                elif isinstance(op, RankCandidates) and op.use_ranker:
                    op.triton_model, op.triton_spec = write_model_runtime(tmp, dest, "ranker", runtime, cfg.instances)
        ensemble.save(str(dest))
        for node in postorder_iter_nodes(ensemble.graph.output_node):
            node.op.save_artifacts(str(dest))
        (tmp / MODEL_NAME / "config.pbtxt").write_text(model_config(MODEL_NAME, cfg.max_batch, cfg.instances,
                                                                    cfg.batch_delay_us))
        (tmp / MODEL_NAME / "1" / "model.py").write_text(MODEL_PY)
        manifest = {
            "model": MODEL_NAME,
            "version": MODEL_VERSION,
            "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
            "run": str(run.resolve()),
            "config": as_dict(cfg),
            "data": {"content_checksum": pre_manifest["dataset"]["content_checksum"],
                     "dataset": pre_manifest["dataset"]["name"], "repurchase": repurchase, **facts},
            # metrics: the early-stopped towers' validation figures; with a refit the served ones trained again
            # on every training row for the best epoch's count (retrieval.json's "refit")
            "models": {"query_tower": {"epochs": retrieval["epochs_run"], "metrics": retrieval["metrics"],
                                       "refit_epochs": (retrieval.get("refit") or {}).get("epochs")},
                       "ranker": ({"used": use_ranker, "metrics": ranking["metrics"]} if ranking else None),
                       "item_item": {"candidates": cfg.item_item, **((ranking or {}).get("item_item") or {"fitted": False})},
                       "blend_weights": blend_weights, "ranker_shortlist": shortlist[1]},
            "index": index_info,
            "trending_for_known": str(cfg.trending_for_known),
            "filters": {"exclude_seen": str(exclude_seen), "seen_days": cfg.seen_days, "out_of_stock": cfg.out_of_stock,
                        "exclude_categories": cfg.category_rules(), "exclude_items": cfg.exclude_items,
                        "online_features": str(Path(cfg.features).resolve()) if cfg.features else None},
            "limits": {"k": cfg.k, "max_k": cfg.max_k, "max_batch": cfg.max_batch},
            "tf_runtime": str(runtime),
            "ensemble_checksum": sha256_files([dest / "ensemble.pkl"]),
            "ensemble_signature": sign_files([dest / "ensemble.pkl"]),
            "versions": package_versions(),
            "export_seconds": round(time.perf_counter() - start, 2),
        }
        write_manifest(dest / EXPORT_MANIFEST, manifest)
    return manifest
