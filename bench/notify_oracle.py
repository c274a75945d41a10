"""How much room the notification simulator leaves for planning: policies that see the hidden state.

    python bench/notify_oracle.py [--users 2000] [--days 30] [--seeds 0 1 2] [--rollouts 64]

Issue 17 asks the ``model`` policy (response models learned from a log, planning by rollouts) to
keep at least as many active days as the best tuned heuristic (``bench/notify.py``: it ties the
threshold). This script asks what is possible at all, with policies no deployment could run:
they read the simulator's hidden state (each user's fatigue, sensitivity, today's true relevance)
and its true dynamics.

- ``threshold (learned)``: the deployable threshold of ``bench/notify.py`` (for reference);
- ``oracle threshold``: push when the *true* open probability exceeds ``t``;
- ``oracle + disable cost``: push when ``p_open - k (1 - p_open) p_disable > t`` (the true chance of
  losing the user's notifications weighed against today's open);
- ``oracle + annoyance``: push when ``p_open - k A > t`` (``A`` the hidden annoyance behind churn);
- ``oracle planner``: for every user and day, ``--rollouts`` simulations of the next ``--horizon``
  days with the *true* dynamics after pushing and after skipping (continuing with the oracle
  threshold, common random numbers), pushing where the gain is positive with 2 standard errors of
  confidence, else following the oracle threshold: the model policy with a perfect model.

Every parameter (``t``, ``k``) is tuned on a validation population (seed + 500) by simulation, then
each policy runs on the test population (the seed) from the same state with the same random
numbers. Prints a table and one JSON document (also ``bench/results/notify_oracle.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
DISABLE_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
ANNOYANCE_WEIGHTS = (0.01, 0.02, 0.05, 0.1)


def true_probabilities(sim, day) -> tuple[np.ndarray, np.ndarray]:
    """Today's true open and (if ignored) disable probabilities of every user."""
    from funnel.notify.simulator import _sigmoid

    cfg, pop, h = sim.cfg, sim.population, sim.hidden
    load = pop.sensitivity * h.fatigue
    p_open = _sigmoid(cfg.open_base + cfg.open_relevance * day.relevance - cfg.open_fatigue * load)
    p_disable = _sigmoid(cfg.disable_base + cfg.disable_irrelevance * (1 - day.relevance) + cfg.disable_fatigue * load)
    return p_open, p_disable


def play(cfg, population, rule) -> float:
    """Active days per user of ``rule(sim, day, d) -> send`` over ``cfg.days`` days."""
    from funnel.notify.simulator import Simulator

    sim = Simulator(cfg, population)
    active = 0
    for d in range(cfg.days):
        day = sim.draw(d)
        active += int(sim.step(np.asarray(rule(sim, day, d), bool), day).active.sum())
    return active / len(population.user_id)


def planner(t: float, horizon: int, rollouts: int, seed: int):
    """The rollout planner with the true dynamics (see the module docstring)."""
    from funnel.notify.simulator import Day, _play

    rng = np.random.default_rng([seed, 77])

    def simulate(sim, first: np.ndarray, relevance: list[np.ndarray], state) -> np.ndarray:
        n = len(first)
        idx = np.tile(np.arange(n), rollouts)
        hidden, history = sim.hidden.take(idx), sim.history.take(idx)
        rng.bit_generator.state = state  # the same random numbers after pushing and after skipping
        total = np.zeros(len(idx))
        for step, r in enumerate(relevance):
            u = rng.random((5, len(idx)))
            draws = Day(np.zeros(len(idx), np.int64), r, r, *u)
            if step == 0:
                send = np.tile(first, rollouts)
            else:
                load = sim.population.sensitivity[idx] * hidden.fatigue
                send = 1 / (1 + np.exp(-(sim.cfg.open_base + sim.cfg.open_relevance * r
                                         - sim.cfg.open_fatigue * load))) > t
            total += _play(sim.cfg, sim.population, hidden, history, send, draws, idx).active
        return total.reshape(rollouts, n)

    def rule(sim, day, d):
        n = len(sim.population.user_id)
        # today's item, then fresh draws of the funnel's top item (streams other than the real one)
        relevance = [np.tile(day.relevance, rollouts)] + [
            np.concatenate([sim.draw(d + step, stream=1 + k).relevance for k in range(rollouts)])
            for step in range(1, horizon)]
        state = rng.bit_generator.state
        gain = simulate(sim, np.ones(n, bool), relevance, state) - simulate(sim, np.zeros(n, bool), relevance, state)
        mean, se = gain.mean(axis=0), gain.std(axis=0) / np.sqrt(max(rollouts - 1, 1))
        base = true_probabilities(sim, day)[0] > t
        return np.where(np.abs(mean) > 2 * se, mean > 0, base)

    return rule


