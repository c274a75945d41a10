"""``funnel notify simulate``: every policy from the same starting state and random streams.

For each seed ``S``:

1. an **exploration log**: the ``random`` policy (push with probability ``explore``, propensities
   recorded) on its own population (seed ``S + 1000``); the ``model`` and ``threshold`` policies
   learn their response models from it, the model policy its continuation threshold too, and
   whether its planner beats that threshold (``policies.improvement_check``, from the log alone);
2. **tuning** the heuristics on a validation population (seed ``S + 500``) by simulation: the best
   ``t`` for ``threshold`` and ``n`` for ``cap`` by active days per user. This uses the simulator's
   truth, an advantage over the model policy, which sees only the log;
3. the **test**: ``always``, ``threshold``, ``cap`` and ``model`` on the test population (seed
   ``S``), each from the same state with the same random numbers;
4. **off-policy estimates** of each policy from the exploration log
   (:mod:`funnel.notify.evaluation`), next to their simulated truth (the log's users, a fresh run
   with other random numbers, both actions simulated forward at every decision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from funnel.notify import evaluation, policies
from funnel.notify.history import FEATURES
from funnel.notify.simulator import NotifyConfig, Population, run, summary

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
CAPS = (1, 2, 3, 4, 5, 6, 7)
POLICIES = ("always", "threshold", "cap", "model")
METRICS = ("sends_per_user_day", "open_rate", "active_days_per_user", "disable_rate", "churn_rate",
           "purchases_per_user")


def exploration_log(cfg: NotifyConfig, explore: float = 0.5, users: int | None = None) -> dict:
    """The random policy's decisions and outcomes on the log population of ``cfg``'s seed."""
    log_cfg = replace(cfg, seed=cfg.seed + 1000, users=users or cfg.users)
    return run(log_cfg, policies.RandomSend(explore), record=True) | {"config": log_cfg}


def tune(cfg: NotifyConfig, models, note: Callable[[str], None] = lambda s: None) -> dict:
    """Best threshold and cap on the validation population (simulated truth)."""
    val = replace(cfg, seed=cfg.seed + 500)
    population = Population.generate(val)
    by_t = {t: summary(run(val, policies.Threshold(models, t), population))["active_days_per_user"]
            for t in THRESHOLDS}
    by_n = {n: summary(run(val, policies.Cap(n), population))["active_days_per_user"] for n in CAPS}
    best_t, best_n = max(by_t, key=by_t.get), max(by_n, key=by_n.get)
    note(f"tuned on the validation population: threshold t = {best_t}, cap n = {best_n}")
    return {"threshold": best_t, "cap": best_n, "by_threshold": by_t, "by_cap": by_n}


def one_seed(cfg: NotifyConfig, explore: float = 0.5, log_users: int | None = None, ope: bool = True,
             note: Callable[[str], None] = lambda s: None, replays: int = 1) -> dict:
    log = exploration_log(cfg, explore, log_users)
    note(f"seed {cfg.seed}: exploration log of {len(log['log']):,} decisions")
    rows = evaluation.window_rewards(log["log"], log["activity"], cfg.days)
    model = policies.train(log["log"], seed=cfg.seed, rewards=rows)
    note(f"seed {cfg.seed}: planner vs its threshold on the log (DR): {model.check['estimate']:+.4f} "
         f"[{model.check['low']:+.4f}, {model.check['high']:+.4f}] -> {'plan' if model.plan else 'threshold'}")
    tuned = tune(cfg, model.models, note)
    chosen = {"always": policies.Always(), "threshold": policies.Threshold(model.models, tuned["threshold"]),
              "cap": policies.Cap(tuned["cap"]), "model": model}
    population = Population.generate(cfg)
    out: dict = {"seed": cfg.seed, "tuning": tuned, "continuation": model.continuation,
                 "improvement_check": model.check, "policies": {}}
    for name, policy in chosen.items():
        out["policies"][name] = summary(run(cfg, policy, population))
        note(f"seed {cfg.seed}: {name}: {out['policies'][name]['active_days_per_user']:.2f} active days per user")
    if ope:
        feats = rows[list(FEATURES)].to_numpy(np.float64)
        day = rows["day"].to_numpy()
        for name, policy in chosen.items():
            p_send = np.zeros(len(rows))
            for d in np.unique(day):
                sel = day == d
                p_send[sel] = policy.decide(feats[sel], np.ones(int(sel.sum()), bool), int(d))
            out["policies"][name]["ope"] = evaluation.estimate(rows, p_send, seed=cfg.seed)
        truth = evaluation.simulated_truth(log["config"], policies.RandomSend(explore), chosen, replays=replays)
        for name in chosen:
            est = out["policies"][name]["ope"]
            est["truth"] = truth[name]
            est["covered"] = {k: bool(est[k]["low"] <= truth[name] <= est[k]["high"]) for k in ("ips", "snips", "dr")}
        note(f"seed {cfg.seed}: off-policy estimates done")
    return out


def compare(cfg: NotifyConfig, seeds: list[int], explore: float = 0.5, log_users: int | None = None,
            ope: bool = True, note: Callable[[str], None] = lambda s: None, replays: int = 1) -> dict:
    """Every policy on every seed; means (and standard errors) over seeds."""
    runs = [one_seed(replace(cfg, seed=s), explore, log_users, ope, note, replays) for s in seeds]
    result = {"config": cfg.as_dict() | {"seeds": list(seeds), "explore": explore, "truth_replays": replays,
                                         "log_users": log_users or cfg.users}, "seeds": runs, "policies": {}}
    for name in POLICIES:
        per = [r["policies"][name] for r in runs]
        entry = {m: float(np.mean([p[m] for p in per])) for m in METRICS}
        entry["se"] = {m: float(np.std([p[m] for p in per], ddof=1) / np.sqrt(len(per))) if len(per) > 1 else 0.0
                       for m in METRICS}
        entry["daily_active_users"] = np.mean([p["daily_active_users"] for p in per], axis=0).round(5).tolist()
        if ope:
            entry["ope_covered"] = {k: int(sum(p["ope"]["covered"][k] for p in per)) for k in ("ips", "snips", "dr")}
        result["policies"][name] = entry
    return result


def plot(result: dict, path: str) -> None:
    """Daily active users per policy over the horizon (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, entry in result["policies"].items():
        dau = entry["daily_active_users"]
        ax.plot(np.arange(1, len(dau) + 1), dau, label=f"{name} ({entry['active_days_per_user']:.2f} days/user)")
    ax.set_xlabel("day")
    ax.set_ylabel("share of users active")
    seeds = result["config"]["seeds"]
    ax.set_title(f"notification policies: {result['config']['users']:,} users, mean of {len(seeds)} seed(s)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
