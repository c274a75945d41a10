"""Notification gating in the simulator (ground truth known): every policy over several seeds.

    python bench/notify.py [--users 2000] [--days 30] [--seeds 0 1 2] [--log-users 6000]

Per seed (``funnel.notify.experiment``): an exploration log (push with probability 0.5 on its
own population of ``--log-users``), the model policy and the threshold's response models learned
from it, the threshold and cap heuristics tuned by simulation on a validation population, then
``always``, ``threshold``, ``cap`` and ``model`` on the test population from the same state and
random numbers; off-policy estimates of each from the log next to their simulated truth.
Prints a table and one JSON document (also bench/results/notify.json) and a PNG of daily active
users per policy (docs/notify.png). Targets (issue 17): the model policy keeps at least as many
active days per user as the best heuristic, pushes less than ``always`` with a higher open rate,
and every policy's simulated truth lies inside its OPE intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def targets(doc: dict) -> dict:
    p = doc["policies"]
    best = max(("always", "threshold", "cap"), key=lambda n: p[n]["active_days_per_user"])
    seeds = len(doc["config"]["seeds"])
    return {
        "best_heuristic": best,
        "model >= best heuristic in active days per user": p["model"]["active_days_per_user"]
        >= p[best]["active_days_per_user"],
        "model sends fewer pushes than always": p["model"]["sends_per_user_day"] < p["always"]["sends_per_user_day"],
        "model open rate > always": p["model"]["open_rate"] > p["always"]["open_rate"],
        "OPE (DR) interval covers the truth for every policy and seed": all(
            e["ope_covered"]["dr"] == seeds for e in p.values()),
        "OPE (IPS) interval covers the truth for every policy and seed": all(
            e["ope_covered"]["ips"] == seeds for e in p.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--log-users", type=int, default=6000)
    parser.add_argument("--explore", type=float, default=0.5)
    parser.add_argument("--truth-replays", type=int, default=4,
                        help="replays of the log's users averaged into each OPE truth")
    parser.add_argument("--out", default="bench/results/notify.json")
    parser.add_argument("--plot", default="docs/notify.png")
    args = parser.parse_args()

    from funnel.notify import experiment
    from funnel.notify.simulator import NotifyConfig
    from funnel.report import table

    start = time.perf_counter()
    doc = experiment.compare(NotifyConfig(users=args.users, days=args.days), args.seeds, args.explore,
                             args.log_users, ope=True, note=lambda s: print(f"  {s}", file=sys.stderr, flush=True),
                             replays=args.truth_replays)
    doc["seconds"] = round(time.perf_counter() - start, 1)
    doc["targets"] = targets(doc)
    rows = []
    for name, e in doc["policies"].items():
        truth = [s["policies"][name]["ope"]["truth"] for s in doc["seeds"]]
        dr = [s["policies"][name]["ope"]["dr"]["estimate"] for s in doc["seeds"]]
        rows.append([name, f"{e['sends_per_user_day']:.3f}", f"{e['open_rate']:.3f}",
                     f"{e['active_days_per_user']:.2f} ± {e['se']['active_days_per_user']:.2f}",
                     f"{e['disable_rate']:.3f}", f"{e['churn_rate']:.3f}",
                     f"{sum(truth) / len(truth):.3f} / {sum(dr) / len(dr):.3f}",
                     f"{e['ope_covered']['ips']}/{len(args.seeds)}, {e['ope_covered']['dr']}/{len(args.seeds)}"])
    print(table(rows, header=["policy", "sends/user/day", "open rate", "active days/user", "disabled", "churned",
                              "7-day value: truth / DR", "covered IPS, DR"],
                title=f"notification policies: {args.users:,} users x {args.days} days, seeds {args.seeds}"))
    for bar, met in doc["targets"].items():
        print(f"- {bar}: {met if isinstance(met, str) else ('met' if met else 'MISSED')}")
    text = json.dumps(doc, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if args.plot:
        experiment.plot(doc, args.plot)


if __name__ == "__main__":
    main()
