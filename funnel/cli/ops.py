"""Operating a deployment: ``funnel features``, ``events ingest``, ``check-skew`` and ``monitor``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from funnel.cli.args import positive


def register(sub) -> None:
    feats = sub.add_parser("features", help="the Feast feature repository (online features)")
    fsub = feats.add_subparsers(dest="action", metavar="ACTION")
    fsub.required = True
    for action, text in (("apply", "create the repository from a run and materialize every view"),
                         ("materialize", "the same as apply: rebuild it from the run and re-materialize")):
        p = fsub.add_parser(action, help=text)
        p.add_argument("run", help="run directory from `funnel train`")
        p.add_argument("--repo", default="feature_repo", help="feature repository directory")
        p.add_argument("--redis", help="Redis online store (redis://host:port) instead of the SQLite file")
        p.set_defaults(func=features_apply)

    events = sub.add_parser("events", help="feed new purchases and stock updates to the online store")
    esub = events.add_subparsers(dest="action", metavar="ACTION")
    esub.required = True
    p = esub.add_parser("ingest", help="JSON lines (file or -) or parquet of purchase/stock events")
    p.add_argument("source", help="events file, or - for standard input")
    p.add_argument("--features", default="feature_repo", help="feature repository")
    p.add_argument("--triton-repo", help="also update this export's inventory (stock events)")
    p.set_defaults(func=events_ingest)

    p = sub.add_parser("check-skew", help="train/serve consistency of features, per feature (exit 3 on skew)")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--features", default="feature_repo", help="feature repository")
    p.add_argument("--export", help="compare with this export's tables (default: the run's catalogue)")
    p.add_argument("--users", type=positive, default=200, help="users (and items) sampled")
    p.set_defaults(func=check_skew)

    p = sub.add_parser("monitor", help="data drift vs a reference period; served-prediction health (exit 3 on drift)")
    p.add_argument("--reference", required=True, help="preprocessing output whose training split is the reference")
    p.add_argument("--current", required=True, help="dataset directory (new purchases) or prediction-log directory")
    p.add_argument("--out", default="monitor_report", help="report directory (replaced atomically)")
    p.add_argument("--psi-threshold", type=float, default=0.2, help="alert when a feature's PSI reaches this")
    p.add_argument("--since", help="current period starts after this time (default: the reference's end)")
    p.add_argument("--outcomes", help="dataset with later purchases: hit rate of served lists (logs only)")
    p.set_defaults(func=monitor)


def features_apply(args: argparse.Namespace) -> None:
    from funnel.features import apply
    from funnel.report import table

    m = apply(args.run, args.repo, args.redis)
    rows = [(name, f"{n:,} rows") for name, n in m["rows"].items()]
    rows += [("online store", m["online_store"]), ("as of", m["as_of"]), ("repository", args.repo)]
    print(table(rows, title="funnel features apply: done (materialized)"))


def events_ingest(args: argparse.Namespace) -> None:
    from funnel.features import ingest, read_events

    done = ingest(args.features, read_events(args.source), args.triton_repo)
    print(f"ingested {done['purchases']:,} purchases ({done['users']:,} users) and {done['stock']:,} stock updates"
          + (f"; inventory of {args.triton_repo} updated" if args.triton_repo and done["stock"] else ""))


def check_skew(args: argparse.Namespace) -> int:
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


def monitor(args: argparse.Namespace) -> int:
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
