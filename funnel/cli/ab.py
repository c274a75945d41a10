"""``funnel ab plan | report``: size an A/B test; analyse one from the served-prediction log."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from funnel.cli.args import positive


def register(sub) -> None:
    ab = sub.add_parser("ab", help="A/B tests: sample size (plan) and analysis from the prediction log (report)")
    asub = ab.add_subparsers(dest="action", metavar="ACTION")
    asub.required = True
    p = asub.add_parser("plan", help="users per variant (and days) to detect a relative lift")
    p.add_argument("--baseline", type=float, required=True, help="control conversion rate, e.g. 0.05")
    p.add_argument("--mde", type=float, required=True, help="minimum detectable relative lift, e.g. 0.1 = +10%%")
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05, help="two-sided significance level")
    p.add_argument("--variants", type=positive, default=2, help="variants including control")
    p.add_argument("--users-per-day", type=float, help="new users exposed per day (all variants): gives days")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=plan)

    p = asub.add_parser("report", help="per-variant metrics, lift with 95%% interval and p-value, SRM, CUPED")
    p.add_argument("logs", help="prediction-log directory written by `funnel serve --variant ...`")
    p.add_argument("--outcomes", required=True,
                   help="purchases: a dataset folder or a parquet/CSV/JSON-lines file (user_id, item_id, timestamp)")
    p.add_argument("--window-days", type=float, default=7.0, help="outcome window after the first exposure")
    p.add_argument("--experiment", help="experiment name (needed when the log holds several)")
    p.add_argument("--control", help="control variant (default: 'control', else the first name)")
    p.add_argument("--traffic", nargs="+", metavar="NAME=FRACTION", help="planned shares for the SRM check "
                                                                       "(default: equal)")
    p.add_argument("--sequential", action="store_true", help="always-valid p-values after each day (mSPRT)")
    p.add_argument("--json", dest="json_path", help="write the report as JSON here")
    p.add_argument("--plot", help="write a PNG of conversion per variant with 95%% intervals")
    p.set_defaults(func=report)

    p = sub.add_parser("ope", help="off-policy evaluation: a new export's value (top-slot conversion, or "
                                   "purchases from its first K slots) from an exploring policy's prediction "
                                   "log (IPS, SNIPS, doubly robust)")
    p.add_argument("logs", help="prediction-log directory (answers logged with temperature > 0)")
    p.add_argument("--target", required=True, help="the export to evaluate (a Triton repository)")
    p.add_argument("--outcomes", required=True,
                   help="purchases: a dataset folder or a parquet/CSV/JSON-lines file (user_id, item_id, timestamp)")
    p.add_argument("--window-days", type=float, default=7.0, help="a purchase counts within this window")
    p.add_argument("--slots", type=positive, default=1,
                   help="1: top-slot conversion (exact propensities); K > 1: purchases from the first K slots "
                        "(item-level click model, inclusion probabilities from the logged draw)")
    p.add_argument("--samples", type=positive, default=256, help="Monte Carlo draws per answer for --slots > 1")
    p.add_argument("--bootstrap", type=positive, default=500, help="bootstrap resamples for the intervals")
    p.add_argument("--json", dest="json_path", help="write the estimates as JSON here")
    p.set_defaults(func=ope)


def plan(args: argparse.Namespace) -> None:
    from funnel.ab import sample_size
    from funnel.report import table

    n = sample_size(args.baseline, args.mde, args.power, args.alpha)
    doc = {"baseline": args.baseline, "treated": args.baseline * (1 + args.mde), "mde": args.mde,
           "power": args.power, "alpha": args.alpha, "users_per_variant": n, "users_total": n * args.variants}
    if args.users_per_day:
        doc["days"] = math.ceil(doc["users_total"] / args.users_per_day)
    if args.json:
        print(json.dumps(doc))
        return
    rows = [("conversion", f"{args.baseline:.4f} -> {doc['treated']:.4f} ({args.mde:+.1%})"),
            ("test", f"two-sided, alpha {args.alpha}, power {args.power}"),
            ("users per variant", f"{n:,}"), ("users in total", f"{doc['users_total']:,}")]
    if "days" in doc:
        rows.append(("days", f"{doc['days']} at {args.users_per_day:,.0f} users/day"))
    print(table(rows, title="funnel ab plan"))


def report(args: argparse.Namespace) -> None:
    from ensemble.prediction_log import read_logs
    from funnel.ab import read_purchases, report as analyse
    from funnel.core.assignment import parse_traffic
    from funnel.core.errors import FunnelError
    from funnel.report import table

    if not Path(args.logs).is_dir():
        raise FunnelError(f"{args.logs}: no such prediction-log directory")
    logs = read_logs(args.logs)
    if logs.empty:
        raise FunnelError(f"{args.logs}: no logged predictions")
    traffic = parse_traffic(args.traffic) if args.traffic else None
    doc = analyse(logs, read_purchases(args.outcomes), args.window_days, args.control, traffic, args.experiment,
                  args.sequential)
    rows = [(name, f"{v['users']:,} users, conversion {v['conversion']:.4f}, purchases/user {v['purchases']:.3f}")
            for name, v in doc["variants"].items()]
    for c in doc["comparisons"]:
        if c["lift"] is None:
            continue
        rows.append((f"{c['variant']} vs {c['control']}: {c['metric']}",
                     f"lift {c['lift']:+.2%} [{c['ci95'][0]:+.2%}, {c['ci95'][1]:+.2%}], p {c['p_value']:.3g}"))
    for name, g in doc["guardrails"].items():
        if "latency_ms_p99" in g:
            change = g.get("latency_vs_control", {}).get("lift")
            rows.append((f"{name}: guardrails", f"{g['items_shown']:,} items shown, latency p50 "
                         f"{g['latency_ms_p50']:.1f} ms, p99 {g['latency_ms_p99']:.1f} ms"
                         + (f" (mean {change:+.1%} vs control)" if change is not None else "")))
    rows.append(("sample-ratio mismatch", f"p {doc['srm_p_value']:.3g}"
                 + ("  <- assignment or logging is broken: do not trust the figures" if doc["srm_p_value"] < 0.001
                    else "")))
    print(table(rows, title=f"funnel ab report: {doc['experiment']}"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.plot:
        _plot(doc, Path(args.plot))
    if doc["srm_p_value"] < 0.001:
        print("warning: sample-ratio mismatch (p < 0.001)", file=sys.stderr)


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["variants"])
    rates = [doc["variants"][n]["conversion"] for n in names]
    errs = []
    for n in names:
        v = doc["variants"][n]
        errs.append(1.96 * math.sqrt(max(v["conversion"] * (1 - v["conversion"]), 0) / max(v["users"], 1)))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, rates, yerr=errs, capsize=6, color=["#888"] + ["#3a7"] * (len(names) - 1))
    ax.set(title=f"{doc['experiment']}: conversion within {doc['window_days']:g} days", ylabel="conversion")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ope(args: argparse.Namespace) -> None:
    import numpy as np

    from ensemble.prediction_log import read_logs
    from ensemble.runtime import Recommender
    from funnel.ab import read_purchases
    from funnel.core.artifacts import ensemble_dir, read_export_manifest
    from funnel.core.errors import FunnelError
    from funnel.ope import decisions, evaluate_target
    from funnel.report import table

    if not Path(args.logs).is_dir():
        raise FunnelError(f"{args.logs}: no such prediction-log directory")
    read_export_manifest(args.target)
    frame = decisions(read_logs(args.logs), read_purchases(args.outcomes), args.window_days, args.slots,
                      args.samples)
    recommender = Recommender(ensemble_dir(args.target))
    if args.slots > recommender.max_k:
        raise FunnelError(f"--slots {args.slots}: the target answers at most {recommender.max_k} items")

    def target_lists(users: list[str]) -> list[list[str]]:
        out: list[list[str]] = []
        for start in range(0, len(users), recommender.max_batch):
            ids = recommender.recommend(np.array(users[start : start + recommender.max_batch], dtype=object),
                                        k=args.slots)
            out.extend([v.decode() for v in row if v] for row in ids["item_ids"])
        return out

    estimand = "top-slot conversion" if args.slots == 1 else f"purchases from the first {args.slots} slots"
    doc = {"target": str(args.target), "estimand": estimand, "slots": args.slots, "window_days": args.window_days,
           **evaluate_target(frame, target_lists, bootstrap=args.bootstrap)}
    rows = [("logged decisions", f"{doc['decisions']:,} ({doc['matches']:,} where the target agrees)"),
            ("effective sample size", f"{doc['effective_sample_size']:,.0f}"),
            ("logging policy", f"{doc['logging_policy_value']:.4f}")]
    for name in ("ips", "snips", "dr"):
        e = doc[name]
        ci = f" [{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]" if e["ci95"] else ""
        rows.append((f"target, {name.upper()}", f"{e['value']:.4f}{ci}"))
    print(table(rows, title=f"funnel ope: {estimand} of the target"))
    if "warning" in doc:
        print(f"warning: {doc['warning']}", file=sys.stderr)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
