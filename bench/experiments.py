"""Experiment statistics checked against the synthetic generator's ground truth.

    python bench/experiments.py [--data demo/data] [--runs 200] [--mde 0.1]

The generator knows each customer's true purchase distribution over the articles for any window
(``funnel.data.synth.Oracle``) and each customer's activity (purchases per week, from the data).
A shown list L converts within a week with probability 1 - exp(-activity_u * sum_{i in L} p_u(i)).
With that ground truth:

1. A/A: ``--runs`` experiments of two arms served the same policy (popularity top-12) at the
   sample size ``funnel ab plan`` gives for the baseline and ``--mde``: share with p < 0.05;
2. power: the treatment's conversion probability planted at (1 + mde) x control's: share detected;
3. peeking: A/A experiments looked at daily for 14 days: naive Welch vs always-valid mSPRT;
4. off-policy evaluation: a logger that draws the top slot by Plackett-Luce (``--temperature``)
   over each user's 50 truly best articles, a target that shows each user's single best article
   first; the share of runs whose IPS / SNIPS / DR 95% interval covers the target's true top-slot
   conversion;
5. the same beyond the top slot: the logger draws all 12 slots, the target shows each user's 12
   truly best articles; coverage of the purchases-per-list estimates (item-level click model).
Prints a table and one JSON document (also written to bench/results/experiments.json) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ground_truth(data: Path, k: int = 12, max_users: int = 5000, seed: int = 0) -> dict:
    """Per user: conversion probability of popularity's top-k, top-1 by popularity scores and the oracle."""
    import pandas as pd

    from funnel.data.canonical import read_dataset
    from funnel.data.synth import Oracle

    ds = read_dataset(data)
    inter = ds.interactions(["user_id", "item_id", "timestamp"])
    end = inter["timestamp"].max()
    start = end.normalize() - pd.Timedelta(days=6)
    past = inter[inter["timestamp"] < start]
    weeks = max((start - past["timestamp"].min()) / pd.Timedelta(days=7), 1.0)
    activity = past.groupby("user_id").size() / weeks
    users = activity.sample(min(max_users, len(activity)), random_state=seed).index.to_numpy()
    oracle = Oracle.load(data, start, end + pd.Timedelta(seconds=1))
    scores = np.vstack([oracle.scores(users[i : i + 500]) for i in range(0, len(users), 500)])
    item_pos = pd.Index(oracle.item_ids)
    recent = past[past["timestamp"] >= start - pd.Timedelta(days=7)]["item_id"].value_counts()
    popular = item_pos.get_indexer(recent.index[:k])
    lam = activity.reindex(users).to_numpy()
    return {"users": users, "activity": lam, "scores": scores, "popular": popular,
            "popularity_logits": np.log1p(recent.reindex(item_pos).fillna(0).to_numpy()),
            "control": 1 - np.exp(-lam * scores[:, popular].sum(axis=1))}


def aa_and_power(truth: dict, mde: float, runs: int, rng) -> dict:
    from funnel.ab import compare, sample_size

    p = truth["control"]
    baseline = float(p.mean())
    n = sample_size(baseline, mde)
    false_pos = detected = 0
    for _ in range(runs):
        a = rng.random(n) < p[rng.integers(0, len(p), n)]
        b = rng.random(n) < p[rng.integers(0, len(p), n)]
        false_pos += compare(a.astype(float), b.astype(float))["p_value"] < 0.05
        lifted = np.minimum(p[rng.integers(0, len(p), n)] * (1 + mde), 1.0)
        detected += compare(a.astype(float), (rng.random(n) < lifted).astype(float))["p_value"] < 0.05
    return {"baseline": baseline, "users_per_arm": n, "aa_false_positive_rate": false_pos / runs,
            "power_at_mde": detected / runs}


