"""Cache serving benchmark: `funnel batch` users/s and cache lookups/s (SQLite and a real Redis).

    python bench/cache.py [--run demo/run] [--lookups 20000]

Needs `redis-server` on PATH for the Redis figures (Debian: apt-get install redis-server).
Prints a table and one JSON document (also written to bench/results/cache.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lookups(cache, users: list[str], n: int) -> dict:
    rng = np.random.default_rng(0)
    picks = [users[i] for i in rng.integers(0, len(users), n)]
    times = []
    t0 = time.perf_counter()
    for u in picks:
        t1 = time.perf_counter()
        cache.get(u)
        times.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    ms = np.array(times) * 1000
    return {"lookups_per_s": round(n / wall), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="demo/run")
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--out", default="bench/results/cache.json")
    args = parser.parse_args()

    from funnel.cache import build, open_cache
    from funnel.serving import free_port

    work = Path(tempfile.mkdtemp(prefix="funnel-cache-bench-"))
    redis_url, proc = None, None
    if shutil.which("redis-server"):
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        summary = build(args.run, str(work / "recs.sqlite"), redis_url, k=12)
        results = {"batch": summary}
        sqlite = open_cache(str(work / "recs.sqlite"))
        import sqlite3

        users = [r[0] for r in sqlite3.connect(work / "recs.sqlite").execute("SELECT user_id FROM recs")]
        results["sqlite"] = lookups(sqlite, users, args.lookups)
        if redis_url:
            results["redis"] = lookups(open_cache(redis_url), users, args.lookups)
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    b = results["batch"]
    print(f"funnel batch: {b['users']:,} users in {b['answer_seconds']:.1f} s ({b['users_per_s']:,.0f} users/s); "
          f"with export {b['compute_seconds']:.1f} s")
    print(f"{'store':<8} {'lookups/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for store in ("sqlite", "redis"):
        if store in results:
            r = results[store]
            print(f"{store:<8} {r['lookups_per_s']:>10,} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
