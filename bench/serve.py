"""Serving benchmark: gRPC latency and throughput of a real Triton server vs the in-process ensemble.

    python bench/serve.py [--run demo/run] [--requests 300] [--faiss-items 10000 1000000]

1. exports the run (the synthetic default from `make demo`) to a temporary repository;
2. in-process ``Recommender`` latency for one user per request;
3. starts Triton (the same command as `funnel serve`), single-user gRPC latency p50/p95/p99;
4. throughput for 1, 16 and 64 users per request at concurrency 1, 4 and 16;
5. single-user latency of two servers side by side, without and with the prediction log at 5%
   (requests alternate between them, `--logging-rounds` x the single-user requests each);
6. Faiss (index chosen by catalogue size) vs exact numpy top-k on random vectors.
Prints a table and one JSON document (also written to bench/results/serve.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def single_user_latency(call, users: list[str], warmup: int = 20) -> list[float]:
    """Seconds per one-user request, after a warm-up."""
    for u in users[:warmup]:
        call([u])
    times = []
    for u in users:
        t0 = time.perf_counter()
        call([u])
        times.append(time.perf_counter() - t0)
    return times


def logging_overhead(repo: Path, users: list[str], work: Path) -> tuple[list[float], list[float]]:
    """Single-user latency of a server without and one with the 5% prediction log, interleaved."""
    from funnel.client import Client
    from funnel.serving import TritonServer

    with TritonServer(repo, grpc_port=0, log_path=work / "triton-plain.log") as plain, \
            TritonServer(repo, grpc_port=0, log_path=work / "triton-logged.log",
                         prediction_log=work / "prediction_logs", log_sample=0.05) as logged, \
            Client(plain.url) as a, Client(logged.url) as b:
        for u in users[:20]:
            a.infer([u])
            b.infer([u])
        t_a, t_b = [], []
        for i, u in enumerate(users):
            for client, times in ((a, t_a), (b, t_b)) if i % 2 == 0 else ((b, t_b), (a, t_a)):
                t0 = time.perf_counter()
                client.infer([u], k=12)
                times.append(time.perf_counter() - t0)
    return t_a, t_b


class ServerMemory:
    """The server's resident memory (Triton and its backend processes together: ``bench.path.tree_rss_kb``),
    sampled every ``every`` seconds from construction to :meth:`stop`."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        from bench.path import tree_rss_kb

        self.samples: list[int] = []
        self._done = threading.Event()

        def sample() -> None:
            while True:
                kb = tree_rss_kb(pid)
                if kb is not None:
                    self.samples.append(kb)
                if kb is None or self._done.wait(every):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Ready (the first sample) and peak MiB while serving."""
        self._done.set()
        self._thread.join()
        return {"ready": round(self.samples[0] / 1024) if self.samples else 0,
                "peak": round(max(self.samples, default=0) / 1024)}


def throughput(url: str, users: list[str], batch: int, concurrency: int, requests: int) -> dict:
    """``requests`` requests of ``batch`` users from ``concurrency`` threads; failed requests are counted."""
    from funnel.client import Client

    per_thread = max(1, requests // concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        with Client(url, batch_size=batch) as client:
            for r in range(per_thread):
                start = (offset * per_thread + r) * batch % max(1, len(users) - batch)
                t0 = time.perf_counter()
                try:
                    client.infer(users[start : start + batch], k=12)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(exc)[:120])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = per_thread * concurrency
    return {"users_per_request": batch, "concurrency": concurrency, "requests": n, "errors": len(errors),
            "first_error": errors[0] if errors else None, "requests_per_s": round(len(latencies) / wall, 1),
            "users_per_s": round(len(latencies) * batch / wall, 1), **percentiles(latencies or [float("nan")])}


def faiss_vs_exact(n_items: int, dim: int = 64, queries: int = 200, k: int = 200, seed: int = 0) -> dict:
    from ensemble.index import build_index, recall_vs_exact
    from funnel.core.topk import dot_top_k

    rng = np.random.default_rng(seed)
    # clustered vectors (like trained embeddings), unit-ish norm
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    vectors = (centres[rng.integers(0, 256, n_items)] + 0.5 * rng.normal(size=(n_items, dim))).astype(np.float32)
    q = (centres[rng.integers(0, 256, queries)] + 0.5 * rng.normal(size=(queries, dim))).astype(np.float32)
    t0 = time.perf_counter()
    index, info = build_index(vectors, q, k)
    build = time.perf_counter() - t0
    import faiss

    faiss.omp_set_num_threads(1)
    t_faiss, t_exact = [], []
    for row in q[:100]:
        t1 = time.perf_counter()
        index.search(row[None, :], k)
        t_faiss.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        dot_top_k(row[None, :], vectors, k)
        t_exact.append(time.perf_counter() - t1)
    _, found = index.search(q, k)
    recall = recall_vs_exact(found, dot_top_k(q, vectors, k))
    f50, e50 = float(np.median(t_faiss)) * 1000, float(np.median(t_exact)) * 1000
    return {"items": n_items, "index": info["kind"], "search": f"{info['search_param']}={info['search_value']}" if info["search_param"] else "exact",
            "build_s": round(build, 1), f"recall@{k}": round(recall, 4), "faiss_p50_ms": round(f50, 3),
            "exact_p50_ms": round(e50, 3), "speedup": round(e50 / f50, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="demo/run")
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--faiss-items", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--logging-rounds", type=int, default=5,
                        help="the logging comparison sends the single-user requests this many times to each server")
    parser.add_argument("--feast", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure an export that reads new purchases from Feast (SQLite) per request")
    parser.add_argument("--out", default="bench/results/serve.json")
    args = parser.parse_args()

    import pandas as pd

    from ensemble.build import ExportConfig, export
    from ensemble.runtime import Recommender
    from funnel.client import Client
    from funnel.serving import TritonServer

    work = Path(tempfile.mkdtemp(prefix="funnel-serve-bench-"))
    manifest = export(ExportConfig(run=args.run, out=str(work / "repo")))
    users = pd.read_parquet(work / "repo" / "funnel" / "1" / "ensemble" / "users.parquet")["user_id_raw"]
    users = users.astype(str).sample(min(len(users), 5000), random_state=0).tolist()
    single = users[: args.requests]

    local = Recommender(work / "repo" / "funnel" / "1" / "ensemble")
    t_local = single_user_latency(lambda u: local.recommend(u, k=12), single)
    del local

    t0 = time.perf_counter()
    with TritonServer(work / "repo", grpc_port=0, log_path=work / "triton.log") as server:
        ready_s = time.perf_counter() - t0
        memory = ServerMemory(server.process.pid)
        with Client(server.url) as client:
            t_grpc = single_user_latency(lambda u: client.infer(u, k=12), single)
        grid = [throughput(server.url, users, b, c, args.requests) for b in args.batches for c in args.concurrency]
        server_rss = memory.stop()
    # prediction log at 5% vs off, side by side: two servers, requests alternate between them
    t_plain, t_logged = logging_overhead(work / "repo", single * args.logging_rounds, work)
    feast = None
    if args.feast:  # the online-features path: one Feast online read per request
        from funnel.features import apply

        apply(args.run, work / "feature_repo")
        export(ExportConfig(run=args.run, out=str(work / "repo_feast"), features=str(work / "feature_repo")))
        with TritonServer(work / "repo_feast", grpc_port=0, log_path=work / "triton-feast.log") as server:
            with Client(server.url) as client:
                feast = percentiles(single_user_latency(lambda u: client.infer(u, k=12), single))
    faiss_rows = [faiss_vs_exact(n) for n in args.faiss_items]

    local_p, grpc_p, logged_p = percentiles(t_local), percentiles(t_grpc), percentiles(t_logged)
    plain_p = percentiles(t_plain)
    base = next((g["users_per_s"] for g in grid if g["users_per_request"] == 1 and g["concurrency"] == 1), None)
    big = max((g["users_per_s"] for g in grid if g["users_per_request"] == max(args.batches)), default=None)
    doc = {
        "catalogue_items": manifest["data"]["items"], "users": manifest["data"]["users"],
        "index": manifest["index"], "server_ready_s": round(ready_s, 1), "server_rss_mib": server_rss,
        "single_user": {"in_process": local_p, "grpc": grpc_p, "grpc_logging_5pct": logged_p, "grpc_feast": feast,
                        "grpc_over_in_process_p50": round(grpc_p["p50_ms"] / local_p["p50_ms"], 2),
                        "grpc_no_logging_interleaved": plain_p,
                        "logging_p99_ratio": round(logged_p["p99_ms"] / plain_p["p99_ms"], 2)},
        "throughput": grid,
        "batch_gain_users_per_s": round(big / base, 1) if base and big else None,
        "faiss_vs_exact": faiss_rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"catalogue {doc['catalogue_items']:,} items, {doc['users']:,} users; server ready in {ready_s:.1f} s; "
          f"server RSS {server_rss['ready']:,} MiB ready, {server_rss['peak']:,} MiB peak while measured")
    print(f"{'one user per request':<24} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    rows = [("in-process", local_p), ("gRPC (Triton)", grpc_p), ("gRPC, no log (paired)", plain_p),
            ("gRPC, 5% logged (paired)", logged_p)]
    for name, p in rows + ([("gRPC, Feast online", feast)] if feast else []):
        print(f"{name:<24} {p['p50_ms']:>8} {p['p95_ms']:>8} {p['p99_ms']:>8}")
    print(f"gRPC / in-process p50: {doc['single_user']['grpc_over_in_process_p50']}x; "
          f"p99 with 5% logging / without: {doc['single_user']['logging_p99_ratio']}x")
    print(f"\n{'users/req':>9} {'conc':>5} {'req/s':>8} {'users/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for g in grid:
        print(f"{g['users_per_request']:>9} {g['concurrency']:>5} {g['requests_per_s']:>8} {g['users_per_s']:>9} "
              f"{g['p50_ms']:>8} {g['p99_ms']:>8}")
    print(f"{max(args.batches)}-user requests vs single-user: {doc['batch_gain_users_per_s']}x users/s")
    print(f"\n{'items':>10} {'index':<6} {'search':<14} {'recall':>7} {'faiss ms':>9} {'exact ms':>9} {'speedup':>8}")
    for f in faiss_rows:
        recall = next(v for key, v in f.items() if key.startswith("recall@"))
        print(f"{f['items']:>10,} {f['index']:<6} {f['search']:<14} {recall:>7} {f['faiss_p50_ms']:>9} "
              f"{f['exact_p50_ms']:>9} {f['speedup']:>8}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
