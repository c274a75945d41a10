"""``funnel ope LOGS --target REPO --outcomes F``: a new policy's conversion estimated from the
prediction log of another (exploring) policy, before anyone is exposed to it.

What is estimated: the value of the **top slot**: the share of users who buy, within the window,
the item a policy puts first. For the first position the logged propensity (Plackett-Luce, see
``ensemble.ops.order.plackett_luce``) is the exact marginal probability that the logging policy
showed that item there, so inverse propensity weighting is unbiased without a click model. Deeper
slots need marginal position probabilities of the Plackett-Luce draw (a sum over prefixes) and
are not estimated.

Estimators over logged decisions ``i`` (logged top item ``a_i`` with propensity ``p_i``, reward
``r_i`` = bought ``a_i`` in the window, target's top item ``t_i``, weight ``w_i = 1[t_i = a_i] / p_i``):

- IPS: mean(w r); SNIPS: sum(w r) / sum(w);
- DR: mean(q(t_i) + w_i (r_i - q(a_i))) with q(item) the item's logged conversion rate
  (a reward model fitted on the same log, shrunk to the overall rate);
- intervals: percentile bootstrap over decisions; effective sample size (sum w)^2 / sum w^2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError


def decisions(logs: pd.DataFrame, purchases: pd.DataFrame, window_days: float = 7.0) -> pd.DataFrame:
    """One row per logged answer: user, time, top item, its propensity, reward (bought it in the window)."""
    if "propensities" not in logs.columns:
        raise FunnelError("the prediction log has no propensities (logged by an older funnel): "
                          "off-policy evaluation needs them")
    first_p = logs["propensities"].map(lambda p: float(p[0]) if p is not None and len(p) else np.nan)
    first_item = logs["items"].map(lambda items: str(items[0]) if items is not None and len(items) else None)
    frame = pd.DataFrame({"user_id": logs["user_id"].astype(str), "time": pd.to_datetime(logs["time"], unit="s"),
                          "item": first_item, "propensity": first_p}).dropna()
    if frame.empty:
        raise FunnelError("no logged answer with a shown item and a propensity")
    if (frame["propensity"] >= 1.0 - 1e-9).all():
        raise FunnelError("every logged propensity is 1: the logging policy was deterministic (temperature 0), "
                          "so another policy's value cannot be estimated from it; log an exploring policy "
                          "(requests with --temperature > 0)")
    window = pd.Timedelta(days=window_days)
    bought = purchases[["user_id", "item_id", "timestamp"]].rename(columns={"item_id": "item"})
    joined = frame.reset_index().merge(bought, on=["user_id", "item"], how="left")
    hit = (joined["timestamp"] >= joined["time"]) & (joined["timestamp"] < joined["time"] + window)
    frame["reward"] = hit.groupby(joined["index"]).any().reindex(frame.index).fillna(False).astype(float)
    return frame.reset_index(drop=True)


def estimate(frame: pd.DataFrame, target_items: np.ndarray, bootstrap: int = 500, seed: int = 0,
             prior: float = 10.0) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the target's top-slot conversion, with bootstrap intervals."""
    r = frame["reward"].to_numpy(float)
    p = frame["propensity"].to_numpy(float)
    logged = frame["item"].to_numpy(object)
    match = np.asarray(target_items, dtype=object) == logged
    w = match / p
    overall = r.mean()
    stats = frame.assign(r=r).groupby("item")["r"].agg(["sum", "count"])
    q_table = (stats["sum"] + prior * overall) / (stats["count"] + prior)  # shrunk item conversion rates
    q = lambda items: pd.Series(items).map(q_table).fillna(overall).to_numpy(float)  # noqa: E731
    q_target, q_logged = q(target_items), q(logged)

    def values(idx: np.ndarray) -> tuple[float, float, float]:
        wi, ri = w[idx], r[idx]
        snips = float((wi * ri).sum() / wi.sum()) if wi.sum() > 0 else float("nan")
        return float((wi * ri).mean()), snips, float((q_target[idx] + wi * (ri - q_logged[idx])).mean())

    point = values(np.arange(len(r)))
    rng = np.random.default_rng(seed)
    boots = np.array([values(rng.integers(0, len(r), len(r))) for _ in range(bootstrap)])
    out: dict[str, Any] = {"decisions": int(len(r)), "matches": int(match.sum()),
                           "effective_sample_size": float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0,
                           "logging_policy_value": float(overall)}
    for name, value, column in zip(("ips", "snips", "dr"), point, boots.T):
        finite = column[np.isfinite(column)]
        ci = [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) else None
        out[name] = {"value": value, "ci95": ci}
    if out["matches"] == 0:
        out["warning"] = "the target never chose the logged top item: no overlap, the estimates are meaningless"
    return out


def evaluate_target(frame: pd.DataFrame, top_item: Callable[[list[str]], list[str]], **kwargs) -> dict[str, Any]:
    """``estimate`` with the target's top item for each logged user from ``top_item(users)``."""
    return estimate(frame, np.asarray(top_item(frame["user_id"].tolist()), dtype=object), **kwargs)
