"""Off-policy evaluation of notification policies from an exploration log, and the simulated truth.

The estimand (per decision): the expected number of active days in the ``window`` days that start
with a decision, when the target policy makes that decision and the logging policy makes the
later ones, averaged over the decisions (enabled user-days) the logging policy meets. It answers
"is this policy's send/skip choice better than logging's, decision by decision", the quantity an
exploration log supports without weights multiplied over a whole month (whose variance explodes
with the number of days). Estimators over logged decisions ``i`` (action ``a_i`` taken with
logged probability ``mu_i``, reward ``R_i`` = active days in the window, target probability
``pi_i(a)``, weight ``w_i = pi_i(a_i) / mu_i``):

- IPS: mean w_i R_i; SNIPS: sum w_i R_i / sum w_i;
- DR: mean (sum_a pi_i(a) q(x_i, a) + w_i (R_i - q(x_i, a_i))), ``q`` a per-action least-squares
  reward model, cross-fitted over two halves of the users;
- 95% intervals: percentile bootstrap over users (a user's decisions move together).

The truth (:func:`simulated_truth`) plays the same logging policy again on the log's users with
fresh random numbers and, at every decision, simulates both actions forward ``reps`` times.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from funnel.notify.history import FEATURES
from funnel.notify.response import design
from funnel.notify.simulator import NotifyConfig, Population, Simulator, _play

WINDOW_DAYS = 7


def window_rewards(log: pd.DataFrame, activity: pd.DataFrame, days: int, window: int = WINDOW_DAYS) -> pd.DataFrame:
    """Decisions whose window ends inside the log, with ``reward`` = the user's active days in it."""
    last = days - window
    rows = log[log["day"] <= last].reset_index(drop=True)
    if rows.empty:
        raise FunnelError(f"notify ope: the log covers {days} days, fewer than the {window}-day reward window")
    act = activity[["user_id", "day"]].drop_duplicates()
    joined = rows[["user_id", "day"]].reset_index().merge(act.rename(columns={"day": "active_day"}), on="user_id")
    inside = (joined["active_day"] >= joined["day"]) & (joined["active_day"] < joined["day"] + window)
    counts = joined[inside].groupby("index").size()
    rows["reward"] = counts.reindex(rows.index, fill_value=0).to_numpy(np.float64)
    return rows


