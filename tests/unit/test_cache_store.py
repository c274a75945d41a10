"""The cache stores without a model: staleness, atomic rebuild, the cache -> live -> trending policy."""

from __future__ import annotations

import time

import pytest

from funnel.cache import answer, open_cache, write_sqlite
from funnel.core.errors import FunnelError

TRENDING = {"items": ["t1", "t2", "t3"], "scores": [0.5, 0.3, 0.2], "sources": ["trending"] * 3}


def test_stale_cache_is_reported(tmp_path, cli):
    path = tmp_path / "old.sqlite"
    trending = {"items": ["a"], "scores": [1.0], "sources": ["trending"]}
    write_sqlite(path, [("u1", {"items": ["x"], "scores": [0.5], "sources": ["retrieval"]})],
                 {"run": "r", "built_at": time.time() - 50 * 3600, "k": 1, "trending": trending})
    code, out, err = cli("recommend", "--from-cache", path, "--user", "u1")
    assert code == 0 and "stale: built 50.0 h ago" in err and "x" in out


def test_a_failed_rebuild_keeps_the_previous_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    write_sqlite(path, [("u1", {"items": ["x"], "scores": [0.5], "sources": ["retrieval"]})],
                 {"run": "r", "built_at": time.time(), "k": 1, "trending": {}})

    def broken():
        yield "u2", {"items": ["y"], "scores": [0.1], "sources": ["retrieval"]}
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        write_sqlite(path, broken(), {"run": "r2", "built_at": time.time(), "k": 1, "trending": {}})
    cache = open_cache(str(path))
    assert cache.get("u1")["items"] == ["x"] and cache.get("u2") is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.sqlite"]


def test_missing_store(tmp_path):
    with pytest.raises(FunnelError, match="no cache here"):
        open_cache(str(tmp_path / "none.sqlite"))


class FakeLive:
    """The gRPC client's interface, recording which users reach the server (a unit test of the policy;
    tests/integration/test_triton_serving.py runs the same path against a real Triton server)."""

    def __init__(self):
        self.asked = []

    def recommend(self, users, k):
        from funnel.client import Recommendation

        self.asked.extend(users)
        return [Recommendation(u, [f"live-{u}"] * k, [1.0] * k, ["retrieval"] * k) for u in users]


def test_fallback_policy_cache_then_live_then_trending(tmp_path):
    path = tmp_path / "c.sqlite"
    write_sqlite(path, [("u1", {"items": ["a", "b", "c"], "scores": [0.9, 0.8, 0.7], "sources": ["retrieval"] * 3})],
                 {"run": "r", "built_at": time.time(), "k": 3, "trending": TRENDING})
    cache = open_cache(str(path))
    offline = answer(cache, ["u1", "nobody", "u1"], k=2)
    assert [a["served_from"] for a in offline] == ["cache", "trending", "cache"]
    assert offline[0]["items"] == ["a", "b"] and offline[1]["items"] == ["t1", "t2"]
    live = FakeLive()
    online = answer(cache, ["nobody", "u1"], live=live)
    assert live.asked == ["nobody"]  # only misses reach the server
    assert online[0] == {"user_id": "nobody", "items": ["live-nobody"] * 3, "scores": [1.0] * 3,
                         "sources": ["retrieval"] * 3, "served_from": "live"}
    assert online[1]["served_from"] == "cache" and len(online[1]["items"]) == 3  # k defaults to the cache's
