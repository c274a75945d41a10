"""Cache serving with a real Redis server (Debian's redis-server) and the live-Triton fallback."""

from __future__ import annotations

import shutil
import subprocess
import time

import pandas as pd
import pytest

from funnel.cache import build, open_cache
from funnel.serving import free_port

REDIS = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if REDIS is None:
        pytest.skip("needs a Redis server binary (Debian: apt-get install redis-server; .ci/run installs it)")
    import redis

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            if client.ping():
                break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    yield url
    client.close()
    proc.terminate()
    proc.wait(10)


def test_build_into_redis_and_read_back(ranked_run, redis_url, pre_dir, cli):
    users = pd.read_parquet(pre_dir / "catalogue" / "users.parquet")["user_id_raw"].astype(str)
    summary = build(ranked_run, None, redis_url, k=5)
    assert summary["written"]["redis"] == len(users)
    cache = open_cache(redis_url)
    assert cache.meta()["users"] == len(users) and len(cache.get(users.iloc[0])["items"]) == 5
    code, out, err = cli("recommend", "--from-cache", redis_url, "--user", users.iloc[0], "--user", "nobody-new")
    assert code == 0, err
    assert "cache" in out and "trending" in out


def test_a_rebuild_switches_generations_and_removes_the_old_one(ranked_run, redis_url):
    import redis

    build(ranked_run, None, redis_url, k=3)
    r = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in r.keys("funnel:cache:*")}
    current = r.get("funnel:cache:current").decode()
    assert keys == {"funnel:cache:current", f"funnel:cache:{current}:recs", f"funnel:cache:{current}:meta"}
    assert open_cache(redis_url).meta()["k"] == 3
    r.close()


def test_unreachable_redis_is_one_clear_error(cli):
    code, _, err = cli("recommend", "--from-cache", f"redis://127.0.0.1:{free_port()}/0", "--user", "u")
    assert code == 2 and "cannot reach Redis" in err


def test_feast_online_store_on_redis(ranked_run, redis_url, tmp_path):
    import pandas as pd

    from ensemble.online_store import open_store, read_recent
    from funnel.features import apply, ingest

    manifest = apply(ranked_run, tmp_path / "feature_repo", redis_url)
    assert manifest["online_store"] == "redis"
    store = open_store(tmp_path / "feature_repo")
    ingest(tmp_path / "feature_repo", pd.DataFrame([{"type": "purchase", "user_id": "someone", "item_id": "42"}]))
    items, _ = read_recent(store, ["someone"])
    assert items == [["42"]]


def test_feast_connection_strings():
    from funnel.core.errors import FunnelError
    from funnel.features import feast_redis

    assert feast_redis("redis://127.0.0.1:6380/2") == "127.0.0.1:6380,db=2"
    assert feast_redis("rediss://:pw@cache.example:6379") == "cache.example:6379,db=0,password=pw,ssl=true"
    with pytest.raises(FunnelError, match="expected redis://"):
        feast_redis("http://x")