def _reward_model(x: np.ndarray, sent: np.ndarray, reward: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Cross-fitted q(x, a) for both actions: [n, 2] (column 1 = push)."""
    z = np.column_stack([np.ones(len(x)), x])
    out = np.zeros((len(x), 2))
    for f in (0, 1):
        train, test = fold != f, fold == f
        for a in (0, 1):
            sel = train & (sent == bool(a))
            coef, *_ = np.linalg.lstsq(z[sel], reward[sel], rcond=None)
            out[test, a] = z[test] @ coef
    return out


def _terms(rows: pd.DataFrame, p_send: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per logged decision: the importance weight ``w``, ``w * reward`` and the DR term of a target
    that pushes with probability ``p_send``; and each row's user (index into the sorted user ids)."""
    sent = rows["send"].to_numpy(bool)
    mu = rows["propensity"].to_numpy(np.float64)
    if np.any(mu <= 0):
        raise FunnelError("notify ope: the log has decisions with propensity 0 (it must record the chance of the "
                          "action taken)")
    reward = rows["reward"].to_numpy(np.float64)
    w = np.where(sent, p_send, 1.0 - p_send) / mu
    x = design(rows[list(FEATURES)].to_numpy(np.float64))
    users, user_index = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    fold = np.random.default_rng(seed).integers(0, 2, len(users))[user_index]
    q = _reward_model(x, sent, reward, fold)
    dr = p_send * q[:, 1] + (1 - p_send) * q[:, 0] + w * (reward - q[np.arange(len(q)), sent.astype(int)])
    return w, w * reward, dr, user_index


def _user_sums(user_index: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """[len(columns), users]: each column summed per user (a bootstrap over users reweights these)."""
    n = int(user_index.max()) + 1 if len(user_index) else 0
    return np.stack([np.bincount(user_index, weights=v, minlength=n) for v in columns])


def _bootstrap_counts(users: int, bootstrap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return rng.multinomial(users, np.full(users, 1.0 / users), size=bootstrap)


def estimate(rows: pd.DataFrame, p_send: np.ndarray, bootstrap: int = 200, seed: int = 0) -> dict:
    """IPS, SNIPS and DR estimates (with 95% bootstrap intervals) of a target policy that pushes
    with probability ``p_send`` at each row of ``window_rewards``."""
    w, wr, dr, user_index = _terms(rows, p_send, seed)
    per_user = _user_sums(user_index, [wr, w, dr, np.ones(len(w))])

    def point(sums: np.ndarray) -> np.ndarray:
        wr, ws, dr, n = sums
        return np.array([wr / n, wr / ws if ws > 0 else np.nan, dr / n])

    est = point(per_user.sum(axis=1))
    boots = np.array([point(per_user @ c) for c in _bootstrap_counts(per_user.shape[1], bootstrap, seed)])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    ess = w.sum() ** 2 / max((w**2).sum(), 1e-12)
    return {name: {"estimate": float(est[i]), "low": float(lo[i]), "high": float(hi[i])}
            for i, name in enumerate(("ips", "snips", "dr"))} | {"decisions": int(len(rows)),
                                                                  "effective_sample_size": float(ess)}


def difference(rows: pd.DataFrame, p_new: np.ndarray, p_base: np.ndarray, bootstrap: int = 1000,
               seed: int = 0) -> dict:
    """DR estimate of (value of ``p_new`` - value of ``p_base``) per decision of ``window_rewards``
    rows, paired (the same decisions, the same reward model), with a 95% bootstrap interval over
    users, and how many decisions the two policies treat differently (|p_new - p_base| > 0.5)."""
    _, _, dr_new, user_index = _terms(rows, p_new, seed)
    _, _, dr_base, _ = _terms(rows, p_base, seed)
    per_user = _user_sums(user_index, [dr_new - dr_base, np.ones(len(dr_new))])
    est = per_user[0].sum() / per_user[1].sum()
    boots = [(per_user[0] @ c) / (per_user[1] @ c) for c in _bootstrap_counts(per_user.shape[1], bootstrap, seed)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"estimate": float(est), "low": float(lo), "high": float(hi), "decisions": int(len(rows)),
            "differing": int(np.sum(np.abs(np.asarray(p_new) - np.asarray(p_base)) > 0.5))}


def branch_values(sim: Simulator, day_index: int, observed, first: np.ndarray, later, window: int, reps: int,
                  seed: int) -> np.ndarray:
    """Active days over ``window`` days per user when today's action is ``first`` (bool per user)
    and ``later`` (a policy) decides the following days: the mean of ``reps`` simulations from the
    simulator's current hidden state, with fresh random numbers."""
    n = len(sim.population.user_id)
    idx = np.tile(np.arange(n), reps)
    hidden, history = sim.hidden.take(idx), sim.history.take(idx)
    coin = np.random.default_rng([seed, day_index, 13])
    total = np.zeros(len(idx))
    for t in range(window):
        draws = [sim.draw(day_index + t, stream=seed * reps + 1 + r) for r in range(reps)]
        day = type(observed)(**{k: np.concatenate([getattr(d, k) for d in draws]) for k in vars(observed)})
        if t == 0:  # today's item is the one the decision saw; its coin flips are fresh
            for k in ("item_id", "relevance", "score"):
                setattr(day, k, getattr(observed, k)[idx])
            send = first[idx]
        else:
            feats = history.features(day.score)
            send = coin.random(len(idx)) < later.decide(feats, history.enabled, day_index + t)
        total += _play(sim.cfg, sim.population, hidden, history, send, day, idx).active
    return total.reshape(reps, n).mean(axis=0)


def simulated_truth(cfg: NotifyConfig, logging, targets: dict, window: int = WINDOW_DAYS, reps: int = 8,
                    population: Population | None = None, replays: int = 1) -> dict:
    """The estimand of :func:`estimate` for every target policy, by simulation.

    Pass the log's config: the same users (their hidden traits), ``replays`` fresh runs of the
    logging policy with other random numbers, and at each decision both actions simulated forward
    ``reps`` times. The truth is then the value on the log's population, which the bootstrap over
    users brackets (a truth on other users would add their own sampling noise). One replay is
    itself a random path of the users' states, as noisy as the log: average several where the
    truth is compared with an interval."""
    population = population or Population.generate(cfg)
    runs = [_replay(cfg, logging, targets, window, reps, population, 1000 + r) for r in range(replays)]
    return {name: float(np.mean([run[name] for run in runs])) for name in targets}


def _replay(cfg: NotifyConfig, logging, targets: dict, window: int, reps: int, population: Population,
            stream: int) -> dict:
    sim = Simulator(cfg, population)
    n = len(sim.population.user_id)
    coin = np.random.default_rng([cfg.seed, 11, stream])
    sums = {name: 0.0 for name in targets}
    decisions = 0
    for d in range(cfg.days):
        day = sim.draw(d, stream)
        feats = sim.history.features(day.score)
        enabled = sim.history.enabled.copy()
        if d <= cfg.days - window and enabled.any():
            q = [branch_values(sim, d, day, np.full(n, bool(a)), logging, window, reps, stream) for a in (0, 1)]
            for name, policy in targets.items():
                p = np.clip(policy.decide(feats, enabled, d), 0, 1)
                sums[name] += float((p * q[1] + (1 - p) * q[0])[enabled].sum())
            decisions += int(enabled.sum())
        send = coin.random(n) < np.where(enabled, logging.decide(feats, enabled, d), 0.0)
        sim.step(send, day)
    return {name: total / decisions for name, total in sums.items()}

