"""Cache serving: the full funnel's top-k for every known user, precomputed into a key-value store.

Two stores with one interface: an embedded SQLite file (the default) and Redis (``redis://``
URLs). A build never mixes with the previous one: SQLite is written to a temporary file and
renamed; Redis entries go under a new generation prefix that becomes current in one ``SET``,
after which the old generation is deleted.

Reading (:func:`answer`): a cached user gets the cached list; a miss goes to a live server
when one is given, else gets the cache's trending list. Every answer says where it came from.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from ensemble.build import ExportConfig, export
from ensemble.runtime import Recommender
from funnel.client import Client
from funnel.core.artifacts import ensemble_dir
from funnel.core.errors import FunnelError

Entry = dict[str, list]  # {"items": [...], "scores": [...], "sources": [...]}


class RecommendationCache(ABC):
    """Read side of a built cache."""

    @abstractmethod
    def get(self, user_id: str) -> Entry | None: ...

    @abstractmethod
    def meta(self) -> dict[str, Any]: ...

    def age_hours(self) -> float:
        return (time.time() - float(self.meta()["built_at"])) / 3600

    def close(self) -> None:  # noqa: B027 - optional
        pass


class SQLiteCache(RecommendationCache):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FunnelError(f"{self.path}: no cache here (build one: funnel batch RUN --out {self.path})")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def get(self, user_id: str) -> Entry | None:
        row = self._db.execute("SELECT entry FROM recs WHERE user_id = ?", (str(user_id),)).fetchone()
        return json.loads(row[0]) if row else None

    def meta(self) -> dict[str, Any]:
        return json.loads(self._db.execute("SELECT value FROM meta WHERE key = 'meta'").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class RedisCache(RecommendationCache):
    PREFIX = "funnel:cache"

    def __init__(self, url: str):
        self._r = redis.Redis.from_url(url)
        try:
            self._gen = self._r.get(f"{self.PREFIX}:current")
        except redis.exceptions.ConnectionError as exc:
            raise FunnelError(f"{url}: cannot reach Redis ({exc})") from None
        if self._gen is None:
            raise FunnelError(f"{url}: no funnel cache in this Redis (build one: funnel batch RUN --redis {url})")
        self._gen = self._gen.decode()

    def get(self, user_id: str) -> Entry | None:
        raw = self._r.hget(f"{self.PREFIX}:{self._gen}:recs", str(user_id))
        return json.loads(raw) if raw else None

    def meta(self) -> dict[str, Any]:
        return json.loads(self._r.get(f"{self.PREFIX}:{self._gen}:meta"))

    def close(self) -> None:
        self._r.close()


def open_cache(store: str) -> RecommendationCache:
    """``redis://...`` (or ``rediss://``, ``unix://``) opens Redis; anything else is a SQLite file."""
    if store.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(store)
    return SQLiteCache(store)


