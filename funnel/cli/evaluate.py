"""``funnel evaluate RUN``: the funnel and the baselines on the test split, as a table, JSON and a chart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from funnel.cli.args import positive


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Recall/NDCG/MAP@12 of the run and the baselines on the test split")
    p.add_argument("run", help="run directory from `funnel train`")
    p.add_argument("--k", type=positive, nargs="+", default=[10, 12])
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--new-item-slots", type=positive, nargs="+", default=[], metavar="N",
                   help="also evaluate the served graph exported with N new-item slots (export's new_item_slots: "
                        "the last N places of a known user's list go to new items), beside the default")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from funnel.evaluate import evaluate
    from funnel.report import progress, table

    with progress(None, "evaluating", unit="methods") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        report = evaluate(args.run, args.k, progress=step, new_item_slots=args.new_item_slots)
    ks = report["ks"]
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{ks[-1]}", "map@12", f"hit_rate@{ks[-1]}", f"coverage@{ks[-1]}",
                                          f"cold_recall@{ks[-1]}"]
    if "oracle" in report["methods"]:
        cols.append(f"share_of_oracle@{ks[-1]}")
    rows = [[name] + [f"{figures[c]:.4f}" for c in cols] for name, figures in report["methods"].items()]
    print(table(rows, header=["method", *cols],
                title=f"funnel evaluate: {report['dataset']}, {report['test_users']:,} test users"))
    cold = report["cold_items"]
    print(f"cold items (bought in the test period, never in training): {cold['items']:,} items, "
          f"{cold['test_rows']:,} test rows, {cold['test_users']:,} users (cold_recall: theirs only)")
    reach = (report.get("served") or {}).get("cold_recall_of_candidates")
    if reach is not None and cold["items"]:
        print(f"cold items among the served graph's candidates (Recall over every candidate): {reach:.4f}")
    print(f"report: {Path(args.run) / 'evaluation.md'} (chart: evaluation.png)")
    if report.get("ranker_on_test_candidates"):
        r = report["ranker_on_test_candidates"]
        print(f"ranker on test candidates: AUC {r['auc']:.4f}, log loss {r['logloss']:.4f}"
              + ("" if r.get("ranker_used", True) else " (not used: no confident gain on its gate users)"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
