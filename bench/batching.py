"""Benchmark: Triton's dynamic batcher on concurrent single-user traffic.

    python bench/batching.py [--run demo/run] [--delays -1 0 500 2000] [--requests 4000] [--cudart DIR]

The run is exported once per ``--batch-delay-us`` setting (-1: no batcher, one request per model
execution, as before the batcher), each export is served by a real Triton (the command `funnel
serve` runs), one at a time, and measured with the same load generator as `bench/serve.py`:
single-user requests at concurrency 1 and 16, and 64-user requests at concurrency 4. The load
generator runs on the same 2 cores as the server, so the figures are a floor. Where Triton's C++
load generator ``perf_analyzer`` starts (``bench/perf_analyzer.py`` says what it needs), single-user
traffic at concurrency 1 and 16 is measured with it too (``*_pa`` keys, "PA" columns): it takes far
less of the shared CPU than Python threads under the GIL. Answers under
concurrency are compared with the same users asked alone (item ids identical, scores to float32 rounding).
Prints a table and one JSON document (also written to bench/results/batching.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf_analyzer  # noqa: E402 - Triton's C++ load generator, where it starts
from serve import throughput  # noqa: E402 - the serving benchmark's load generator


def parity(url: str, users: list[str], concurrency: int = 16) -> dict:
    """Users asked alone, then the same users from ``concurrency`` threads at once."""
    from funnel.client import Client

    with Client(url, batch_size=1) as client:
        alone = {u: client.infer([u], k=12) for u in users}
    together: dict[str, dict] = {}

    def worker(offset: int) -> None:
        with Client(url, batch_size=1) as own:
            for u in users[offset::concurrency]:
                together[u] = own.infer([u], k=12)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same_items = sum(together[u]["item_ids"].tolist() == alone[u]["item_ids"].tolist() for u in users)
    score_gap = max(float(np.abs(together[u]["scores"] - alone[u]["scores"]).max()) for u in users)
    return {"users": len(users), "identical_item_lists": same_items, "max_score_difference": score_gap}


def executions(server) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.url)
    stats = client.get_inference_statistics("funnel", headers=server.admin_headers).model_stats[0]
    client.close()
    return int(stats.inference_count), int(stats.execution_count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="demo/run")
    parser.add_argument("--delays", type=int, nargs="+", default=[-1, 0, 500, 2000],
                        help="max_queue_delay_microseconds per export (-1: no dynamic batcher)")
    parser.add_argument("--requests", type=int, default=4000, help="single-user requests per measurement")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[-1],
                        help="ranker shortlists exported with each delay (-1: the run's own; 0: the ranker "
                             "scores every candidate), where the run's ranker is on")
    parser.add_argument("--instances", type=int, nargs="+", default=[1],
                        help="model instances (Triton replicas of the funnel model) exported with each delay")
    parser.add_argument("--out", default="bench/results/batching.json")
    parser.add_argument("--cudart", default=None, help="folder holding libcudart.so.12, for perf_analyzer")
    parser.add_argument("--seconds", type=float, default=10.0, help="perf_analyzer's measurement window")
    args = parser.parse_args()
    why_not = perf_analyzer.available(args.cudart)
    if why_not:
        print(f"perf_analyzer columns left out: {why_not}", file=sys.stderr)

    import pandas as pd

    from ensemble.build import ExportConfig, export
    from funnel.core.artifacts import read_retrieval_manifest
    from funnel.serving import TritonServer

    pre = Path(read_retrieval_manifest(args.run)["config"]["pre"])
    users = pd.read_parquet(pre / "splits" / "test.parquet")["user_id"].astype(str).drop_duplicates()
    users = users.sample(min(2000, len(users)), random_state=0).tolist()
    results = []
    with tempfile.TemporaryDirectory(prefix="funnel-batching-") as work:
        for delay, shortlist, instances in ((d, n, i) for d in args.delays for n in args.shortlists
                                            for i in args.instances):
            name = f"{delay}_{shortlist}_{instances}"
            repo = Path(work) / f"repo{name}"
            manifest = export(ExportConfig(run=args.run, out=str(repo), batch_delay_us=delay,
                                           ranker_shortlist=shortlist, instances=instances))
            with TritonServer(repo, grpc_port=0, log_path=Path(work) / f"triton{name}.log") as server:
                throughput(server.url, users, 1, 4, 200)  # warm-up
                before = executions(server)
                row = {"batch_delay_us": delay, "instances": instances, "ranker": bool((manifest["models"]["ranker"] or {}).get("used")),
                       "ranker_shortlist": manifest["models"]["ranker_shortlist"],
                       "single_c1": throughput(server.url, users, 1, 1, args.requests // 4),
                       "single_c16": throughput(server.url, users, 1, 16, args.requests),
                       "batch64_c4": throughput(server.url, users, 64, 4, 200)}
                inferences, runs = (a - b for a, b in zip(executions(server), before))
                row["users_per_execution"] = round(inferences / max(runs, 1), 2)
                if not why_not:  # the same traffic from Triton's C++ client (little CPU of its own)
                    for name, c in (("single_c1_pa", 1), ("single_c16_pa", 16)):
                        row[name] = perf_analyzer.measure(server.url, server.admin_headers, users, c,
                                                          seconds=args.seconds, cudart=args.cudart)
                row["parity"] = parity(server.url, users[:400])
            results.append(row)
            print(f"batch_delay_us {delay}, shortlist {shortlist}, instances {instances}: {json.dumps(row)}",
                  file=sys.stderr)
    ranking = json.loads((Path(args.run) / "ranking.json").read_text()) if (Path(args.run) / "ranking.json").exists() else {}
    quality = {key: value for key, value in (ranking.get("blend") or {}).items() if key.endswith("_by_shortlist")}
    doc = {"run": args.run, "requests": args.requests, "perf_analyzer": why_not or "used",
           **quality,  # the gate users' Recall under each shortlist (training's held-out users), where recorded
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")

    header = (f"{'batcher':>10} {'inst':>4} {'ranker':>9} {'c1 p50':>7} {'c1 p99':>7} {'c16 users/s':>12} {'c16 p50':>8} {'c16 p99':>8} "
              f"{'64x4 users/s':>13} {'users/exec':>10} {'same lists':>10} {'PA c1 p99':>9} {'PA c16 users/s':>14} "
              f"{'PA c16 p99':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        name = "off" if r["batch_delay_us"] < 0 else f"{r['batch_delay_us']} us"
        c1, c16, b64, p = r["single_c1"], r["single_c16"], r["batch64_c4"], r["parity"]
        pa1, pa16 = r.get("single_c1_pa"), r.get("single_c16_pa")
        pa = (f"{pa1['p99_ms']:>9.2f} {pa16['users_per_s']:>14,.0f} {pa16['p99_ms']:>10.2f}" if pa1 and pa16
              else f"{'-':>9} {'-':>14} {'-':>10}")
        ranker = "off" if not r.get("ranker") else (f"top {r['ranker_shortlist']}" if r.get("ranker_shortlist") else "all")
        print(f"{name:>10} {r.get('instances', 1):>4} {ranker:>9} {c1['p50_ms']:>7.2f} {c1['p99_ms']:>7.2f} {c16['users_per_s']:>12,.0f} "
              f"{c16['p50_ms']:>8.2f} {c16['p99_ms']:>8.2f} {b64['users_per_s']:>13,.0f} "
              f"{r['users_per_execution']:>10.2f} {p['identical_item_lists']:>5}/{p['users']} {pa}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
