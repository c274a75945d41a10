"""``funnel ab plan | report``: sizing an A/B test and analysing it from the served-prediction log.

Statistics (each a small function with its formula, checked against independent computations in
``tests/unit/test_ab.py``):

- ``sample_size``: users per variant for a two-sided test of two proportions (normal approximation,
  pooled variance under H0), relative minimum detectable effect;
- ``compare``: Welch's test of the difference of per-user means, and the relative lift with a
  delta-method interval (the ratio of two independent means);
- ``srm_p_value``: sample-ratio mismatch, a chi-square test of the users per variant against the
  planned traffic (a broken assignment or logging makes every other figure meaningless);
- ``cuped``: variance reduction with a pre-exposure covariate, theta pooled over variants;
- ``msprt_p_values``: always-valid p-values (mixture sequential probability ratio test with a
  normal mixing distribution), so looking every day does not inflate false positives.

``report`` joins the log's exposures (first time each user was served in the experiment, and
the variant) with later purchases: per user conversion (bought an item the variant showed them
within ``window_days``), purchases and revenue in the window, and the same window before the
exposure as the CUPED covariate. Guardrails per variant: catalogue coverage (items shown) and the
server's latency per logged answer (p50, p99, and the change in mean latency against control).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from funnel.core.errors import FunnelError

METRICS = ("conversion", "purchases", "revenue")


def sample_size(baseline: float, mde: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Users per variant to detect a relative lift ``mde`` over conversion rate ``baseline``."""
    if not 0 < baseline < 1:
        raise FunnelError(f"--baseline must be a rate in (0, 1) (got {baseline})")
    p1, p2 = baseline, baseline * (1 + mde)
    if mde == 0 or not 0 < p2 < 1:
        raise FunnelError(f"--mde {mde} gives a treated rate {p2:.4f} outside (0, 1) or no effect")
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise FunnelError("--power and --alpha must be in (0, 1)")
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pooled = (p1 + p2) / 2
    n = (z_a * math.sqrt(2 * pooled * (1 - pooled)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return int(math.ceil(n / (p2 - p1) ** 2))


def compare(control: np.ndarray, treated: np.ndarray) -> dict[str, Any]:
    """Welch's t-test of mean(treated) - mean(control); relative lift with a delta-method 95% interval."""
    a, b = np.asarray(control, float), np.asarray(treated, float)
    if len(a) < 2 or len(b) < 2:
        return {"control_mean": float(a.mean()) if len(a) else None, "mean": float(b.mean()) if len(b) else None,
                "difference": None, "lift": None, "ci95": None, "p_value": None}
    ma, mb, va, vb = a.mean(), b.mean(), a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        p = 1.0 if ma == mb else 0.0
    else:
        dof = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if va else 0) + (vb**2 / (len(b) - 1) if vb else 0))
        p = float(2 * stats.t.sf(abs(mb - ma) / se, dof))
    out: dict[str, Any] = {"control_mean": float(ma), "mean": float(mb), "difference": float(mb - ma),
                           "difference_ci95": [float(mb - ma - 1.96 * se), float(mb - ma + 1.96 * se)],
                           "p_value": p}
    if ma > 0:
        lift = mb / ma - 1
        se_lift = math.sqrt(vb / ma**2 + mb**2 * va / ma**4)
        out.update(lift=float(lift), ci95=[float(lift - 1.96 * se_lift), float(lift + 1.96 * se_lift)])
    else:
        out.update(lift=None, ci95=None)
    return out


def srm_p_value(users: dict[str, int], traffic: dict[str, float]) -> float:
    """Chi-square p-value of the observed users per variant against the planned shares."""
    names = list(traffic)
    observed = np.array([users.get(n, 0) for n in names], float)
    expected = np.array([traffic[n] for n in names]) * observed.sum()
    if observed.sum() == 0 or len(names) < 2:
        return 1.0
    return float(stats.chisquare(observed, expected).pvalue)


