"""User-response models fitted on an exploration log: will the user open a push, disable
notifications after it, be active today without opening it?

Each is an L2-regularised logistic regression (Newton's method, standardised inputs) on a fixed
expansion of the observable features (:data:`funnel.notify.history.FEATURES`); coefficients are
saved as JSON (no pickles): a policy file is data, not code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from funnel.notify.history import FEATURES

KNOTS = (0.1, 0.25, 0.4, 0.6)  # score hinges: the response to an item's score need not be a straight line
TERMS = ("score", *(f"max(score - {k}, 0)" for k in KNOTS), "log pushes_7d", "log opens_7d", "log ignored_7d",
         "active_7d / 7", "log days_since_push", "log days_since_active", "open_rate", "score x log ignored_7d",
         "score x log pushes_7d", "open_rate x log pushes_7d", "score x open_rate", "pushed yesterday",
         "score x log days_since_push", "organic_rate", "log organic_rate", "organic_rate x active_7d / 7")


def design(features: np.ndarray) -> np.ndarray:
    """[n, len(TERMS)] expansion of the [n, len(FEATURES)] feature matrix."""
    f = np.asarray(features, np.float64)
    score, pushes, opens, ignored, active, since_push, since_active, rate, organic = (
        f[:, i] for i in range(len(FEATURES)))
    lp, li = np.log1p(pushes), np.log1p(ignored)
    ls = np.log1p(since_push)
    return np.column_stack([score, *(np.maximum(score - k, 0.0) for k in KNOTS), lp, np.log1p(opens), li,
                            active / 7.0, ls, np.log1p(since_active), rate, score * li, score * lp, rate * lp,
                            score * rate, since_push == 0, score * ls, organic, np.log(organic),
                            organic * active / 7.0])


@dataclass
class Logistic:
    """``sigmoid(intercept + ((x - mean) / scale) @ coef)``."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> "Logistic":
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = np.column_stack([np.ones(len(x)), (x - mean) / scale])
        w = np.zeros(z.shape[1])
        w[0] = np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6))
        penalty = np.full(z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) + penalty * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        return cls(coef=w[1:], intercept=float(w[0]), mean=mean, scale=scale)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.intercept + ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef)))

    def to_dict(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": self.intercept, "mean": self.mean.tolist(),
                "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Logistic":
        return cls(np.asarray(d["coef"], np.float64), float(d["intercept"]), np.asarray(d["mean"], np.float64),
                   np.asarray(d["scale"], np.float64))


@dataclass
class ResponseModels:
    """P(open | pushed), P(disable | pushed, not opened), P(active | not opened, pushed or not)."""

    open: Logistic
    disable: Logistic
    active: Logistic  # inputs: design + [pushed]
    score_pool: np.ndarray  # scores of logged items: future days' items in rollouts are drawn from it

    @classmethod
    def fit(cls, log: pd.DataFrame) -> "ResponseModels":
        """Fit on decision rows with FEATURES, ``send``, ``opened``, ``disabled``, ``active``."""
        missing = [c for c in (*FEATURES, "send", "opened", "disabled", "active") if c not in log.columns]
        if missing:
            raise FunnelError(f"decision log: missing column(s) {', '.join(missing)}")
        x = design(log[list(FEATURES)].to_numpy(np.float64))
        sent = log["send"].to_numpy(bool)
        opened = log["opened"].to_numpy(bool)
        if sent.sum() < 50 or (~sent).sum() < 50:
            raise FunnelError(f"decision log: need >= 50 pushed and >= 50 skipped decisions to learn from "
                              f"(got {int(sent.sum())} pushed, {int((~sent).sum())} skipped): log with exploration")
        ignored = sent & ~opened
        quiet = ~opened
        return cls(
            open=Logistic.fit(x[sent], opened[sent]),
            disable=Logistic.fit(x[ignored], log["disabled"].to_numpy(bool)[ignored]),
            active=Logistic.fit(np.column_stack([x[quiet], sent[quiet]]), log["active"].to_numpy(bool)[quiet]),
            score_pool=np.sort(log["score"].to_numpy(np.float64))[:: max(1, len(log) // 5000)],
        )

    def p_open(self, x: np.ndarray) -> np.ndarray:
        return self.open.predict(x)

    def p_disable(self, x: np.ndarray) -> np.ndarray:
        return self.disable.predict(x)

    def p_active(self, x: np.ndarray, pushed: np.ndarray) -> np.ndarray:
        return self.active.predict(np.column_stack([x, np.asarray(pushed, np.float64)]))

    def to_dict(self) -> dict:
        return {"terms": list(TERMS), "open": self.open.to_dict(), "disable": self.disable.to_dict(),
                "active": self.active.to_dict(), "score_pool": self.score_pool.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ResponseModels":
        if d.get("terms") != list(TERMS):
            raise FunnelError("policy file: its response models use other features than this funnel "
                              "(retrain: funnel notify train)")
        return cls(Logistic.from_dict(d["open"]), Logistic.from_dict(d["disable"]), Logistic.from_dict(d["active"]),
                   np.asarray(d["score_pool"], np.float64))