def peeking(truth: dict, runs: int, days: int, per_day: int, rng) -> dict:
    from funnel.ab import compare, msprt_p_values

    p = truth["control"]
    naive = np.zeros(days)
    seq = np.zeros(days)
    for _ in range(runs):
        a = [(rng.random(per_day) < p[rng.integers(0, len(p), per_day)]).astype(float) for _ in range(days)]
        b = [(rng.random(per_day) < p[rng.integers(0, len(p), per_day)]).astype(float) for _ in range(days)]
        pvals = [compare(np.concatenate(a[: d + 1]), np.concatenate(b[: d + 1]))["p_value"] for d in range(days)]
        naive += np.maximum.accumulate(np.array(pvals) < 0.05)
        seq += np.maximum.accumulate(np.array(msprt_p_values(a, b, tau=0.02)) < 0.05)
    return {"days": days, "users_per_arm_per_day": per_day,
            "naive_false_positive_rate_by_day": (naive / runs).round(3).tolist(),
            "msprt_false_positive_rate_by_day": (seq / runs).round(3).tolist()}


def off_policy(truth: dict, runs: int, temperature: float, rng, shortlist: int = 50) -> dict:
    """Logger: each user's ``shortlist`` truly best articles (a good retriever), the top slot drawn
    by Plackett-Luce over log(true weight) / T; target: the user's single best article first."""
    import pandas as pd

    from funnel.ope import estimate

    scores, lam = truth["scores"], truth["activity"]
    top = np.argpartition(-scores, shortlist, axis=1)[:, :shortlist]
    weights = np.take_along_axis(scores, top, axis=1)
    logits = np.log(np.maximum(weights, 1e-12)) / temperature
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = weights.argmax(axis=1)
    convert = 1 - np.exp(-lam[:, None] * weights)  # per user and shortlisted article
    true_value = float(convert[np.arange(len(lam)), best].mean())
    logging_value = float((probs * convert).sum(axis=1).mean())
    cdf = np.cumsum(probs, axis=1)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    ess = []
    for run in range(runs):
        users = rng.integers(0, len(lam), 20_000)
        slot = np.minimum((cdf[users] < rng.random(len(users))[:, None]).sum(axis=1), shortlist - 1)
        items = top[users, slot]
        reward = rng.random(len(users)) < convert[users, slot]
        frame = pd.DataFrame({"decision": np.arange(len(users)), "item": items.astype(str),
                              "propensity": probs[users, slot], "reward": reward.astype(float)})
        out = estimate(frame, top[users, best[users]].astype(str), bootstrap=200, seed=run)
        ess.append(out["effective_sample_size"])
        for name in covered:
            lo, hi = out[name]["ci95"]
            covered[name] += lo <= true_value <= hi
    return {"true_value": true_value, "logging_value": logging_value, "runs": runs, "decisions_per_run": 20_000,
            "temperature": temperature, "shortlist": shortlist,
            "median_effective_sample_size": float(np.median(ess)),
            **{f"{k}_coverage": v / runs for k, v in covered.items()}}


