"""Online features in a Feast feature repository: user and item features, stock, recent purchases.

``funnel features apply RUN --repo DIR`` writes a Feast repository (``feature_store.yaml``,
SQLite online store by default, Redis with ``--redis``), registers four feature views and
materializes them from the run's preprocessing output:

- ``user_features`` / ``item_features``: the raw feature tables the NVTabular workflow reads
  (as of the training cutoff); ``funnel check-skew`` transforms them with the saved
  sub-workflows and compares with what the served ensemble uses;
- ``item_stock``: ``in_stock`` per item;
- ``user_recent``: each user's latest distinct purchases (raw item ids, most recent first) and
  their unix times.

``funnel events ingest`` updates ``user_recent`` and ``item_stock`` at once; an export made with
``--features DIR`` reads ``user_recent`` on every request (purchases newer than the export), so
the next answer sees them without re-export or retrain.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
import yaml

from ensemble.inventory import update_inventory
from ensemble.online_store import feast_module, open_store, read_recent
from funnel.core.artifacts import ensemble_dir, read_preprocess_manifest, run_pre_dir
from funnel.core.errors import FunnelError
from workflows import ITEM_SUBGRAPH, USER_SUBGRAPH
from workflows.history import latest_purchases
from workflows.io import encode_table, load_workflow

RECENT = 50  # purchases kept per user in user_recent
TTL = dt.timedelta(days=3650)
VIEWS = ("user_features", "item_features", "item_stock", "user_recent")


def _dtype(series: pd.Series):
    from feast.types import Bool, Float32, Float64, Int64, String

    if pd.api.types.is_bool_dtype(series):
        return Bool
    if pd.api.types.is_integer_dtype(series):
        return Int64
    if pd.api.types.is_float_dtype(series):
        return Float32 if series.dtype == np.float32 else Float64
    return String


def feast_redis(url: str) -> str:
    """A redis:// URL as Feast's connection string ("host:port,db=N[,password=...][,ssl=true]")."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise FunnelError(f"{url}: expected redis://HOST:PORT[/DB]")
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={int(parsed.path.strip('/') or 0)}"]
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def _stamp(frame: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    return frame.assign(event_timestamp=pd.Timestamp(when).tz_localize("UTC") if pd.Timestamp(when).tzinfo is None
                        else pd.Timestamp(when))


def recent_table(interactions: pd.DataFrame, limit: int = RECENT) -> pd.DataFrame:
    """user_id -> recent_items (raw ids as text, latest first, distinct) and recent_times (unix s)."""
    frame = interactions.assign(user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str))
    frame = latest_purchases(frame).groupby("user_id", sort=False).head(limit)
    secs = (pd.to_datetime(frame["last"]).astype("int64") // 10**9).astype("int64")
    grouped = frame.assign(t=secs).groupby("user_id", sort=False)
    return pd.DataFrame({"recent_items": grouped["item_id"].apply(list), "recent_times": grouped["t"].apply(list)}).reset_index()


def current_stock(pre_manifest: dict, item_ids: pd.Series) -> pd.DataFrame:
    """``item_id`` (text), ``in_stock``: the dataset's current stock (every item in stock without one)."""
    from funnel.data.canonical import read_dataset

    raw = read_dataset(pre_manifest["dataset"]["path"]).items()
    flags = (raw.set_index(raw["item_id"].astype(str))["in_stock"] if "in_stock" in raw
             else pd.Series(True, index=raw["item_id"].astype(str)))
    return pd.DataFrame({"item_id": item_ids, "in_stock": item_ids.map(flags).fillna(True).astype(bool)})


def apply(run: str | Path, repo: str | Path, redis_url: str | None = None) -> dict[str, Any]:
    """Create (or replace) the feature repository for a run and materialize every view."""
    feast = feast_module()
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Bool, Int64, String

    run, repo = Path(run), Path(repo)
    pre = run_pre_dir(run)
    pre_manifest = read_preprocess_manifest(pre)
    as_of = pd.Timestamp(pre_manifest["split"]["cutoff"])
    users = pd.read_parquet(pre / "features" / "users.parquet")
    items = pd.read_parquet(pre / "features" / "items.parquet")
    users["user_id"] = users["user_id"].astype(str)
    items["item_id"] = items["item_id"].astype(str)
    train = pd.read_parquet(pre / "splits" / "train.parquet", columns=["user_id", "item_id", "timestamp"])
    tables = {
        "user_features": _stamp(users, as_of),
        "item_features": _stamp(items, as_of),
        "item_stock": _stamp(current_stock(pre_manifest, items["item_id"]), as_of),
        "user_recent": _stamp(recent_table(train), as_of),
    }
    if redis_url:  # fail before writing anything
        try:
            redis.Redis.from_url(redis_url).ping()
        except redis.exceptions.ConnectionError as exc:
            raise FunnelError(f"{redis_url}: cannot reach Redis ({exc})") from None
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "data").mkdir(exist_ok=True)
    online = ({"type": "redis", "connection_string": feast_redis(redis_url)} if redis_url
              else {"type": "sqlite", "path": str((repo / "online.db").resolve())})
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "funnel", "registry": str((repo / "registry.db").resolve()), "provider": "local",
        "online_store": online, "offline_store": {"type": "file"}, "entity_key_serialization_version": 2}))
    for name, frame in tables.items():
        frame.to_parquet(repo / "data" / f"{name}.parquet", index=False)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)

    def view(name: str, entity, fields: list) -> FeatureView:
        src = FileSource(path=str((repo / "data" / f"{name}.parquet").resolve()), timestamp_field="event_timestamp")
        return FeatureView(name=name, entities=[entity], schema=fields, source=src, ttl=TTL, online=True)

    def fields(frame: pd.DataFrame, key: str) -> list:
        return [Field(name=c, dtype=_dtype(frame[c])) for c in frame.columns if c not in (key, "event_timestamp")]

    views = [
        view("user_features", user, fields(tables["user_features"], "user_id")),
        view("item_features", item, fields(tables["item_features"], "item_id")),
        view("item_stock", item, [Field(name="in_stock", dtype=Bool)]),
        view("user_recent", user, [Field(name="recent_items", dtype=Array(String)),
                                   Field(name="recent_times", dtype=Array(Int64))]),
    ]
    store = feast.FeatureStore(repo_path=str(repo))
    store.apply([user, item, *views])
    for name, frame in tables.items():
        store.write_to_online_store(name, frame)
    manifest = {"run": str(run.resolve()), "pre": str(pre.resolve()), "as_of": str(as_of),
                "online_store": online["type"], "rows": {k: int(len(v)) for k, v in tables.items()}}
    (repo / "funnel_features.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_events(source: str) -> pd.DataFrame:
    """Events from JSON lines (a file or '-' for stdin) or parquet: purchases and stock updates.

    A purchase: ``{"type": "purchase", "user_id": ..., "item_id": ..., "timestamp": ...}``
    (timestamp optional, default now); a stock update: ``{"type": "stock", "item_id": ...,
    "in_stock": false}``. Errors name the line and field.
    """
    if source != "-" and not Path(source).exists():
        raise FunnelError(f"{source}: events file not found")
    if source != "-" and source.endswith(".parquet"):
        frame = pd.read_parquet(source)
    else:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FunnelError(f"{source}: line {n}: not JSON ({exc.msg})") from None
        frame = pd.DataFrame(rows)
    if frame.empty:
        raise FunnelError(f"{source}: no events")
    if "type" not in frame:
        raise FunnelError(f"{source}: field 'type' missing (purchase or stock)")
    bad = frame.loc[~frame["type"].isin(["purchase", "stock"]), "type"]
    if len(bad):
        raise FunnelError(f"{source}: event {bad.index[0] + 1}: type {bad.iloc[0]!r} is not purchase or stock")
    for kind, needed in (("purchase", ["user_id", "item_id"]), ("stock", ["item_id", "in_stock"])):
        part = frame[frame["type"] == kind]
        for col in needed:
            if len(part) and (col not in part or part[col].isna().any()):
                first = part.index[0] if col not in part else part.index[part[col].isna()][0]
                raise FunnelError(f"{source}: event {first + 1} ({kind}): field '{col}' missing")
    return frame


def ingest(repo: str | Path, events: pd.DataFrame, triton_repo: str | Path | None = None) -> dict[str, int]:
    """Apply purchases to ``user_recent`` and stock updates to ``item_stock`` (and to an export's inventory)."""
    store = open_store(repo)
    now = pd.Timestamp.now(tz="UTC")
    done = {"purchases": 0, "users": 0, "stock": 0}
    purchases = events[events["type"] == "purchase"].copy()
    if len(purchases):
        ts = purchases["timestamp"] if "timestamp" in purchases else pd.Series(pd.NaT, index=purchases.index)
        purchases["timestamp"] = pd.to_datetime(ts, utc=True).fillna(now).dt.tz_localize(None)
        users = purchases["user_id"].astype(str).unique().tolist()
        items, times = read_recent(store, users)
        old = pd.DataFrame([(u, i, pd.Timestamp(t, unit="s")) for u, its, tss in zip(users, items, times)
                            for i, t in zip(its, tss)], columns=["user_id", "item_id", "timestamp"])
        merged = recent_table(pd.concat([old, purchases[["user_id", "item_id", "timestamp"]]], ignore_index=True))
        store.write_to_online_store("user_recent", _stamp(merged, now))
        done.update(purchases=int(len(purchases)), users=len(users))
    stock = events[events["type"] == "stock"]
    if len(stock):
        frame = pd.DataFrame({"item_id": stock["item_id"].astype(str), "in_stock": stock["in_stock"].astype(bool)})
        store.write_to_online_store("item_stock", _stamp(frame.drop_duplicates("item_id", keep="last"), now))
        if triton_repo:
            update_inventory(triton_repo, frame)
        done["stock"] = int(len(frame))
    return done


def check_skew(run: str | Path, repo: str | Path, users: int = 200, seed: int = 0,
               export: str | Path | None = None) -> dict[str, Any]:
    """Per feature: does the online store, run through the saved sub-workflows, give what serving uses?

    For a sample of users and items, the raw features in the online store (``user_features``,
    ``item_features``) are transformed with the fitted NVTabular user/item sub-workflows and
    compared with the encoded features the ensemble serves (the export's tables, or the
    preprocessing catalogue every export packages). Returns the share of rows that match per
    feature and the first mismatching id.
    """
    run = Path(run)
    pre = run_pre_dir(run)
    store = open_store(repo)
    workflow = load_workflow(pre)
    if export:
        base = ensemble_dir(export)
        served = {"user": pd.read_parquet(base / "users.parquet"), "item": pd.read_parquet(base / "items.parquet")}
    else:
        served = {"user": pd.read_parquet(pre / "catalogue" / "users.parquet"),
                  "item": pd.read_parquet(pre / "catalogue" / "items.parquet")}
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"run": str(run), "repo": str(repo), "features": []}
    for side, subgraph, view in (("user", USER_SUBGRAPH, "user_features"), ("item", ITEM_SUBGRAPH, "item_features")):
        key = f"{side}_id"
        table = served[side]
        sample = table.iloc[rng.choice(len(table), min(users, len(table)), replace=False)]
        ids = sample[f"{key}_raw"].astype(str).tolist()
        sub = workflow.get_subworkflow(subgraph)
        wanted = [c for c in sub.input_schema.column_names if c != key]
        online = store.get_online_features(features=[f"{view}:{c}" for c in wanted],
                                           entity_rows=[{key: i} for i in ids]).to_dict()
        raw = pd.DataFrame(online)[[key, *wanted]]
        missing = raw[wanted].isna().all(axis=1)
        raw = raw[~missing]
        if pd.api.types.is_integer_dtype(sample[f"{key}_raw"]):
            raw[key] = raw[key].astype(sample[f"{key}_raw"].dtype)
        encoded = encode_table(sub, raw[sub.input_schema.column_names], key, "cpu")
        merged = sample.assign(**{f"{key}_raw": sample[f"{key}_raw"]}).merge(
            encoded, on=f"{key}_raw", suffixes=("_served", "_online"))
        for col in [c for c in table.columns if c not in (f"{key}_raw",)]:
            a, b = merged[f"{col}_served"], merged[f"{col}_online"]
            if pd.api.types.is_float_dtype(a) or pd.api.types.is_float_dtype(b):
                same = np.isclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-5, atol=1e-6, equal_nan=True)
            else:
                same = (a.to_numpy() == b.to_numpy())
            first = merged.loc[~same, f"{key}_raw"]
            report["features"].append({"side": side, "feature": col, "checked": int(len(merged)),
                                       "match": round(float(same.mean()) if len(same) else 1.0, 4),
                                       "first_mismatch": None if first.empty else str(first.iloc[0]),
                                       "missing_online": int(missing.sum())})
    report["skew"] = any(f["match"] < 1.0 or f["missing_online"] for f in report["features"])
    return report