def cuped(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y - theta (x - mean x), theta = cov(x, y) / var(x) over all users (all variants together)."""
    y, x = np.asarray(y, float), np.asarray(x, float)
    var = x.var()
    if var == 0:
        return y
    theta = np.cov(x, y, ddof=0)[0, 1] / var
    return y - theta * (x - x.mean())


def msprt_p_values(control_days: list[np.ndarray], treated_days: list[np.ndarray], tau: float = 0.05) -> list[float]:
    """Always-valid p-values after each look (cumulative data up to that day), normal mixture N(0, tau^2)."""
    p, out = 1.0, []
    a, b = np.empty(0), np.empty(0)
    for day_a, day_b in zip(control_days, treated_days):
        a, b = np.concatenate([a, day_a]), np.concatenate([b, day_b])
        if len(a) < 2 or len(b) < 2:
            out.append(p)
            continue
        v = a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
        if v > 0:
            delta = b.mean() - a.mean()
            log_lr = 0.5 * math.log(v / (v + tau**2)) + tau**2 * delta**2 / (2 * v * (v + tau**2))
            p = min(p, math.exp(-log_lr) if log_lr > 0 else 1.0)
        out.append(p)
    return out


def read_purchases(path: str | Path) -> pd.DataFrame:
    """user_id, item_id, timestamp (+ price) from a canonical dataset folder or a parquet/CSV/JSON-lines file."""
    path = Path(path)
    if path.is_dir():
        from funnel.data.canonical import read_dataset

        frame = read_dataset(path).interactions()
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        try:
            frame = pd.read_json(path, lines=True)
        except ValueError as exc:
            raise FunnelError(f"{path}: not JSON lines ({exc})") from None
    else:
        from funnel.data.canonical import read_table

        frame = read_table(path, "purchases", ("user_id", "item_id"))
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        raise FunnelError(f"{path}: purchases need user_id, item_id, timestamp (missing: {', '.join(missing)})")
    frame = frame.assign(user_id=frame["user_id"].astype(str), item_id=frame["item_id"].astype(str))
    ts = frame["timestamp"]
    frame["timestamp"] = pd.to_datetime(ts, unit="s") if pd.api.types.is_numeric_dtype(ts) else pd.to_datetime(ts)
    return frame


def exposures(logs: pd.DataFrame, experiment: str | None) -> tuple[pd.DataFrame, int]:
    """One row per exposed user: first exposure time, variant, every item shown. Users logged in
    more than one variant (a broken assignment) are dropped and counted."""
    if "variant" not in logs.columns or logs["variant"].fillna("").eq("").all():
        raise FunnelError("the prediction log has no variants: serve with --variant/--traffic to run an experiment")
    frame = logs[logs["variant"].fillna("") != ""]
    if experiment is not None:
        frame = frame[frame["experiment"] == experiment]
        if frame.empty:
            raise FunnelError(f"no logged predictions of experiment {experiment!r} "
                              f"(found: {', '.join(sorted(logs['experiment'].dropna().unique()))})")
    elif frame["experiment"].nunique() > 1:
        raise FunnelError(f"the log holds several experiments ({', '.join(sorted(frame['experiment'].unique()))}); "
                          "choose one with --experiment")
    frame = frame.assign(time=pd.to_datetime(frame["time"], unit="s"))
    variants = frame.groupby("user_id")["variant"].nunique()
    mixed = variants[variants > 1].index
    frame = frame[~frame["user_id"].isin(mixed)]
    first = frame.sort_values("time").groupby("user_id").agg(variant=("variant", "first"), exposed=("time", "first"))
    shown = frame.explode("items").groupby("user_id")["items"].agg(lambda s: set(s.dropna()))
    return first.join(shown.rename("shown")).reset_index(), int(len(mixed))


def user_metrics(exposed: pd.DataFrame, purchases: pd.DataFrame, window_days: float) -> pd.DataFrame:
    """Per exposed user: conversion, purchases and revenue in the window after exposure; pre-period purchases."""
    window = pd.Timedelta(days=window_days)
    joined = purchases.merge(exposed[["user_id", "exposed", "shown"]], on="user_id", how="inner")
    after = joined[(joined["timestamp"] >= joined["exposed"]) & (joined["timestamp"] < joined["exposed"] + window)]
    before = joined[(joined["timestamp"] < joined["exposed"]) & (joined["timestamp"] >= joined["exposed"] - window)]
    hit = after[[item in shown for item, shown in zip(after["item_id"], after["shown"])]]
    out = exposed[["user_id", "variant", "exposed"]].set_index("user_id")
    out["conversion"] = out.index.isin(hit["user_id"]).astype(float)
    out["purchases"] = after.groupby("user_id").size().reindex(out.index).fillna(0).astype(float)
    if "price" in after:
        out["revenue"] = after.groupby("user_id")["price"].sum().reindex(out.index).fillna(0).astype(float)
    out["pre_purchases"] = before.groupby("user_id").size().reindex(out.index).fillna(0).astype(float)
    first_hit = (hit["timestamp"] - hit["exposed"]).groupby(hit["user_id"]).min()
    out["conversion_day"] = first_hit.reindex(out.index).dt.total_seconds() // 86400
    return out.reset_index()


def report(logs: pd.DataFrame, purchases: pd.DataFrame, window_days: float = 7.0, control: str | None = None,
           traffic: dict[str, float] | None = None, experiment: str | None = None,
           sequential: bool = False) -> dict[str, Any]:
    """The experiment's analysis as a JSON-ready dict (see the module docstring)."""
    exposed, mixed = exposures(logs, experiment)
    users = user_metrics(exposed, purchases, window_days)
    names = sorted(users["variant"].unique())
    control = control or ("control" if "control" in names else names[0])
    if control not in names:
        raise FunnelError(f"control variant {control!r} not in the log (found: {', '.join(names)})")
    counts = users["variant"].value_counts().to_dict()
    traffic = traffic or {n: 1 / len(names) for n in names}
    metrics = [m for m in METRICS if m in users]
    users["conversion_cuped"] = cuped(users["conversion"], users["pre_purchases"])
    variants = {}
    for name in names:
        rows = users[users["variant"] == name]
        shown = set().union(*exposed.loc[exposed["variant"] == name, "shown"]) if len(rows) else set()
        variants[name] = {"users": int(len(rows)), **{m: float(rows[m].mean()) for m in metrics},
                          "items_shown": len(shown)}
    comparisons = []
    days = int(math.ceil(window_days))
    for name in names:
        if name == control:
            continue
        a, b = users[users["variant"] == control], users[users["variant"] == name]
        for metric in metrics + ["conversion_cuped"]:
            comparisons.append({"variant": name, "control": control, "metric": metric,
                                **compare(a[metric].to_numpy(), b[metric].to_numpy())})
        by_day = []
        for d in range(days):  # novelty: conversions on day d after the first exposure
            ya, yb = (a["conversion_day"] == d).astype(float), (b["conversion_day"] == d).astype(float)
            by_day.append({"day": d, **{k: v for k, v in compare(ya, yb).items() if k in ("lift", "p_value")}})
        comparisons[-len(metrics) - 1]["lift_by_day"] = by_day
        if sequential:  # looks once per calendar day of first exposure
            day_a = a["exposed"].dt.floor("D")
            day_b = b["exposed"].dt.floor("D")
            looks = sorted(set(day_a) | set(day_b))
            p = msprt_p_values([a.loc[day_a == t, "conversion"].to_numpy() for t in looks],
                               [b.loc[day_b == t, "conversion"].to_numpy() for t in looks])
            comparisons[-len(metrics) - 1]["sequential_p_values"] = [
                {"day": str(t.date()), "p_value": v} for t, v in zip(looks, p)]
    return {"experiment": experiment or str(logs["experiment"].dropna().iloc[0]), "control": control,
            "window_days": window_days, "variants": variants, "comparisons": comparisons,
            "srm_p_value": srm_p_value(counts, traffic), "traffic": traffic, "users_in_two_variants": mixed,
            **latency_guardrails(logs, experiment, names, control, variants)}


def latency_guardrails(logs: pd.DataFrame, experiment: str | None, names: list[str], control: str,
                       variants: dict[str, dict]) -> dict[str, Any]:
    """Per variant: catalogue coverage (items shown) and the server's time per logged answer
    (``latency_ms``: each variant's own share of a request), with the treatment's change in
    mean latency against control (Welch)."""
    guardrails: dict[str, Any] = {name: {"items_shown": variants[name]["items_shown"]} for name in names}
    frame = logs if experiment is None else logs[logs["experiment"] == experiment]
    if "latency_ms" not in frame.columns or frame["latency_ms"].isna().all():
        return {"guardrails": guardrails, "notes": ["the prediction log has no latency_ms (logged by an older "
                                                    "funnel): compare latency in Triton's statistics"]}
    answers = frame.dropna(subset=["latency_ms"]).drop_duplicates(["request_id", "variant"])
    samples = {name: answers.loc[answers["variant"] == name, "latency_ms"].to_numpy(float) for name in names}
    for name, ms in samples.items():
        if len(ms):
            guardrails[name].update(requests=int(len(ms)), latency_ms_p50=float(np.percentile(ms, 50)),
                                    latency_ms_p99=float(np.percentile(ms, 99)), latency_ms_mean=float(ms.mean()))
    for name in names:
        if name != control and len(samples[name]) > 1 and len(samples[control]) > 1:
            guardrails[name]["latency_vs_control"] = compare(samples[control], samples[name])
    return {"guardrails": guardrails,
            "notes": ["latency_ms: the server's own time per logged answer (sampled requests; network excluded)"]}
