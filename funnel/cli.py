"""The ``funnel`` command line. Heavy libraries are imported inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from funnel import __version__
from funnel.errors import FunnelError

EXIT_USAGE = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _print_dataset_summary(meta: dict, out: Path, seconds: float) -> None:
    from funnel.report import table

    rows = [
        ("dataset", meta["name"]),
        ("interactions", meta["rows"]["interactions"]),
        ("users (with interactions)", f"{meta['rows']['users']:,} ({meta['n_users_with_interactions']:,})"),
        ("items (with interactions)", f"{meta['rows']['items']:,} ({meta['n_items_with_interactions']:,})"),
        ("time range", " .. ".join(t[:10] for t in meta["time_range"])),
        ("id types", f"user {meta['id_types']['user_id']}, item {meta['id_types']['item_id']}"),
        ("repurchase normal", meta["repurchase"]),
        ("written to", str(out)),
        ("time", f"{seconds:.1f} s ({meta['rows']['interactions'] / max(seconds, 1e-9):,.0f} rows/s)"),
    ]
    print(table(rows, title="funnel data: done"))


# --------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> None:
    from funnel.data.synth import SynthConfig, generate
    from funnel.fsutil import atomic_output_dir
    from funnel.report import progress

    cfg = SynthConfig(users=args.users, items=args.items, days=args.days, seed=args.seed, styles=args.styles,
                      activity=args.activity, basket_size=args.basket_size,
                      repurchase_rate=args.repurchase_rate, end_date=args.end_date, shift_day=args.shift_day,
                      shift_price=args.shift_price, shift_tastes=args.shift_tastes)
    cfg.validate()
    start = time.perf_counter()
    with progress(cfg.expected_interactions(), "generating") as bar, atomic_output_dir(args.out) as tmp:
        meta = generate(cfg, tmp, progress=bar.update)
    _print_dataset_summary(meta, Path(args.out), time.perf_counter() - start)


def cmd_data_hm(args: argparse.Namespace) -> None:
    from funnel.data import hm
    from funnel.fsutil import atomic_output_dir
    from funnel.report import progress

    start = time.perf_counter()
    with progress(None, "reading transactions") as bar, atomic_output_dir(args.out) as tmp:
        meta = hm.build(Path(args.kaggle_dir), tmp, args.sample_users, args.seed, on_rows=bar.update)
    _print_dataset_summary(meta, Path(args.out), time.perf_counter() - start)


def cmd_data_movielens(args: argparse.Namespace) -> None:
    from funnel.data import movielens
    from funnel.fsutil import atomic_output_dir

    start = time.perf_counter()
    with atomic_output_dir(args.out) as tmp:
        meta = movielens.build(tmp, Path(args.source) if args.source else None)
    _print_dataset_summary(meta, Path(args.out), time.perf_counter() - start)


def cmd_data_csv(args: argparse.Namespace) -> None:
    from funnel.data import tabular
    from funnel.fsutil import atomic_output_dir

    src = tabular.TabularSource(
        interactions=Path(args.interactions), user_col=args.user_col, item_col=args.item_col,
        time_col=args.time_col, time_unit=args.time_unit,
        items=Path(args.items) if args.items else None, item_key=args.item_key,
        users=Path(args.users) if args.users else None, user_key=args.user_key,
        repurchase=args.repurchase, drop_duplicates=args.drop_duplicates, name=args.name,
    )
    start = time.perf_counter()
    with atomic_output_dir(args.out) as tmp:
        meta = tabular.build(src, tmp)
    _print_dataset_summary(meta, Path(args.out), time.perf_counter() - start)


def cmd_data_info(args: argparse.Namespace) -> None:
    from funnel.data.canonical import read_dataset

    meta = read_dataset(args.data).meta
    print(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------- preprocess
def cmd_preprocess(args: argparse.Namespace) -> None:
    from funnel.preprocess import PreprocessConfig, preprocess
    from funnel.report import progress, table

    cfg = PreprocessConfig(
        data=args.data, out=args.out, split=args.split, test_days=args.test_days, device=args.device,
        workers=args.workers, scheduler=args.scheduler, negatives=args.negatives,
        id_freq_threshold=args.id_freq_threshold, feature_freq_threshold=args.feature_freq_threshold,
        seed=args.seed,
    )
    steps = ["split", "features", "stage", "fit", "transform_retrieval", "transform_ranking", "catalogue", "save"]
    with progress(len(steps), "preprocessing", unit="steps") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        m = preprocess(cfg, step=step)
    r, u, i = m["rows"], m["users"], m["items"]
    rows = [
        ("device", m["device"] + (f", Dask {cfg.workers} workers" if cfg.workers else "")
         + (f", Dask scheduler {cfg.scheduler}" if cfg.scheduler else "")),
        ("split", f"{cfg.split}" + (f", last {cfg.test_days} days" if cfg.split == "time" else "")
         + f", cutoff {m['split']['cutoff'][:19]}"),
        ("interactions", r["interactions"]),
        ("train / test rows", f"{r['train']:,} / {r['test']:,}"),
        ("users: all / train / test (cold)", f"{u['total']:,} / {u['train']:,} / {u['test']:,} ({u['test_cold']:,})"),
        ("items: all / train / test (cold)", f"{i['total']:,} / {i['train']:,} / {i['test']:,} ({i['test_cold']:,})"),
        ("ranking rows train / test", f"{r['ranking_train']:,} / {r['ranking_test']:,}"),
        ("time", f"{m['timings_s']['total']:.1f} s ({m['rows_per_s']:,} rows/s), peak RSS {m['peak_rss_mb']:,} MB"),
        ("written to", args.out),
    ]
    print(table(rows, title="funnel preprocess: done"))


# --------------------------------------------------------------------------- train
def cmd_train_retrieval(args: argparse.Namespace) -> None:
    from models.config import load_config, overrides_from_args
    from models.config import RetrievalConfig
    from models.retrieval import train
    from funnel.report import table

    overrides = overrides_from_args(args, RetrievalConfig)
    overrides.update(pre=args.pre_dir, out=args.out)
    cfg = load_config(RetrievalConfig, args.config, overrides)
    key = f"valid_recall@{cfg.valid_k}"

    def on_epoch(rec: dict) -> None:
        print(f"epoch {rec['epoch']:>3}  loss {rec['loss']:.4f}  {key} {rec[key]:.4f}  "
              f"{rec['seconds']:.1f} s  {rec['samples_per_s']:,} samples/s", file=sys.stderr, flush=True)

    m = train(cfg, on_epoch=on_epoch)
    rows = [
        ("device", _device(m)),
        ("epochs run (best)", f"{m['epochs_run']} ({m['best_epoch']})"),
        (key, f"{m['metrics'][key]:.4f}"),
        ("train rows / valid users", f"{m['data']['fit_rows']:,} / {m['data']['valid_users']:,}"),
        ("time", f"{m['train_seconds']:.1f} s ({m['samples_per_s']:,} samples/s, batch {cfg.batch_size})"),
        ("written to", cfg.out),
    ]
    print(table(rows, title="funnel train retrieval: done"))


def _device(manifest: dict) -> str:
    n = manifest.get("replicas", 1)
    return manifest["device"] + (f" x {n} replicas (MirroredStrategy)" if n > 1 else "")


def cmd_train_ranking(args: argparse.Namespace) -> None:
    from models.config import RankingConfig, load_config, overrides_from_args
    from models.ranking import train
    from funnel.report import table

    overrides = overrides_from_args(args, RankingConfig)
    overrides.update(pre=args.pre_dir, run=args.run)
    cfg = load_config(RankingConfig, args.config, overrides)

    def on_epoch(rec: dict) -> None:
        print(f"epoch {rec['epoch']:>3}  loss {rec['loss']:.4f}  valid AUC {rec['valid_auc']:.4f}  "
              f"log loss {rec['valid_logloss']:.4f}  recall@{cfg.valid_k} {rec[f'valid_recall@{cfg.valid_k}']:.4f}  "
              f"{rec['seconds']:.1f} s  {rec['samples_per_s']:,} samples/s", file=sys.stderr, flush=True)

    m = train(cfg, on_epoch=on_epoch)
    d = m["data"]
    rows = [
        ("device", _device(m)),
        ("label period from", d["label_period_start"][:19]),
        ("rows: positives / hard / random", f"{d['positives']:,} / {d['hard_negatives']:,} / {d['random_negatives']:,}"),
        ("label items among candidates", f"{d['label_recall_of_candidates']:.1%}"),
        ("valid AUC / log loss", f"{m['metrics']['valid_auc']:.4f} / {m['metrics']['valid_logloss']:.4f}"),
        (f"valid recall@{cfg.valid_k}: ranker / retrieval order",
         f"{m['metrics'][f'valid_recall@{cfg.valid_k}']:.4f} / "
         f"{m['metrics'][f'valid_recall@{cfg.valid_k}_retrieval_order']:.4f}"
         + ("" if m["use_ranker"] else "  (ranker not used: retrieval order is better)")),
        ("time", f"{m['train_seconds']:.1f} s training ({m['samples_per_s']:,} samples/s, batch {cfg.batch_size}), "
                 f"{d['build_seconds']:.1f} s building data"),
        ("written to", str(Path(cfg.run) / "ranker")),
    ]
    print(table(rows, title="funnel train ranking: done"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from funnel.evaluate import evaluate
    from funnel.report import progress, table

    with progress(None, "evaluating", unit="methods") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        report = evaluate(args.run, args.k, progress=step)
    ks = report["ks"]
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{ks[-1]}", "map@12", f"hit_rate@{ks[-1]}", f"coverage@{ks[-1]}"]
    if "oracle" in report["methods"]:
        cols.append(f"share_of_oracle@{ks[-1]}")
    rows = [[name] + [f"{figures[c]:.4f}" for c in cols] for name, figures in report["methods"].items()]
    print(table(rows, header=["method", *cols],
                title=f"funnel evaluate: {report['dataset']}, {report['test_users']:,} test users"))
    print(f"report: {Path(args.run) / 'evaluation.md'} (chart: evaluation.png)")
    if report.get("ranker_on_test_candidates"):
        r = report["ranker_on_test_candidates"]
        print(f"ranker on test candidates: AUC {r['auc']:.4f}, log loss {r['logloss']:.4f}"
              + ("" if r.get("ranker_used", True) else " (not used: it lost to retrieval order on validation)"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------- serve
def cmd_export(args: argparse.Namespace) -> None:
    from ensemble.config import ExportConfig
    from funnel.report import progress, table
    from models.config import load_config, overrides_from_args

    overrides = overrides_from_args(args, ExportConfig)
    overrides.update(run=args.run, out=args.out)
    cfg = load_config(ExportConfig, args.config, overrides)
    from ensemble.build import export

    with progress(3, "exporting", unit="steps") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        m = export(cfg, progress=step)
    idx, f, d = m["index"], m["filters"], m["data"]
    recall_key = next(key for key in idx if key.startswith("recall@"))
    ranker = m["models"]["ranker"]
    rows = [
        ("catalogue / users", f"{d['items']:,} items ({d['in_stock']:,} in stock) / {d['users']:,} users"),
        ("Faiss index", f"{idx['kind']} ({idx['search_param'] or 'exact'}"
                        + (f"={idx['search_value']}" if idx["search_param"] else "")
                        + f"), {recall_key.replace('_', ' ')} {idx[recall_key]:.3f}"),
        ("candidates", f"top {cfg.candidates} + {cfg.recent if d['repurchase'] else 0} own recent + {cfg.trending} trending"),
        ("filters", f"seen: {f['exclude_seen']}, out of stock: {'yes' if f['out_of_stock'] else 'no'}, "
                    f"categories: {f['exclude_categories'] or 'none'}, items: {len(f['exclude_items'])}"),
        ("ranker", "DLRM" if ranker and ranker["used"] else "two-tower score (no ranker or ranker not used)"),
        ("TensorFlow runtime", m["tf_runtime"] + " backend"),
        ("time", f"{m['export_seconds']:.1f} s"),
        ("written to", f"{cfg.out} (serve it: funnel serve {cfg.out})"),
    ]
    print(table(rows, title="funnel export: done"))


def cmd_serve(args: argparse.Namespace) -> None:
    import signal
    import time

    from ensemble.build import read_manifest
    from funnel.serving import TritonServer

    manifest = read_manifest(args.repo)
    server = TritonServer(args.repo, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          binary=args.tritonserver, log_path=args.log,
                          prediction_log=args.prediction_log or None, log_sample=args.log_sample)
    stop = []

    def on_signal(signum, frame) -> None:
        stop.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"starting Triton on {args.repo} ({manifest['data']['items']:,} items, "
          f"{manifest['data']['users']:,} users) ...", file=sys.stderr, flush=True)
    try:
        server.start(timeout=args.timeout)
        print(f"ready: gRPC {server.url}  HTTP {server.host}:{server.http_port}  model 'funnel'", flush=True)
        print(f"try:   funnel recommend --url {server.url} --user <ID>   (Ctrl-C stops)", flush=True)
        if server.prediction_log and args.log_sample > 0:
            print(f"logging {args.log_sample:.0%} of served users to {server.prediction_log}", flush=True)
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        if server.process is not None:
            raise FunnelError(f"tritonserver exited with code {server.process.returncode}"
                              + (f" (log: {args.log})" if args.log else ""))
    except KeyboardInterrupt:
        print("stopping Triton ...", file=sys.stderr, flush=True)
    finally:
        server.stop()
    print("stopped", file=sys.stderr)


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


def cmd_recommend(args: argparse.Namespace) -> None:
    users = list(args.user or []) + (_read_users_file(args.users_file) if args.users_file else [])
    if not users:
        raise FunnelError("recommend: give --user ID or --users-file FILE")
    if args.from_cache:
        _recommend_from_cache(args, users)
        return
    url = args.url or "127.0.0.1:8001"
    client = _client(url, args.batch_size)
    with client:
        answers = (rec.as_dict() for rec in client.recommend(users, args.k, args.exclude_item, args.temperature, args.seed))
        if args.json:
            _print_recommendations(answers, True, "")
        else:
            _print_recommendations(list(answers), False, f"recommendations from {url}")


def _client(url: str, batch_size: int):
    from funnel.client import Client

    try:
        client = Client(url, batch_size=batch_size)
    except Exception as exc:  # noqa: BLE001 - bad URL
        raise FunnelError(f"{url}: cannot create a gRPC client ({exc})") from None
    if not client.ready():
        client.close()
        raise FunnelError(f"{url}: no ready 'funnel' model there (start one: funnel serve triton_repo)")
    return client


def _recommend_from_cache(args: argparse.Namespace, users: list[str]) -> None:
    from funnel.cache import open_cache

    cache = open_cache(args.from_cache)
    meta = cache.meta()
    age = cache.age_hours()
    if age > args.max_age_hours:
        print(f"funnel: warning: cache {args.from_cache} is stale: built {age:.1f} h ago "
              f"(more than --max-age-hours {args.max_age_hours:g})", file=sys.stderr)
    k = args.k or meta["k"]
    live = _client(args.url, args.batch_size) if args.url else None
    answers, misses = [], []
    for user in users:
        entry = cache.get(user)
        if entry is not None:
            answers.append({"user_id": user, **{key: entry[key][:k] for key in ("items", "scores", "sources")},
                            "served_from": "cache"})
        else:
            answers.append(None)
            misses.append(user)
    fallback: dict[str, dict] = {}
    if misses and live is not None:
        with live:
            fallback = {r.user_id: {**r.as_dict(), "served_from": "live"} for r in live.recommend(misses, k)}
    elif misses:
        t = meta["trending"]
        fallback = {u: {"user_id": u, "items": t["items"][:k], "scores": t["scores"][:k], "sources": t["sources"][:k],
                        "served_from": "trending"} for u in misses}
    answers = [a if a is not None else fallback[u] for a, u in zip(answers, users)]
    cache.close()
    _print_recommendations(answers, args.json, f"recommendations from cache {args.from_cache} "
                                               f"(built {age:.1f} h ago, {meta['users']:,} users)")


def cmd_batch(args: argparse.Namespace) -> None:
    from funnel.cache import build
    from funnel.report import progress, table

    import pandas as pd  # noqa: F401  (warm import outside the progress bar)

    with progress(None, "answering users", unit="users") as bar:
        summary = build(args.run, args.out, args.redis, k=args.k, batch_users=args.batch_size, progress=bar.update)
    rows = [("users", f"{summary['users']:,} (k = {summary['k']})"),
            ("answering", f"{summary['answer_seconds']:.1f} s ({summary['users_per_s']:,.0f} users/s)"),
            ("export + answering", f"{summary['compute_seconds']:.1f} s"),
            ("total time", f"{summary['total_seconds']:.1f} s")]
    rows += [(f"written to {'SQLite ' + args.out if name == 'sqlite' else 'Redis ' + args.redis}", f"{n:,} entries")
             for name, n in summary["written"].items()]
    print(table(rows, title="funnel batch: done"))


def cmd_monitor(args: argparse.Namespace) -> int:
    from funnel.monitor import EXIT_DRIFT, monitor
    from funnel.report import table

    report = monitor(args.reference, args.current, args.out, args.psi_threshold, args.since, args.outcomes)
    if report["features"]:
        rows = [[f["feature"], f["kind"], f"{f['psi']:.3f}", "DRIFT" if f["drifted"] else ""] for f in report["features"]]
        print(table(rows, header=["feature", "kind", "PSI", ""], title=f"funnel monitor: {report['current']}"))
    if "served" in report:
        s = report["served"]
        print(f"served: {s['records']:,} logged users, {s['requests']:,} requests; scores {report['scores']}; "
              f"sources {report['sources']}")
        if "hit_rate" in report:
            print(f"hit rate of served lists (7 days): {report['hit_rate']['overall']:.1%}")
    print(f"report: {Path(args.out) / 'monitor.md'}")
    if report["alert"]:
        print(f"funnel: drift: {', '.join(report['drifted'])} crossed PSI {args.psi_threshold}", file=sys.stderr)
        return EXIT_DRIFT
    return 0


def cmd_features_apply(args: argparse.Namespace) -> None:
    from funnel.features import apply
    from funnel.report import table

    m = apply(args.run, args.repo, args.redis)
    rows = [(name, f"{n:,} rows") for name, n in m["rows"].items()]
    rows += [("online store", m["online_store"]), ("as of", m["as_of"]), ("repository", args.repo)]
    print(table(rows, title="funnel features apply: done (materialized)"))


def cmd_events_ingest(args: argparse.Namespace) -> None:
    from funnel.features import ingest, read_events

    done = ingest(args.features, read_events(args.source), args.triton_repo)
    print(f"ingested {done['purchases']:,} purchases ({done['users']:,} users) and {done['stock']:,} stock updates"
          + (f"; inventory of {args.triton_repo} updated" if args.triton_repo and done["stock"] else ""))


def cmd_check_skew(args: argparse.Namespace) -> int:
    from funnel.features import check_skew
    from funnel.report import table

    report = check_skew(args.run, args.features, args.users, export=args.export)
    rows = [[f["side"], f["feature"], f["checked"], f"{f['match']:.1%}", f["first_mismatch"] or ""]
            for f in report["features"]]
    print(table(rows, header=["side", "feature", "rows", "match", "first mismatch"],
                title="funnel check-skew: online features through the saved workflow vs served features"))
    if report["skew"]:
        print("funnel: skew: some served features differ from what the workflow makes of the online store",
              file=sys.stderr)
        return 3
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funnel",
        description="GPU-first multi-stage recommender on NVIDIA Merlin: data -> NVTabular -> "
        "two-tower + DLRM -> Triton.",
    )
    parser.add_argument("--version", action="version", version=f"funnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser("data", help="create a canonical dataset directory from a source")
    dsub = data.add_subparsers(dest="source", metavar="SOURCE")
    dsub.required = True

    p = dsub.add_parser("synth", help="H&M-shaped synthetic data with planted structure (the default)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--users", type=_positive, default=20_000)
    p.add_argument("--items", type=_positive, default=10_000)
    p.add_argument("--days", type=_positive, default=91)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--styles", type=_positive, default=64, help="latent taste clusters")
    p.add_argument("--activity", type=float, default=0.06, help="mean baskets per user per day")
    p.add_argument("--basket-size", type=float, default=2.2)
    p.add_argument("--repurchase-rate", type=float, default=0.15)
    p.add_argument("--end-date", default="2020-09-22")
    p.add_argument("--shift-day", type=int, default=0, help="planted drift from this day on (0 = none)")
    p.add_argument("--shift-price", type=float, default=1.0, help="price multiplier after --shift-day")
    p.add_argument("--shift-tastes", type=float, default=0.0,
                   help="share of fresh purchases that move to a few hot styles after --shift-day")
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("hm", help="H&M Personalized Fashion Recommendations (Kaggle files)")
    p.add_argument("--kaggle-dir", required=True, help="folder with transactions_train.csv, articles.csv, customers.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--sample-users", type=_positive, default=None, help="keep a random sample of N customers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_hm)

    p = dsub.add_parser("movielens-100k", help="MovieLens-100k ratings as interactions")
    p.add_argument("--out", required=True)
    p.add_argument("--source", help="ml-100k folder or zip (GroupLens) or RecBole ml-100k folder")
    p.set_defaults(func=cmd_data_movielens)

    p = dsub.add_parser("csv", help="any interactions CSV/parquet with a column mapping")
    p.add_argument("--interactions", required=True)
    p.add_argument("--user-col", required=True)
    p.add_argument("--item-col", required=True)
    p.add_argument("--time-col")
    p.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "ns"], help="unit of numeric times")
    p.add_argument("--items", help="item features file")
    p.add_argument("--item-key", help="item id column in --items (default: --item-col)")
    p.add_argument("--users", help="user features file")
    p.add_argument("--user-key", help="user id column in --users (default: --user-col)")
    p.add_argument("--repurchase", action=argparse.BooleanOptionalAction, default=False,
                   help="buying the same item again is normal in this domain")
    p.add_argument("--drop-duplicates", action="store_true", help="drop exact duplicate rows instead of failing")
    p.add_argument("--name", help="dataset name (default: the file's stem)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_csv)

    p = dsub.add_parser("info", help="print a dataset's dataset.json")
    p.add_argument("data")
    p.set_defaults(func=cmd_data_info)

    p = sub.add_parser("preprocess", help="split, build features, fit and apply the NVTabular workflow")
    p.add_argument("data", help="dataset directory from `funnel data`")
    p.add_argument("--out", required=True, help="preprocessing output directory")
    p.add_argument("--split", choices=["time", "user-last"], default="time")
    p.add_argument("--test-days", type=_positive, default=7)
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--workers", type=_positive, help="run NVTabular on a local Dask cluster of N workers")
    p.add_argument("--scheduler", help="run NVTabular on an existing Dask cluster (ADDRESS)")
    p.add_argument("--negatives", type=int, default=4, help="sampled negatives per positive (ranking data)")
    p.add_argument("--id-freq-threshold", type=_positive, default=1)
    p.add_argument("--feature-freq-threshold", type=_positive, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preprocess)

    train = sub.add_parser("train", help="train the retriever or the ranker")
    tsub = train.add_subparsers(dest="model", metavar="MODEL")
    tsub.required = True
    from models.config import RetrievalConfig, add_config_arguments

    p = tsub.add_parser("retrieval", help="two-tower retriever (in-batch negatives, logQ correction)")
    p.add_argument("pre_dir", metavar="PRE", help="preprocessing output directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--config", help="YAML file with RetrievalConfig fields; flags override it")
    add_config_arguments(p, RetrievalConfig, skip=("pre", "out"))
    p.set_defaults(func=cmd_train_retrieval)

    from models.config import RankingConfig

    p = tsub.add_parser("ranking", help="DLRM ranker on retriever candidates (hard + random negatives)")
    p.add_argument("pre_dir", metavar="PRE", help="preprocessing output directory")
    p.add_argument("--run", required=True, help="run directory with the trained retriever")
    p.add_argument("--config", help="YAML file with RankingConfig fields; flags override it")
    add_config_arguments(p, RankingConfig, skip=("pre", "run"))
    p.set_defaults(func=cmd_train_ranking)

    p = sub.add_parser("evaluate", help="Recall/NDCG/MAP@12 of the run and the baselines on the test split")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--k", type=_positive, nargs="+", default=[10, 12])
    p.add_argument("--json", help="also write the figures to this file")
    p.set_defaults(func=cmd_evaluate)

    from ensemble.config import ExportConfig

    p = sub.add_parser("export", help="build the retrieve -> filter -> rank ensemble into a Triton repository")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--out", default="triton_repo", help="Triton model repository (replaced atomically)")
    p.add_argument("--config", help="YAML file with ExportConfig fields; flags override it")
    add_config_arguments(p, ExportConfig, skip=("run", "out"))
    p.set_defaults(func=cmd_export)

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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("batch", help="precompute every known user's top-k into a cache (SQLite and/or Redis)")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--out", help="SQLite file to write (replaced atomically)")
    p.add_argument("--redis", help="also (or only) write to this Redis, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--k", type=_positive, default=12)
    p.add_argument("--batch-size", type=_positive, default=512, help="users per funnel call")
    p.set_defaults(func=cmd_batch)

    feats = sub.add_parser("features", help="the Feast feature repository (online features)")
    fsub = feats.add_subparsers(dest="action", metavar="ACTION")
    fsub.required = True
    for action, text in (("apply", "create the repository from a run and materialize every view"),
                         ("materialize", "the same as apply: rebuild it from the run and re-materialize")):
        p = fsub.add_parser(action, help=text)
        p.add_argument("run", help="run directory from `funnel train`")
        p.add_argument("--repo", default="feature_repo", help="feature repository directory")
        p.add_argument("--redis", help="Redis online store (redis://host:port) instead of the SQLite file")
        p.set_defaults(func=cmd_features_apply)

    events = sub.add_parser("events", help="feed new purchases and stock updates to the online store")
    esub = events.add_subparsers(dest="action", metavar="ACTION")
    esub.required = True
    p = esub.add_parser("ingest", help="JSON lines (file or -) or parquet of purchase/stock events")
    p.add_argument("source", help="events file, or - for standard input")
    p.add_argument("--features", default="feature_repo", help="feature repository")
    p.add_argument("--triton-repo", help="also update this export's inventory (stock events)")
    p.set_defaults(func=cmd_events_ingest)

    p = sub.add_parser("check-skew", help="train/serve consistency of features, per feature (exit 3 on skew)")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--features", default="feature_repo", help="feature repository")
    p.add_argument("--export", help="compare with this export's tables (default: the run's catalogue)")
    p.add_argument("--users", type=_positive, default=200, help="users (and items) sampled")
    p.set_defaults(func=cmd_check_skew)

    p = sub.add_parser("monitor", help="data drift vs a reference period; served-prediction health (exit 3 on drift)")
    p.add_argument("--reference", required=True, help="preprocessing output whose training split is the reference")
    p.add_argument("--current", required=True, help="dataset directory (new purchases) or prediction-log directory")
    p.add_argument("--out", default="monitor_report", help="report directory (replaced atomically)")
    p.add_argument("--psi-threshold", type=float, default=0.2, help="alert when a feature's PSI reaches this")
    p.add_argument("--since", help="current period starts after this time (default: the reference's end)")
    p.add_argument("--outcomes", help="dataset with later purchases: hit rate of served lists (logs only)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("recommend", help="ask a running funnel server (gRPC) or a cache for recommendations")
    p.add_argument("--url", default=None, help="gRPC HOST:PORT (default 127.0.0.1:8001; with --from-cache: "
                                               "where cache misses go, else they get trending items)")
    p.add_argument("--from-cache", metavar="STORE", help="read a `funnel batch` cache: SQLite file or redis:// URL")
    p.add_argument("--max-age-hours", type=float, default=24.0, help="warn when the cache is older than this")
    p.add_argument("--user", action="append", help="raw user id (repeatable)")
    p.add_argument("--users-file", help="user ids, one per line (or parquet with user_id)")
    p.add_argument("--k", type=_positive, default=None, help="items per user (default: the export's k)")
    p.add_argument("--exclude-item", action="append", help="raw item id not to recommend (repeatable)")
    p.add_argument("--temperature", type=float, default=None, help="> 0: sample with softmax(score / T)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--batch-size", type=_positive, default=256, help="users per request")
    p.add_argument("--json", action="store_true", help="one JSON line per user")
    p.set_defaults(func=cmd_recommend)
    return parser


def _quiet_libraries() -> None:
    """Silence import-time chatter of TensorFlow and Merlin's expected CPU-mode warnings."""
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("FEAST_USAGE", "False")  # Feast reports usage online unless told not to
    warnings.filterwarnings("ignore", message=".*in CPU mode.*")
    warnings.filterwarnings("ignore", message=".*PyTorch dtype mappings.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except FunnelError as exc:
        print(f"funnel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("funnel: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