def one_seed(cfg, horizon: int, rollouts: int, note) -> dict:
    from funnel.notify import experiment, policies
    from funnel.notify.simulator import Population

    val_cfg = replace(cfg, seed=cfg.seed + 500)
    val, test = Population.generate(val_cfg), Population.generate(cfg)
    families = {
        "oracle threshold": (lambda t: lambda s, day, d: true_probabilities(s, day)[0] > t, THRESHOLDS),
        "oracle + disable cost": (lambda tk: lambda s, day, d: _with_disable(s, day, *tk),
                                  list(itertools.product(THRESHOLDS, DISABLE_WEIGHTS))),
        "oracle + annoyance": (lambda tk: lambda s, day, d: true_probabilities(s, day)[0]
                               - tk[1] * s.hidden.annoyance > tk[0], list(itertools.product(THRESHOLDS, ANNOYANCE_WEIGHTS))),
    }
    out: dict = {"seed": cfg.seed, "tuned": {}, "active_days_per_user": {}}
    log = experiment.exploration_log(cfg, 0.5, 3 * cfg.users)
    models = policies.train(log["log"], seed=cfg.seed).models
    by_t = {t: play(val_cfg, val, _deployable(policies.Threshold(models, t))) for t in THRESHOLDS}
    best_t = max(by_t, key=by_t.get)
    out["tuned"]["threshold (learned)"] = best_t
    out["active_days_per_user"]["threshold (learned)"] = play(cfg, test, _deployable(policies.Threshold(models, best_t)))
    for name, (make, grid) in families.items():
        scores = {p: play(val_cfg, val, make(p)) for p in grid}
        best = max(scores, key=scores.get)
        out["tuned"][name] = best
        out["active_days_per_user"][name] = play(cfg, test, make(best))
        note(f"seed {cfg.seed}: {name} {best}: {out['active_days_per_user'][name]:.3f}")
    t = out["tuned"]["oracle threshold"]
    out["active_days_per_user"]["oracle planner"] = play(cfg, test, planner(t, horizon, rollouts, cfg.seed))
    note(f"seed {cfg.seed}: oracle planner: {out['active_days_per_user']['oracle planner']:.3f}")
    return out


def _with_disable(sim, day, t: float, k: float) -> np.ndarray:
    p_open, p_disable = true_probabilities(sim, day)
    return p_open - k * (1 - p_open) * p_disable > t


def _deployable(policy):
    """A deployable policy as a rule: it sees only the observable history and the item's score."""
    return lambda sim, day, d: policy.decide(sim.history.features(day.score), sim.history.enabled, d) > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--out", default="bench/results/notify_oracle.json")
    args = parser.parse_args()

    from funnel.notify.simulator import NotifyConfig
    from funnel.report import table

    start = time.perf_counter()
    cfg = NotifyConfig(users=args.users, days=args.days)
    runs = [one_seed(replace(cfg, seed=s), args.horizon, args.rollouts,
                     lambda s: print(f"  {s}", file=sys.stderr, flush=True)) for s in args.seeds]
    names = list(runs[0]["active_days_per_user"])
    doc = {"config": cfg.as_dict() | {"seeds": args.seeds, "horizon": args.horizon, "rollouts": args.rollouts},
           "seeds": runs, "policies": {}}
    for name in names:
        values = [r["active_days_per_user"][name] for r in runs]
        se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        doc["policies"][name] = {"active_days_per_user": float(np.mean(values)), "se": se, "per_seed": values}
    base = doc["policies"]["oracle threshold"]["active_days_per_user"]
    doc["best_over_oracle_threshold"] = max(e["active_days_per_user"] for n, e in doc["policies"].items()
                                            if n.startswith("oracle")) - base
    doc["seconds"] = round(time.perf_counter() - start, 1)
    rows = [[name, f"{e['active_days_per_user']:.3f} ± {e['se']:.3f}",
             f"{e['active_days_per_user'] - base:+.3f}", " / ".join(f"{v:.3f}" for v in e["per_seed"]),
             ", ".join(str(r["tuned"].get(name, "-")) for r in runs)] for name, e in doc["policies"].items()]
    print(table(rows, header=["policy", "active days per user", "vs oracle threshold", "per seed", "tuned"],
                title=f"notification policies with the hidden state: {args.users:,} users x {args.days} days"))
    text = json.dumps(doc, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
