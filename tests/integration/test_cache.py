"""Cache serving from a trained run: every known user answered like the exported graph, the CLI fallback."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from funnel.cache import build, open_cache
from funnel.core.errors import FunnelError


@pytest.fixture(scope="module")
def cache_file(ranked_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "recs.sqlite"
    summary = build(ranked_run, str(path), None, k=6, batch_users=256)
    return path, summary


def test_every_known_user_is_cached_with_the_funnels_answer(cache_file, pre_dir):
    from ensemble.build import ExportConfig, export
    from ensemble.runtime import Recommender

    path, summary = cache_file
    users = pd.read_parquet(pre_dir / "catalogue" / "users.parquet")["user_id_raw"].astype(str)
    assert summary["users"] == len(users) == summary["written"]["sqlite"]
    cache = open_cache(str(path))
    meta = cache.meta()
    assert meta["k"] == 6 and meta["users"] == len(users) and cache.age_hours() < 1
    repo = path.parent / "repo"
    export(ExportConfig(run=meta["run"], out=str(repo)))
    live = Recommender(repo / "funnel" / "1" / "ensemble").recommend(users[:5].tolist(), k=6)
    for row, user in enumerate(users[:5]):
        entry = cache.get(user)
        assert entry["items"] == [i.decode() for i in live["item_ids"][row] if i]
    assert cache.get("never-seen-user") is None
    assert len(meta["trending"]["items"]) == 6 and set(meta["trending"]["sources"]) == {"trending"}


def test_cli_reads_the_cache_and_falls_back_to_trending(cache_file, cli, pre_dir):
    path, _ = cache_file
    user = pd.read_parquet(pre_dir / "catalogue" / "users.parquet")["user_id_raw"].astype(str).iloc[3]
    code, out, err = cli("recommend", "--from-cache", path, "--user", user, "--user", "never-seen-user", "--k", "4", "--json")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["served_from"] == "cache" and len(first["items"]) == 4
    assert second["served_from"] == "trending" and set(second["sources"]) == {"trending"}
    assert "stale" not in err


def test_missing_target(ranked_run):
    with pytest.raises(FunnelError, match="--out FILE"):
        build(ranked_run, None, None)
