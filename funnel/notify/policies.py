"""Send-or-skip policies. Each has ``decide(features, enabled, day) -> P(send)`` over users, with
``features`` the [n, len(FEATURES)] matrix of :class:`funnel.notify.history.History`.

- ``always``: push every enabled user every day (the myopic default).
- ``threshold``: push when the predicted open probability exceeds ``t``.
- ``cap``: push while the user got fewer than ``n`` pushes in the last 7 days.
- ``random``: push with probability ``p`` (the exploration policy that writes a training log).
- ``model``: plan with the response models. For each user it simulates the next ``horizon`` days
  ``rollouts`` times after pushing today and after skipping today (the same random numbers for
  both: common random numbers), continuing with the best threshold policy under the models, and
  pushes when pushing gives more expected active days. This is one step of policy improvement
  over that threshold policy (a rollout algorithm), so it accounts for fatigue, ignored pushes and
  the risk of a disable, not only today's open probability. Trained with the log's outcomes, the
  planner ships only if an off-policy estimate from the log finds it better than its threshold
  with 95% confidence (``improvement_check``); otherwise the policy is that threshold.

A policy file (``funnel notify train``) is JSON: its kind, parameters and response models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from funnel.core.errors import FunnelError
from funnel.notify.history import History, from_features
from funnel.notify.response import ResponseModels, design

POLICY_VERSION = 1
KINDS = ("always", "threshold", "cap", "random", "model")


class Always:
    kind = "always"

    def decide(self, features: np.ndarray, enabled: np.ndarray, day: int = 0) -> np.ndarray:
        return np.ones(len(features))

    def params(self) -> dict:
        return {}


class RandomSend:
    kind = "random"

    def __init__(self, p: float = 0.5):
        if not 0 < p < 1:
            raise FunnelError(f"random policy: p must be in (0, 1) (got {p})")
        self.p = float(p)

    def decide(self, features: np.ndarray, enabled: np.ndarray, day: int = 0) -> np.ndarray:
        return np.full(len(features), self.p)

    def params(self) -> dict:
        return {"p": self.p}


class Cap:
    kind = "cap"

    def __init__(self, n: int):
        if n < 0:
            raise FunnelError(f"cap policy: n must be >= 0 (got {n})")
        self.n = int(n)

    def decide(self, features: np.ndarray, enabled: np.ndarray, day: int = 0) -> np.ndarray:
        return (features[:, 1] < self.n).astype(np.float64)  # pushes in the last 7 days

    def params(self) -> dict:
        return {"n": self.n}


class Threshold:
    kind = "threshold"

    def __init__(self, models: ResponseModels, t: float):
        self.models, self.t = models, float(t)

    def decide(self, features: np.ndarray, enabled: np.ndarray, day: int = 0) -> np.ndarray:
        return (self.models.p_open(design(features)) > self.t).astype(np.float64)

    def params(self) -> dict:
        return {"t": self.t}


def rollout_values(models: ResponseModels, history: History, score: np.ndarray, first: np.ndarray | None,
                   continuation: float, horizon: int, rollouts: int, seed: int) -> np.ndarray:
    """Expected active days over ``horizon`` days per user (mean of ``rollouts`` model simulations).

    Day 0 pushes where ``first`` (``None``: follow the continuation threshold from day 0 too), later
    days push when the predicted open probability exceeds ``continuation``. Future items' scores are
    drawn from the log's scores. The same ``seed`` gives the same random numbers.
    """
    return _rollouts(models, history, score, first, continuation, horizon, rollouts, seed).mean(axis=0)


def _rollouts(models, history, score, first, continuation, horizon, rollouts, seed) -> np.ndarray:
    """[rollouts, n] active days of each simulated future."""
    n = len(history)
    idx = np.tile(np.arange(n), rollouts)
    h = history.take(idx)
    rng = np.random.default_rng(seed)
    total = np.zeros(len(idx))
    for t in range(horizon):
        s = score[idx] if t == 0 else rng.choice(models.score_pool, len(idx))
        x = design(h.features(s))
        p_open = models.p_open(x)
        want = (p_open > continuation) if (t > 0 or first is None) else first[idx]
        send = want & h.enabled
        u = rng.random((3, len(idx)))
        p_active = models.p_active(x, send)
        # the day's expected activity (Rao-Blackwellised: less noise than the sampled outcome)
        total += np.where(send, p_open + (1 - p_open) * p_active, p_active)
        opened = send & (u[0] < p_open)
        disabled = send & ~opened & (u[1] < models.p_disable(x))
        active = opened | (u[2] < p_active)
        h.update(send, opened, active, disabled)
    return total.reshape(rollouts, n)


class ModelPolicy:
    kind = "model"

    def __init__(self, models: ResponseModels, continuation: float, horizon: int = 14, rollouts: int = 32,
                 seed: int = 0, confidence: float = 2.0, plan: bool = True, check: dict | None = None):
        if horizon < 1 or rollouts < 1:
            raise FunnelError("model policy: horizon and rollouts must be >= 1")
        self.models, self.continuation = models, float(continuation)
        self.horizon, self.rollouts, self.seed = int(horizon), int(rollouts), int(seed)
        self.confidence = float(confidence)
        self.plan, self.check = bool(plan), check  # see improvement_check

    def gain(self, features: np.ndarray, day: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Expected extra active days over the horizon from pushing today instead of skipping, and
        the standard error of that mean over the rollouts."""
        history = from_features_matrix(features)
        score = features[:, 0]
        seed = self.seed * 100_003 + day
        n = len(score)
        push = _rollouts(self.models, history, score, np.ones(n, bool), self.continuation, self.horizon,
                         self.rollouts, seed)
        skip = _rollouts(self.models, history, score, np.zeros(n, bool), self.continuation, self.horizon,
                         self.rollouts, seed)
        diff = push - skip
        return diff.mean(axis=0), diff.std(axis=0) / np.sqrt(max(self.rollouts - 1, 1))

    def base(self, features: np.ndarray) -> np.ndarray:
        """The continuation threshold's choice: push when the predicted open probability exceeds it."""
        return (self.models.p_open(design(features)) > self.continuation).astype(np.float64)

    def planned(self, features: np.ndarray, day: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The planner's P(send) and gain: push where the plan says pushing wins; where the rollouts
        cannot tell (|gain| within ``confidence`` standard errors), keep the base policy's choice."""
        gain, se = self.gain(features, day)
        sure = np.abs(gain) > self.confidence * se
        return np.where(sure, gain > 0, self.base(features) > 0).astype(np.float64), gain

    def explain(self, features: np.ndarray, day: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """P(send) and the planned gain; the planner decides only where ``plan`` (its deviations from
        the base passed :func:`improvement_check`), the base threshold otherwise."""
        p, gain = self.planned(features, day)
        return (p if self.plan else self.base(features)), gain

    def decide(self, features: np.ndarray, enabled: np.ndarray, day: int = 0) -> np.ndarray:
        return self.planned(features, day)[0] if self.plan else self.base(features)

    def params(self) -> dict:
        return {"continuation": self.continuation, "horizon": self.horizon, "rollouts": self.rollouts,
                "seed": self.seed, "confidence": self.confidence, "plan": self.plan, "check": self.check}


def improvement_check(policy: ModelPolicy, rows, seed: int = 0) -> dict:
    """Does the planner beat its own base threshold on the exploration log?

    ``rows``: ``funnel.notify.evaluation.window_rewards`` of the log. A paired doubly robust
    estimate of the planner's value minus the base's (active days in the reward window per
    decision, bootstrap over users); the plan is used only when the interval's lower end is above
    0 (high-confidence policy improvement: a planner whose models are wrong about the harm of a
    push must not ship on their word alone). Returns the estimate, its interval, the number of
    decisions the two treat differently, and ``use_plan``.
    """
    from funnel.notify import evaluation
    from funnel.notify.history import FEATURES

    features = rows[list(FEATURES)].to_numpy(np.float64)
    days = rows["day"].to_numpy()
    planned = np.zeros(len(rows))
    for d in np.unique(days):
        sel = days == d
        planned[sel] = policy.planned(features[sel], int(d))[0]
    diff = evaluation.difference(rows, planned, policy.base(features), seed=seed)
    return {**{k: round(v, 5) if isinstance(v, float) else v for k, v in diff.items()},
            "use_plan": bool(diff["low"] > 0)}


def from_features_matrix(features: np.ndarray) -> History:
    import pandas as pd

    from funnel.notify.history import FEATURES

    return from_features(pd.DataFrame(features, columns=list(FEATURES)))


def best_continuation(models: ResponseModels, features: np.ndarray, horizon: int = 14, rollouts: int = 8,
                      grid=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.01), seed: int = 0) -> tuple[float, dict]:
    """The open-probability threshold whose model rollouts from the logged states give the most
    active days over the horizon (1.01 = never push)."""
    history = from_features_matrix(features)
    values = {float(t): float(rollout_values(models, history, features[:, 0], None, t, horizon, rollouts, seed).mean())
              for t in grid}
    return max(values, key=values.get), values


def train(log, horizon: int = 14, rollouts: int = 32, sample: int = 2000, seed: int = 0, rewards=None) -> ModelPolicy:
    """Fit the response models on an exploration log and pick the continuation threshold; with
    ``rewards`` (the log's ``evaluation.window_rewards``), the planner is kept only where
    :func:`improvement_check` finds it better than that threshold (recorded in ``check``)."""
    models = ResponseModels.fit(log)
    from funnel.notify.history import FEATURES

    rows = log.sample(min(sample, len(log)), random_state=seed)
    t, _ = best_continuation(models, rows[list(FEATURES)].to_numpy(np.float64), horizon, seed=seed)
    policy = ModelPolicy(models, t, horizon, rollouts, seed)
    if rewards is not None:
        policy.check = improvement_check(policy, rewards, seed)
        policy.plan = policy.check["use_plan"]
    return policy


def save(policy, path: str | Path) -> None:
    body = {"kind": policy.kind, "version": POLICY_VERSION, "params": policy.params()}
    if hasattr(policy, "models"):
        body["models"] = policy.models.to_dict()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def load(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FunnelError(f"{path}: no policy file here (make one: funnel notify train LOG --out {path})")
    try:
        body = json.loads(path.read_text())
        kind, params = body["kind"], body["params"]
    except (ValueError, KeyError, TypeError):
        raise FunnelError(f"{path}: not a funnel notification policy (JSON with kind and params)") from None
    if body.get("version") != POLICY_VERSION or kind not in KINDS:
        raise FunnelError(f"{path}: unsupported policy (kind {kind!r}, version {body.get('version')!r})")
    models = ResponseModels.from_dict(body["models"]) if "models" in body else None
    if kind in ("threshold", "model") and models is None:
        raise FunnelError(f"{path}: a {kind} policy needs its response models")
    return {"always": lambda: Always(), "random": lambda: RandomSend(**params), "cap": lambda: Cap(**params),
            "threshold": lambda: Threshold(models, **params), "model": lambda: ModelPolicy(models, **params)}[kind]()