def off_policy_lists(truth: dict, runs: int, temperature: float, rng, shortlist: int = 50, k: int = 12,
                     decisions: int = 20_000) -> dict:
    """Beyond the top slot: the logger draws all ``k`` slots by Plackett-Luce over the shortlist,
    each shown article is bought with its own probability (the item-level click model); the
    target shows each user's ``k`` truly best articles. Estimand: purchases from the list per
    answer. Inclusion probabilities come from the logged scores and temperature
    (``funnel.ope.inclusion_probabilities``, Monte Carlo), not from the simulator."""
    import pandas as pd

    from funnel.ope import estimate, inclusion_probabilities

    scores, lam = truth["scores"], truth["activity"]
    top = np.argpartition(-scores, shortlist, axis=1)[:, :shortlist]
    weights = np.take_along_axis(scores, top, axis=1)
    log_scores = np.log(np.maximum(weights, 1e-12))
    inclusion = inclusion_probabilities(log_scores, None, temperature, k, samples=256, seed=1)
    convert = 1 - np.exp(-lam[:, None] * weights)
    best = np.argsort(-weights, axis=1)[:, :k]
    true_value = float(np.take_along_axis(convert, best, axis=1).sum(axis=1).mean())
    covered = {"ips": 0, "snips": 0, "dr": 0}
    values: dict[str, list] = {name: [] for name in covered}
    logging_values = []
    for run in range(runs):
        users = rng.integers(0, len(lam), decisions)
        keys = log_scores[users] / temperature + rng.gumbel(size=(decisions, shortlist))
        slots = np.argsort(-keys, axis=1)[:, :k]
        reward = rng.random(slots.shape) < np.take_along_axis(convert[users], slots, axis=1)
        frame = pd.DataFrame({"decision": np.repeat(np.arange(decisions), k),
                              "item": top[users[:, None], slots].reshape(-1).astype(str),
                              "propensity": np.take_along_axis(inclusion[users], slots, axis=1).reshape(-1),
                              "reward": reward.reshape(-1).astype(float)})
        targets = top[users[:, None], best[users]].astype(str).tolist()
        out = estimate(frame, targets, bootstrap=200, seed=run)
        logging_values.append(out["logging_policy_value"])
        for name in covered:
            lo, hi = out[name]["ci95"]
            covered[name] += lo <= true_value <= hi
            values[name].append(out[name]["value"])
    return {"true_value": true_value, "logging_value": float(np.mean(logging_values)), "runs": runs,
            "decisions_per_run": decisions, "slots": k, "temperature": temperature, "shortlist": shortlist,
            **{f"{name}_mean": float(np.mean(v)) for name, v in values.items()},
            **{f"{name}_coverage": c / runs for name, c in covered.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo/data", help="a `funnel data synth` dataset (has ground_truth/)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--ope-runs", type=int, default=100)
    parser.add_argument("--mde", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=1.0, help="the OPE logger's temperature")
    parser.add_argument("--out", default="bench/results/experiments.json")
    parser.add_argument("--plot", default="docs/experiments.png")
    args = parser.parse_args()

    from funnel.report import table

    rng = np.random.default_rng(0)
    truth = ground_truth(Path(args.data))
    doc = {"data": args.data, "mde": args.mde, "runs": args.runs,
           "ab": aa_and_power(truth, args.mde, args.runs, rng),
           "peeking": peeking(truth, args.runs, 14, 2000, rng),
           "ope": off_policy(truth, args.ope_runs, args.temperature, rng),
           "ope_lists": off_policy_lists(truth, args.ope_runs, args.temperature, rng)}
    ab, pk, ope, opl = doc["ab"], doc["peeking"], doc["ope"], doc["ope_lists"]
    rows = [
        ("baseline (popularity top-12)", f"weekly conversion {ab['baseline']:.4f}; plan: {ab['users_per_arm']:,} "
                                         f"users per arm for +{args.mde:.0%}"),
        ("A/A false-positive rate", f"{ab['aa_false_positive_rate']:.3f} over {args.runs} runs (target 0.03-0.07)"),
        ("power at the planned size", f"{ab['power_at_mde']:.3f} (target >= 0.8)"),
        ("peeking daily for 14 days", f"naive Welch {pk['naive_false_positive_rate_by_day'][-1]:.3f}, "
                                      f"mSPRT {pk['msprt_false_positive_rate_by_day'][-1]:.3f}"),
        ("OPE interval coverage", f"IPS {ope['ips_coverage']:.2f}, SNIPS {ope['snips_coverage']:.2f}, "
                                  f"DR {ope['dr_coverage']:.2f} over {ope['runs']} runs (target >= 0.9); true "
                                  f"{ope['true_value']:.4f} vs logging {ope['logging_value']:.4f}"),
        (f"OPE coverage, first {opl['slots']} slots", f"IPS {opl['ips_coverage']:.2f}, SNIPS {opl['snips_coverage']:.2f}, "
                                  f"DR {opl['dr_coverage']:.2f}; purchases per list: true {opl['true_value']:.4f}, "
                                  f"DR mean {opl['dr_mean']:.4f}, logging {opl['logging_value']:.4f}"),
    ]
    print(table(rows, title="experiments against the generator's ground truth"))
    text = json.dumps(doc, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        days = np.arange(1, pk["days"] + 1)
        ax.plot(days, pk["naive_false_positive_rate_by_day"], marker="o", label="Welch, stop at first p < 0.05")
        ax.plot(days, pk["msprt_false_positive_rate_by_day"], marker="o", label="mSPRT (always valid)")
        ax.axhline(0.05, color="grey", ls="--", lw=1)
        ax.set(title="A/A tests looked at daily: false positives so far", xlabel="day", ylabel="share of A/A runs")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