def write_sqlite(path: Path, entries: Iterable[tuple[str, Entry]], meta: dict[str, Any]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    n = 0
    db = sqlite3.connect(tmp)
    try:
        db.execute("CREATE TABLE recs (user_id TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for user, entry in entries:
            db.execute("INSERT INTO recs VALUES (?, ?)", (user, json.dumps(entry)))
            n += 1
        db.execute("INSERT INTO meta VALUES ('meta', ?)", (json.dumps({**meta, "users": n}),))
        db.commit()
        db.close()
        os.replace(tmp, path)
    except BaseException:
        db.close()
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
        raise
    return n


def write_redis(url: str, entries: Iterable[tuple[str, Entry]], meta: dict[str, Any], chunk: int = 1000) -> int:
    r = redis.Redis.from_url(url)
    prefix = RedisCache.PREFIX
    gen = f"{int(time.time() * 1000)}-{os.getpid()}"
    n = 0
    try:
        pipe = r.pipeline(transaction=False)
        for user, entry in entries:
            pipe.hset(f"{prefix}:{gen}:recs", user, json.dumps(entry))
            n += 1
            if n % chunk == 0:
                pipe.execute()
        pipe.set(f"{prefix}:{gen}:meta", json.dumps({**meta, "users": n}))
        pipe.execute()
        old = r.getset(f"{prefix}:current", gen)
        if old and old.decode() != gen:
            r.delete(f"{prefix}:{old.decode()}:recs", f"{prefix}:{old.decode()}:meta")
    except redis.exceptions.ConnectionError as exc:
        r.delete(f"{prefix}:{gen}:recs", f"{prefix}:{gen}:meta")
        raise FunnelError(f"{url}: cannot reach Redis ({exc})") from None
    finally:
        r.close()
    return n


def build(run: str | Path, out: str | None, redis_url: str | None, k: int = 12, batch_users: int = 512,
          progress: Callable[[int], None] | None = None, work: str | Path | None = None) -> dict[str, Any]:
    """Export the run's ensemble (temporary), answer every known user in batches, fill the store(s)."""
    if not out and not redis_url:
        raise FunnelError("batch: give --out FILE (SQLite) and/or --redis URL")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="funnel-batch-", dir=work) as tmp:
        manifest = export(ExportConfig(run=str(run), out=str(Path(tmp) / "repo"), k=k, max_k=max(k, 100)))
        exported = ensemble_dir(Path(tmp) / "repo")
        recommender = Recommender(exported)
        users = pd.read_parquet(exported / "users.parquet", columns=["user_id_raw"])["user_id_raw"].astype(str)
        users = users.tolist()
        cold = recommender.recommend(["\x00cold-start\x00"], k=k)
        trending = _entry(cold, 0)
        answered: list[tuple[str, Entry]] = []
        t_answer = time.perf_counter()
        for s in range(0, len(users), batch_users):
            batch = users[s : s + batch_users]
            out_arrays = recommender.recommend(batch, k=k)
            answered.extend((u, _entry(out_arrays, row)) for row, u in enumerate(batch))
            if progress:
                progress(len(batch))
        answer_s = time.perf_counter() - t_answer
    compute_s = time.perf_counter() - start
    meta = {"run": str(Path(run).resolve()), "built_at": time.time(), "k": k,
            "export_checksum": manifest["ensemble_checksum"], "data_checksum": manifest["data"]["content_checksum"],
            "trending": trending}
    written = {}
    if out:
        written["sqlite"] = write_sqlite(Path(out), answered, meta)
    if redis_url:
        written["redis"] = write_redis(redis_url, answered, meta)
    return {"users": len(users), "k": k, "compute_seconds": round(compute_s, 2),
            "answer_seconds": round(answer_s, 2), "users_per_s": round(len(users) / max(answer_s, 1e-9), 1),
            "total_seconds": round(time.perf_counter() - start, 2), "written": written}


def _entry(out, row: int) -> Entry:
    ids = out["item_ids"][row]
    keep = ids != b""
    return {"items": [i.decode() for i in ids[keep]], "scores": [float(x) for x in np.asarray(out["scores"][row])[keep]],
            "sources": [s.decode() for s in out["sources"][row][keep]]}


def answer(cache: RecommendationCache, users: list[str], k: int | None = None,
           live: Client | None = None) -> list[dict[str, Any]]:
    """One answer per user, in order: ``items``, ``scores``, ``sources`` and ``served_from``.

    The fallback policy: a cached user is served from the cache (``cache``); a miss goes to the
    live server when ``live`` is given (``live``), else gets the cache's trending list
    (``trending``), cut to ``k`` (default: the cache's k).
    """
    k = k or cache.meta()["k"]
    answers: dict[str, dict[str, Any]] = {}
    misses = []
    for user in users:
        entry = cache.get(user)
        if entry is not None:
            answers[user] = {"user_id": user, **{key: entry[key][:k] for key in ("items", "scores", "sources")},
                             "served_from": "cache"}
        else:
            misses.append(user)
    if misses and live is not None:
        answers.update({r.user_id: {**r.as_dict(), "served_from": "live"} for r in live.recommend(misses, k)})
    elif misses:
        t = cache.meta()["trending"]
        answers.update({u: {"user_id": u, "items": t["items"][:k], "scores": t["scores"][:k],
                            "sources": t["sources"][:k], "served_from": "trending"} for u in misses})
    return [answers[u] for u in users]
