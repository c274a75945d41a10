"""``funnel ope LOGS --target REPO --outcomes F``: a new policy's value estimated from the
prediction log of another (exploring) policy, before anyone is exposed to it.

Two estimands, chosen by ``slots``:

- ``slots = 1``, the **top slot**: the share of answers whose first item is bought within the
  window. The logged propensity of the first item (Plackett-Luce, see
  ``ensemble.ops.order.plackett_luce``) is the exact chance that the logging policy put it there.
- ``slots = K > 1``, **purchases from the first K slots**: the expected number of the list's
  items bought within the window, under an item-level click model (an item's chance of being
  bought once shown in the first K slots depends on the user and the item, not on its exact
  slot or its neighbours: Li et al., "Offline evaluation of ranking policies with click
  models", KDD 2018). The weight of a shown item is 1 / P(the logging policy puts it in the
  first K): a sum over every prefix of the draw, estimated per logged answer from its logged
  candidates, scores, tiers and temperature by Rao-Blackwellised Monte Carlo
  (:func:`inclusion_probabilities`).

Estimators over logged answers ``i`` (shown items ``a`` with propensity ``p_a`` and reward ``r_a`` =
bought ``a`` in the window; the target's items ``T_i``; weight ``w_a = 1[a in T_i] / p_a``):

- IPS: mean_i sum_a w_a r_a; SNIPS: IPS rescaled by mean_i |T_i| / mean_i sum_a w_a;
- DR: mean_i (sum_{t in T_i} q(t) + sum_a w_a (r_a - q(a))) with q(item) the item's logged
  conversion rate once shown (a reward model fitted on the same log, shrunk to the overall rate);
- intervals: percentile bootstrap over answers; effective sample size (sum w)^2 / sum w^2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError

DEAD_TIER = 1_000  # sorts after every real tier: candidates that cannot be drawn


def inclusion_probabilities(scores: np.ndarray, tiers: np.ndarray | None, temperature: float, k: int,
                            samples: int = 256, seed: int = 0) -> np.ndarray:
    """P(candidate among the first ``k`` items drawn) under ``ensemble.ops.order.order_slots``.

    ``scores`` (answers x candidates; NaN or -inf where a candidate cannot be drawn), ``tiers``
    (lower drawn first; ``None``: one tier). The draw is Plackett-Luce over score / T, tier by
    tier. For each sampled draw the estimate adds, for every candidate, its exact conditional
    chance of being picked at each step it was still available (Rao-Blackwellisation): unbiased,
    and exact for ``k = 1``.
    """
    if temperature <= 0:
        raise FunnelError("inclusion probabilities need a sampled draw (temperature > 0)")
    scores = np.asarray(scores, dtype=np.float64)
    n, width = scores.shape
    alive = np.isfinite(scores)
    tier = np.zeros((n, width)) if tiers is None else np.nan_to_num(np.asarray(tiers, np.float64), nan=DEAD_TIER)
    tier = np.where(alive, tier, DEAD_TIER)
    logits = np.where(alive, scores / temperature, -np.inf)
    kk = min(int(k), width)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, width))
    chunk = max(1, 2**21 // max(samples * width, 1))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        out[lo:hi] = _inclusion_chunk(logits[lo:hi], tier[lo:hi], alive[lo:hi], kk, samples, rng)
    return out


def _inclusion_chunk(logits, tier, alive, kk, samples, rng) -> np.ndarray:
    rows, width = logits.shape
    weight = np.zeros((rows, width))  # exp(logit - the max of its tier): ratios within a tier are exact
    for value in np.unique(tier[alive]):
        member = alive & (tier == value)
        top = np.where(member, logits, -np.inf).max(axis=1, keepdims=True)
        weight = np.where(member, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), weight)
    keys = logits[:, None, :] + rng.gumbel(size=(rows, samples, width))
    tiers3 = np.broadcast_to(tier[:, None, :], keys.shape)
    drawn = np.lexsort((-keys, tiers3), axis=-1)[..., :kk]  # (rows, samples, kk)
    drawn_alive = np.take_along_axis(np.broadcast_to(alive[:, None, :], keys.shape), drawn, axis=-1)
    drawn_tier = np.take_along_axis(tiers3, drawn, axis=-1)
    drawn_weight = np.take_along_axis(np.broadcast_to(weight[:, None, :], keys.shape), drawn, axis=-1)
    position = np.full(keys.shape, kk - 1, dtype=np.int64)  # not drawn: available at every step
    np.put_along_axis(position, drawn, np.broadcast_to(np.arange(kk), drawn.shape), axis=-1)
    total = np.zeros(keys.shape)
    for value in np.unique(tier[alive]):
        step = drawn_alive & (drawn_tier == value)  # steps that draw from this tier
        taken = np.where(step, drawn_weight, 0.0)
        pool = (np.where(alive & (tier == value), weight, 0.0).sum(axis=1))[:, None, None]
        remaining = pool - (np.cumsum(taken, axis=-1) - taken)
        chance = np.where(step, 1.0 / np.maximum(remaining, 1e-300), 0.0)
        summed = np.take_along_axis(np.cumsum(chance, axis=-1), position, axis=-1)
        member = (alive & (tier == value))[:, None, :]
        total += np.where(member, weight[:, None, :] * summed, 0.0)
    return np.minimum(total.mean(axis=1), 1.0)  # one sample may exceed 1; its mean is unbiased


def decisions(logs: pd.DataFrame, purchases: pd.DataFrame, window_days: float = 7.0, slots: int = 1,
              samples: int = 256, seed: int = 0) -> pd.DataFrame:
    """One row per shown item in the first ``slots`` of each logged answer.

    Columns: ``decision`` (the answer's row), ``user_id``, ``time``, ``item``, ``propensity``
    (P(the logging policy shows the item there)) and ``reward`` (bought it within the window).
    """
    if "propensities" not in logs.columns:
        raise FunnelError("the prediction log has no propensities (logged by an older funnel): "
                          "off-policy evaluation needs them")
    if slots < 1:
        raise FunnelError(f"slots must be >= 1 (got {slots})")
    logs = logs.reset_index(drop=True)
    shown = logs["items"].map(lambda items: [str(v) for v in items[:slots]] if items is not None else [])
    first_p = logs["propensities"].map(lambda p: float(p[0]) if p is not None and len(p) else np.nan)
    usable = shown.map(len).gt(0) & first_p.notna()
    if not usable.any():
        raise FunnelError("no logged answer with a shown item and a propensity")
    if (first_p[usable] >= 1.0 - 1e-9).all():
        raise FunnelError("every logged propensity is 1: the logging policy was deterministic (temperature 0), "
                          "so another policy's value cannot be estimated from it; log an exploring policy "
                          "(requests with --temperature > 0)")
    logs, shown = logs[usable], shown[usable]  # deterministic answers stay: their items had probability 1
    if slots == 1:
        propensity = [[float(p[0])] for p in logs["propensities"]]
    else:
        propensity = _list_propensities(logs, shown, slots, samples, seed)
    rows = pd.DataFrame({"decision": np.repeat(logs.index.to_numpy(), shown.map(len).to_numpy()),
                         "item": [v for items in shown for v in items],
                         "propensity": [p for ps in propensity for p in ps]})
    rows = rows.join(logs[["user_id", "time"]], on="decision")
    rows["user_id"] = rows["user_id"].astype(str)
    rows["time"] = pd.to_datetime(rows["time"], unit="s")
    window = pd.Timedelta(days=window_days)
    bought = purchases[["user_id", "item_id", "timestamp"]].rename(columns={"item_id": "item"})
    bought = bought.assign(user_id=bought["user_id"].astype(str), item=bought["item"].astype(str))
    joined = rows.reset_index().merge(bought, on=["user_id", "item"], how="left")
    hit = (joined["timestamp"] >= joined["time"]) & (joined["timestamp"] < joined["time"] + window)
    rows["reward"] = hit.groupby(joined["index"]).any().reindex(rows.index).fillna(False).astype(float)
    return rows[["decision", "user_id", "time", "item", "propensity", "reward"]]


def _list_propensities(logs: pd.DataFrame, shown: pd.Series, slots: int, samples: int, seed: int) -> list[list[float]]:
    """Per answer, each shown item's chance of being in the first ``slots`` (from the logged draw)."""
    needed = {"candidates", "candidate_scores", "candidate_tiers", "temperature"}
    if not needed <= set(logs.columns) or logs["temperature"].isna().all():
        raise FunnelError(f"estimating more than the top slot needs {sorted(needed)} in the log "
                          "(logged by funnel 0.x before they were added): use --slots 1")
    width = max(1, int(logs["candidates"].map(lambda c: 0 if c is None else len(c)).max()))
    scores = np.full((len(logs), width), np.nan)
    tiers = np.zeros((len(logs), width))
    sampled = logs["temperature"].fillna(0).to_numpy(float) > 0
    for row, (cands, score, tier, rid, user) in enumerate(zip(logs["candidates"], logs["candidate_scores"],
                                                              logs["candidate_tiers"], logs.get("request_id", logs.index),
                                                              logs["user_id"])):
        if not sampled[row]:
            continue
        n = 0 if cands is None else len(cands)
        if score is None or tier is None or len(score) != n or len(tier) != n:
            raise FunnelError(f"request {rid}, user {user}: logged candidates, scores and tiers do not line up "
                              "(logged by an older funnel): use --slots 1")
        scores[row, :n], tiers[row, :n] = score, tier
    probs = np.ones(scores.shape)
    for temperature in np.unique(logs["temperature"].to_numpy(float)[sampled]):  # one draw law per temperature
        rows = np.flatnonzero(sampled & (logs["temperature"].to_numpy(float) == temperature))
        probs[rows] = inclusion_probabilities(scores[rows], tiers[rows], float(temperature), slots, samples, seed)
    out = []
    for row, (cands, items) in enumerate(zip(logs["candidates"], shown)):
        if not sampled[row]:  # a deterministic answer: its list was certain
            out.append([1.0] * len(items))
            continue
        where = {c: j for j, c in enumerate(cands)}
        out.append([float(probs[row, where[v]]) if v in where else np.nan for v in items])
    return out


def estimate(frame: pd.DataFrame, targets, bootstrap: int = 500, seed: int = 0, prior: float = 10.0) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the target's value, with bootstrap intervals.

    ``frame``: :func:`decisions`' rows (a ``decision`` column is optional when each answer has
    one row); ``targets``: per decision, in order of first appearance, the target's item or list of items.
    """
    frame = frame.reset_index(drop=True)
    if "decision" not in frame.columns:
        frame = frame.assign(decision=np.arange(len(frame)))
    frame = frame.dropna(subset=["propensity"])
    order = pd.unique(frame["decision"])
    targets = [[str(t)] if isinstance(t, (str, bytes, np.str_)) else [str(v) for v in t] for t in targets]
    if len(targets) != len(order):
        raise FunnelError(f"{len(targets)} target lists for {len(order)} logged decisions")
    index = pd.Series(np.arange(len(order)), index=order)
    di = index.reindex(frame["decision"]).to_numpy()
    wanted = {(d, item) for d, items in zip(range(len(order)), targets) for item in items}
    match = np.fromiter(((d, item) in wanted for d, item in zip(di, frame["item"].astype(str))), bool, len(frame))
    r, p = frame["reward"].to_numpy(float), frame["propensity"].to_numpy(float)
    w = np.where(match, 1.0 / np.maximum(p, 1e-12), 0.0)
    overall = r.mean()
    stats = frame.assign(r=r).groupby("item")["r"].agg(["sum", "count"])
    q_table = (stats["sum"] + prior * overall) / (stats["count"] + prior)  # shrunk item conversion rates
    q = lambda items: pd.Series(items, dtype=object).map(q_table).fillna(overall).to_numpy(float)  # noqa: E731
    n = len(order)
    ips_i = np.bincount(di, w * r, n)
    weight_i = np.bincount(di, w, n)
    sizes = np.array([len(t) for t in targets], float)
    flat = [item for items in targets for item in items]
    dr_i = np.bincount(np.repeat(np.arange(n), sizes.astype(int)), q(flat), n) + np.bincount(
        di, w * (r - q(frame["item"].astype(str).to_numpy())), n)
    logged_i = np.bincount(di, r, n)

    def values(idx: np.ndarray) -> tuple[float, float, float]:
        norm = weight_i[idx].sum()
        snips = float(ips_i[idx].sum() / norm * sizes[idx].sum() / len(idx)) if norm > 0 else float("nan")
        return float(ips_i[idx].mean()), snips, float(dr_i[idx].mean())

    point = values(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.array([values(rng.integers(0, n, n)) for _ in range(bootstrap)])
    out: dict[str, Any] = {"decisions": int(n), "matches": int(match.sum()),
                           "effective_sample_size": float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0,
                           "logging_policy_value": float(logged_i.mean())}
    for name, value, column in zip(("ips", "snips", "dr"), point, boots.T):
        finite = column[np.isfinite(column)]
        ci = [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) else None
        out[name] = {"value": value, "ci95": ci}
    if out["matches"] == 0:
        out["warning"] = "the target never chose a logged item: no overlap, the estimates are meaningless"
    return out


def evaluate_target(frame: pd.DataFrame, target_lists: Callable[[list[str]], list[list[str]]],
                    **kwargs) -> dict[str, Any]:
    """``estimate`` with the target's list for each logged decision's user from ``target_lists(users)``."""
    users = frame.drop_duplicates("decision")["user_id"].tolist()
    return estimate(frame, target_lists(users), **kwargs)
