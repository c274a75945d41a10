"""``funnel export | serve | recommend | batch``: the serving graph, the Triton server, its clients, the cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ensemble.config import ExportConfig
from funnel.cli.args import add_config_arguments, config_from_args, positive
from funnel.core.errors import FunnelError


def register(sub) -> None:
    p = sub.add_parser("export", help="build the retrieve -> filter -> rank ensemble into a Triton repository")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--out", default="triton_repo", help="Triton model repository (replaced atomically)")
    p.add_argument("--config", help="YAML file with ExportConfig fields; flags override it")
    add_config_arguments(p, ExportConfig, skip=("run", "out"), title="ExportConfig fields (override --config)")
    p.set_defaults(func=export)

    p = sub.add_parser("serve", help="run a real Triton Inference Server on an exported repository")
    p.add_argument("repo", nargs="?", default="triton_repo", help="repository from `funnel export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--tritonserver", help="tritonserver binary (default: PATH, else the one in nvidia-pytriton)")
    p.add_argument("--log", help="append the server's log to this file")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--prediction-log", default="prediction_logs",
                   help="directory for the served-prediction log (parquet; '' turns it off)")
    p.add_argument("--log-sample", type=float, default=0.05, help="share of served users logged (0..1)")
    p.add_argument("--grpc-tls-cert", help="PEM server certificate: serve gRPC over TLS (with --grpc-tls-key)")
    p.add_argument("--grpc-tls-key", help="PEM private key of --grpc-tls-cert")
    p.add_argument("--admin-key-file", help="write the key of the administrative APIs here (mode 600); "
                                            "the key is FUNNEL_ADMIN_KEY when set, else generated")
    p.add_argument("--variant", action="append", metavar="NAME=REPO",
                   help="A/B test: another export served to a share of users (repeatable; with --traffic)")
    p.add_argument("--traffic", nargs="+", metavar="NAME=FRACTION",
                   help="shares of users per variant, the served REPO being --control (they sum to 1)")
    p.add_argument("--experiment", help="experiment name: salts the user assignment (default: the variants' names)")
    p.add_argument("--control", default="control", help="variant name of REPO itself")
    p.add_argument("--check-interval", type=float, default=1.0,
                   help="seconds between checks that every backend process is alive")
    p.set_defaults(func=serve)

    p = sub.add_parser("batch", help="precompute every known user's top-k into a cache (SQLite and/or Redis)")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--out", help="SQLite file to write (replaced atomically)")
    p.add_argument("--redis", help="also (or only) write to this Redis, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--k", type=positive, default=12)
    p.add_argument("--batch-size", type=positive, default=512, help="users per funnel call")
    p.set_defaults(func=batch)

    p = sub.add_parser("recommend", help="ask a running funnel server (gRPC) or a cache for recommendations")
    p.add_argument("--url", default=None, help="gRPC HOST:PORT (default 127.0.0.1:8001; with --from-cache: "
                                               "where cache misses go, else they get trending items)")
    p.add_argument("--from-cache", metavar="STORE", help="read a `funnel batch` cache: SQLite file or redis:// URL")
    p.add_argument("--max-age-hours", type=float, default=24.0, help="warn when the cache is older than this")
    p.add_argument("--user", action="append", help="raw user id (repeatable)")
    p.add_argument("--users-file", help="user ids, one per line (or parquet with user_id)")
    p.add_argument("--k", type=positive, default=None, help="items per user (default: the export's k)")
    p.add_argument("--exclude-item", action="append", help="raw item id not to recommend (repeatable)")
    p.add_argument("--temperature", type=float, default=None, help="> 0: sample with softmax(score / T)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--batch-size", type=positive, default=256, help="users per request")
    p.add_argument("--tls-ca", metavar="PEM", help="talk TLS, trusting this certificate (the server's "
                                                   "--grpc-tls-cert or its CA)")
    p.add_argument("--json", action="store_true", help="one JSON line per user")
    p.set_defaults(func=recommend)


def export(args: argparse.Namespace) -> None:
    from ensemble.build import export
    from funnel.report import progress, table

    cfg = config_from_args(ExportConfig, args, run=args.run, out=args.out)

    with progress(3, "exporting", unit="steps") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        m = export(cfg, progress=step)
    idx, f, d = m["index"], m["filters"], m["data"]
    recall_key = next(key for key in idx if key.startswith("recall@"))
    ranker, ii = m["models"]["ranker"], m["models"]["item_item"]
    rows = [
        ("catalogue / users", f"{d['items']:,} items ({d['in_stock']:,} in stock) / {d['users']:,} users"),
        ("Faiss index", f"{idx['kind']} ({idx['search_param'] or 'exact'}"
                        + (f"={idx['search_value']}" if idx["search_param"] else "")
                        + f"), {recall_key.replace('_', ' ')} {idx[recall_key]:.3f}"),
        ("candidates", f"top {cfg.candidates} two-tower + {cfg.item_item if ii.get('fitted') else 0} item-item + "
                       f"{cfg.recent if d['repurchase'] else 0} own recent + {cfg.new_items} new (of "
                       f"{d['new_items']:,}) + {cfg.trending} trending"),
        ("filters", f"seen: {f['exclude_seen']}, out of stock: {'yes' if f['out_of_stock'] else 'no'}, "
                    f"categories: {f['exclude_categories'] or 'none'}, items: {len(f['exclude_items'])}"),
        ("inventory", d["inventory"]),
        ("ranker", "blend " + ", ".join(f"{w:.2f} {name}" for name, w in m["models"]["blend_weights"].items() if w)
         + (" (the DLRM's logit is ranker_score)" if ranker and ranker["used"] else " (ranker not used)")),
        *([("new-item slots", f"the last {cfg.new_item_slots} places of a known user's list: the user's best new items")]
          if cfg.new_item_slots else []),
        ("TensorFlow runtime", m["tf_runtime"] + " backend"),
        ("time", f"{m['export_seconds']:.1f} s"),
        ("written to", f"{cfg.out} (serve it: funnel serve {cfg.out})"),
    ]
    print(table(rows, title="funnel export: done"))


def serve(args: argparse.Namespace) -> None:
    import signal

    from funnel.core.artifacts import read_export_manifest
    from funnel.serving import RESTRICTED, TritonServer

    manifest = read_export_manifest(args.repo)
    experiment = experiment_plan(args)
    server = TritonServer(args.repo, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          binary=args.tritonserver, log_path=args.log,
                          prediction_log=args.prediction_log or None, log_sample=args.log_sample,
                          tls_cert=args.grpc_tls_cert, tls_key=args.grpc_tls_key, experiment=experiment)
    if args.admin_key_file:
        path = Path(args.admin_key_file)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(server.admin_key + "\n")

    def on_signal(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    if server.exposed:
        print(f"warning: binding {args.host}: gRPC port {server.grpc_port} and HTTP port {server.http_port} are open "
              f"to the network; gRPC TLS {'on' if server.tls else 'OFF'}, HTTP TLS off; inference and health need "
              f"no authentication (admin APIs need the {len(RESTRICTED.split(','))}-API admin key). "
              "Put an authenticating proxy or a private network in front.", file=sys.stderr, flush=True)
    print(f"starting Triton on {args.repo} ({manifest['data']['items']:,} items, "
          f"{manifest['data']['users']:,} users) ...", file=sys.stderr, flush=True)
    try:
        server.start(timeout=args.timeout)
        address = f"<this host's address>:{server.grpc_port}" if server.exposed else server.url
        print(f"ready: gRPC {server.url}  HTTP {server.host}:{server.http_port}  model 'funnel'", flush=True)
        print(f"try:   funnel recommend --url {address} --user <ID>   (Ctrl-C stops)", flush=True)
        if server.prediction_log and args.log_sample > 0:
            print(f"logging {args.log_sample:.0%} of served users to {server.prediction_log}", flush=True)
        if experiment:
            plan = json.loads(experiment)
            print(f"experiment {plan['experiment']}: " + ", ".join(f"{n} {s:.0%}" for n, s in plan["traffic"].items()),
                  flush=True)
        watch(server, args.check_interval)
    except KeyboardInterrupt:
        print("stopping Triton ...", file=sys.stderr, flush=True)
    finally:
        server.stop()
    print("stopped", file=sys.stderr)


def experiment_plan(args: argparse.Namespace) -> str | None:
    """The FUNNEL_EXPERIMENT JSON for --variant/--traffic (validated before anything starts), or None."""
    from ensemble.experiment import plan
    from funnel.core.artifacts import ensemble_dir, read_export_manifest
    from funnel.core.assignment import parse_traffic

    if not args.variant and not args.traffic:
        return None
    if not args.variant or not args.traffic:
        raise FunnelError("an experiment needs both --variant NAME=REPO and --traffic NAME=FRACTION ...")
    variants = {args.control: str(ensemble_dir(args.repo))}
    for spec in args.variant:
        name, sep, repo = spec.partition("=")
        if not sep or not name or not repo:
            raise FunnelError(f"--variant {spec!r} is not NAME=REPO")
        if name in variants:
            raise FunnelError(f"--variant {name!r} is named twice (the served repository is {args.control!r})")
        read_export_manifest(repo)  # a clear error for a missing or foreign repository
        variants[name] = str(ensemble_dir(repo))
    traffic = parse_traffic(args.traffic)
    unknown = set(traffic) - set(variants)
    if unknown:
        raise FunnelError(f"--traffic names an unknown variant: {', '.join(sorted(unknown))} "
                          f"(variants: {', '.join(variants)})")
    return plan(args.experiment or "-".join(variants), traffic, variants)


def watch(server, interval: float) -> None:
    """Until the server exits: check its backend processes; reload the models when one died.

    Returns never; raises FunnelError (exit 2, for a supervisor to restart us) when the server
    exited or could not be restored.
    """
    while True:
        time.sleep(interval)
        problem = server.check()
        if problem is None:
            continue
        if problem.startswith("tritonserver exited"):
            reason = "" if "killed by" in problem else "; ".join(server.log_tail())
            raise FunnelError(problem + (f": {reason}" if reason else "")
                              + (f" (log: {server.log_path})" if server.log_path else ""))
        print(f"unhealthy: {problem}; reloading the models ...", file=sys.stderr, flush=True)
        seconds = server.restore()
        print(f"restored: serving again after {seconds:.1f} s", file=sys.stderr, flush=True)


def _read_users_file(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise FunnelError(f"{p}: users file not found")
    if p.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(p)
        if "user_id" not in frame.columns:
            raise FunnelError(f"{p}: no column 'user_id'")
        return frame["user_id"].astype(str).tolist()
    users = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if users and users[0] == "user_id":
        users = users[1:]
    if not users:
        raise FunnelError(f"{p}: no user ids (one per line)")
    return users


def _print_recommendations(answers, as_json: bool, title: str) -> None:
    from funnel.report import table

    if as_json:
        for rec in answers:
            print(json.dumps(rec), flush=True)
        return
    with_origin = any("served_from" in r for r in answers)  # cache answers say where each list came from
    rows = []
    for rec in answers:
        lines = [[rank, item, f"{score:.4f}", source] for rank, (item, score, source)
                 in enumerate(zip(rec["items"], rec["scores"], rec["sources"]), 1)]
        for i, line in enumerate(lines or [["-", "(nothing survives the filters)", "", ""]]):
            first = i == 0
            rows.append([rec["user_id"] if first else "", *line]
                        + ([rec.get("served_from", "") if first else ""] if with_origin else []))
    header = ["user", "rank", "item", "score", "source"] + (["served from"] if with_origin else [])
    print(table(rows, header=header, title=title))


def recommend(args: argparse.Namespace) -> None:
    users = list(args.user or []) + (_read_users_file(args.users_file) if args.users_file else [])
    if not users:
        raise FunnelError("recommend: give --user ID or --users-file FILE")
    if args.from_cache:
        _recommend_from_cache(args, users)
        return
    url = args.url or "127.0.0.1:8001"
    client = _client(url, args.batch_size, args.tls_ca)
    with client:
        answers = (rec.as_dict() for rec in client.recommend(users, args.k, args.exclude_item, args.temperature, args.seed))
        if args.json:
            _print_recommendations(answers, True, "")
        else:
            _print_recommendations(list(answers), False, f"recommendations from {url}")


def _client(url: str, batch_size: int, tls_ca: str | None = None):
    from funnel.client import Client

    if tls_ca and not Path(tls_ca).is_file():
        raise FunnelError(f"{tls_ca}: no such TLS certificate file (--tls-ca)")
    try:
        client = Client(url, batch_size=batch_size, tls_ca=tls_ca)
    except Exception as exc:  # noqa: BLE001 - bad URL
        raise FunnelError(f"{url}: cannot create a gRPC client ({exc})") from None
    if not client.ready():
        client.close()
        hint = " (a TLS server needs --tls-ca)" if not tls_ca else " (is it serving TLS with that certificate?)"
        raise FunnelError(f"{url}: no ready 'funnel' model there (start one: funnel serve triton_repo){hint}")
    return client


def batch(args: argparse.Namespace) -> None:
    from funnel.cache import build
    from funnel.report import progress, table

    with progress(None, "answering users", unit="users") as bar:
        summary = build(args.run, args.out, args.redis, k=args.k, batch_users=args.batch_size, progress=bar.update)
    rows = [("users", f"{summary['users']:,} (k = {summary['k']})"),
            ("answering", f"{summary['answer_seconds']:.1f} s ({summary['users_per_s']:,.0f} users/s)"),
            ("export + answering", f"{summary['compute_seconds']:.1f} s"),
            ("total time", f"{summary['total_seconds']:.1f} s")]
    rows += [(f"written to {'SQLite ' + args.out if name == 'sqlite' else 'Redis ' + args.redis}", f"{n:,} entries")
             for name, n in summary["written"].items()]
    print(table(rows, title="funnel batch: done"))


def _recommend_from_cache(args: argparse.Namespace, users: list[str]) -> None:
    from funnel import cache as cache_store

    cache = cache_store.open_cache(args.from_cache)
    try:
        meta, age = cache.meta(), cache.age_hours()
        if age > args.max_age_hours:
            print(f"funnel: warning: cache {args.from_cache} is stale: built {age:.1f} h ago "
                  f"(more than --max-age-hours {args.max_age_hours:g})", file=sys.stderr)
        live = _client(args.url, args.batch_size, args.tls_ca) if args.url else None
        try:
            answers = cache_store.answer(cache, users, args.k, live)
        finally:
            if live is not None:
                live.close()
    finally:
        cache.close()
    _print_recommendations(answers, args.json, f"recommendations from cache {args.from_cache} "
                                               f"(built {age:.1f} h ago, {meta['users']:,} users)")
