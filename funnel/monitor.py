"""``funnel monitor``: data drift between a reference period and a current one, and served-prediction health.

Data drift (``--current`` is a dataset directory): the purchases of the reference period
(the preprocessing output's training split) are compared with the current purchases (those
after the reference's end, or after ``--since``), feature by feature:

- numeric features (price paid, buyer age, basket size, ...): PSI over ten reference deciles;
- categorical features (item attributes of what was bought, channel, buyer attributes): PSI over
  the reference's categories (rare ones pooled as "other") and the change of the top category's share;
- popularity concentration: the share of purchases going to the top 1% of items, and the Gini index.

Served predictions (``--current`` is a prediction-log directory from ``funnel serve``): the
distribution of served scores, the share of each candidate source among served items, and the
concentration of served items; with ``--outcomes DATA``, the hit rate of served lists against
purchases made after they were served, per day.

The report (``REPORT/monitor.md``, ``monitor.json`` and PNG plots) lists every feature with its
PSI; the command exits with code 3 when any PSI crosses ``--psi-threshold`` (default 0.2) so
that a scheduler can alert.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensemble.prediction_log import read_logs
from funnel.core.artifacts import read_preprocess_manifest
from funnel.core.errors import FunnelError
from funnel.core.fsutil import atomic_output_dir
from funnel.data.canonical import read_dataset

EPS = 1e-4
MAX_CATEGORIES = 50
MIN_SHARE = 0.005
EXIT_DRIFT = 3


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins."""
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if not len(reference) or not len(current):
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    return _psi(ref, cur)


def psi_categorical(reference: pd.Series, current: pd.Series) -> tuple[float, dict[str, Any]]:
    """PSI over the reference's categories (rare and unseen ones pooled as 'other'), plus top-share change."""
    ref_share = reference.astype(str).value_counts(normalize=True)
    keep = ref_share[ref_share >= MIN_SHARE].index[:MAX_CATEGORIES]
    ref = reference.astype(str).where(reference.astype(str).isin(keep), "other").value_counts(normalize=True)
    cur = current.astype(str).where(current.astype(str).isin(keep), "other").value_counts(normalize=True)
    cats = ref.index.union(cur.index)
    psi = _psi(ref.reindex(cats, fill_value=0).to_numpy(), cur.reindex(cats, fill_value=0).to_numpy())
    top = ref.index[0]
    return psi, {"top_category": str(top), "top_share_reference": round(float(ref.iloc[0]), 4),
                 "top_share_current": round(float(cur.get(top, 0.0)), 4)}


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    ref, cur = np.maximum(ref, EPS), np.maximum(cur, EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def concentration(item_ids: pd.Series) -> dict[str, float]:
    """Share of purchases on the top 1% of items, and the Gini index of item counts."""
    counts = np.sort(item_ids.value_counts().to_numpy())[::-1].astype(np.float64)
    if not len(counts):
        return {"top1pct_share": float("nan"), "gini": float("nan")}
    top = max(1, int(np.ceil(len(counts) * 0.01)))
    asc = counts[::-1]
    n = len(asc)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ asc / (n * asc.sum())) if n > 1 else 0.0
    return {"top1pct_share": round(float(counts[:top].sum() / counts.sum()), 4), "gini": round(gini, 4)}


def purchase_table(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """One row per purchase with the item's and the buyer's attributes (prefixed) and the basket size."""
    frame = interactions.copy()
    basket = ["user_id", frame["timestamp"].dt.date] if "order_id" not in frame else ["order_id"]
    frame["basket_size"] = frame.groupby(basket)["item_id"].transform("size").astype(float)
    item_cols = [c for c in items.columns if c != "item_id" and c not in frame.columns and c != "in_stock"]
    user_cols = [c for c in users.columns if c != "user_id" and c not in frame.columns]
    frame = frame.merge(items[["item_id", *item_cols]].rename(columns={c: f"item.{c}" for c in item_cols}),
                        on="item_id", how="left")
    frame = frame.merge(users[["user_id", *user_cols]].rename(columns={c: f"user.{c}" for c in user_cols}),
                        on="user_id", how="left")
    return frame


SKIP = {"user_id", "item_id", "timestamp", "order_id", "item.product_code"}


def drift_features(reference: pd.DataFrame, current: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for col in reference.columns:
        if col in SKIP or col not in current.columns:
            continue
        ref, cur = reference[col], current[col]
        numeric = pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref) and ref.nunique() > 12
        if numeric:
            rows.append({"feature": col, "kind": "numeric",
                         "psi": round(psi_numeric(ref.to_numpy(float), cur.to_numpy(float)), 4),
                         "mean_reference": round(float(ref.mean()), 4), "mean_current": round(float(cur.mean()), 4)})
        else:
            psi, extra = psi_categorical(ref, cur)
            rows.append({"feature": col, "kind": "categorical", "psi": round(psi, 4), **extra})
    return rows


def _read_dataset_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ds = read_dataset(path)
    return ds.interactions(), ds.items(), ds.users()


def is_log_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("date=*/*.parquet"))


def monitor(reference: str | Path, current: str | Path, out: str | Path, psi_threshold: float = 0.2,
            since: str | None = None, outcomes: str | Path | None = None) -> dict[str, Any]:
    """Build the report; ``report["alert"]`` says whether a threshold was crossed."""
    reference, current, out = Path(reference), Path(current), Path(out)
    pre_manifest = read_preprocess_manifest(reference)  # the reference period
    if not current.exists():
        raise FunnelError(f"{current}: not found (a dataset directory or a prediction-log directory)")
    train = pd.read_parquet(reference / "splits" / "train.parquet")
    _, items, users = _read_dataset_tables(Path(pre_manifest["dataset"]["path"]))
    report: dict[str, Any] = {"reference": str(reference), "current": str(current), "psi_threshold": psi_threshold}
    plots: list[tuple[str, Any]] = []
    if is_log_dir(current):
        report.update(served_report(current, train, outcomes, plots))
        report["features"] = []
    else:
        if not (current / "dataset.json").exists():
            raise FunnelError(f"{current}: neither a dataset directory (dataset.json) nor a prediction log (date=*/)")
        cur_inter, cur_items, cur_users = _read_dataset_tables(current)
        start = pd.Timestamp(since) if since else train["timestamp"].max()
        window = cur_inter[cur_inter["timestamp"] > start]
        if window.empty:
            raise FunnelError(f"{current}: no purchases after {start} (use --since to choose the current period)")
        ref_rows = purchase_table(train, items, users)
        cur_rows = purchase_table(window, cur_items, cur_users)
        features = sorted(drift_features(ref_rows, cur_rows), key=lambda r: -r["psi"])
        for f in features:
            f["drifted"] = bool(f["psi"] >= psi_threshold)
        report["features"] = features
        report["window"] = {"reference": [str(train["timestamp"].min()), str(train["timestamp"].max())],
                            "current": [str(window["timestamp"].min()), str(window["timestamp"].max())],
                            "reference_rows": int(len(train)), "current_rows": int(len(window))}
        report["concentration"] = {"reference": concentration(train["item_id"]),
                                   "current": concentration(window["item_id"])}
        plots.append(("psi.png", lambda ax: _bar_psi(ax, features, psi_threshold)))
        drifted = [f for f in features if f["drifted"] and f["kind"] == "numeric"][:2]
        for f in drifted:
            col = f["feature"]
            plots.append((f"dist-{col}.png", lambda ax, col=col: _hist(ax, ref_rows[col], cur_rows[col], col)))
    report["drifted"] = [f["feature"] for f in report["features"] if f["drifted"]]
    report["alert"] = bool(report["drifted"]) or bool(report.get("served_alerts"))
    write_report(report, out, plots)
    return report


def served_report(logs: Path, train: pd.DataFrame, outcomes: str | Path | None, plots: list) -> dict[str, Any]:
    frame = read_logs(logs)
    if frame.empty:
        raise FunnelError(f"{logs}: the prediction log is empty")
    scores = np.concatenate([np.asarray(s, dtype=float) for s in frame["scores"]])
    sources = pd.Series(np.concatenate([np.asarray(s, dtype=object) for s in frame["sources"]]))
    served = pd.Series(np.concatenate([np.asarray(s, dtype=object) for s in frame["items"]]))
    out: dict[str, Any] = {
        "served": {"records": int(len(frame)), "requests": int(frame["request_id"].nunique()),
                   "users": int(frame["user_id"].nunique()), "model_versions": sorted(frame["model_version"].unique()),
                   "time": [pd.Timestamp(frame["time"].min(), unit="s").isoformat(),
                            pd.Timestamp(frame["time"].max(), unit="s").isoformat()]},
        "scores": {q: round(float(np.quantile(scores, p)), 4) for q, p in
                   (("p05", 0.05), ("p50", 0.5), ("p95", 0.95))} if len(scores) else {},
        "sources": {k: round(float(v), 4) for k, v in sources.value_counts(normalize=True).items()},
        "served_concentration": concentration(served),
        "purchase_concentration": concentration(train["item_id"].astype(str)),
    }
    plots.append(("served-scores.png", lambda ax: _hist(ax, pd.Series(scores), None, "served score")))
    plots.append(("served-sources.png", lambda ax: sources.value_counts(normalize=True).plot.bar(
        ax=ax, rot=0, title="candidate source of served items")))
    if outcomes:
        out["hit_rate"] = hit_rate(frame, Path(outcomes))
        days = out["hit_rate"]["per_day"]
        plots.append(("hit-rate.png", lambda ax: ax.plot(list(days), list(days.values()), marker="o")))
    return out


def hit_rate(frame: pd.DataFrame, outcomes: Path) -> dict[str, Any]:
    """Share of logged lists that contain an item the user bought within 7 days after being served."""
    inter, _, _ = _read_dataset_tables(outcomes)
    inter = inter.assign(user_id=inter["user_id"].astype(str), item_id=inter["item_id"].astype(str))
    bought = inter.groupby("user_id")[["item_id", "timestamp"]].apply(lambda g: list(zip(g["item_id"], g["timestamp"])))
    hits = []
    for user, items, t in zip(frame["user_id"], frame["items"], frame["time"]):
        served_at = pd.Timestamp(t, unit="s")
        later = {i for i, ts in bought.get(user, []) if served_at <= ts <= served_at + pd.Timedelta(days=7)}
        hits.append(bool(later & set(items)))
    days = pd.Series(hits, index=pd.to_datetime(frame["time"], unit="s").dt.date.astype(str)).groupby(level=0).mean()
    return {"overall": round(float(np.mean(hits)), 4), "per_day": {d: round(float(v), 4) for d, v in days.items()}}


def _bar_psi(ax, features: list[dict], threshold: float) -> None:
    names = [f["feature"] for f in features]
    values = [f["psi"] for f in features]
    ax.barh(names, values, color=["tab:red" if v >= threshold else "tab:blue" for v in values])
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold}")
    ax.invert_yaxis()
    ax.set(title="PSI per feature (current vs reference)", xlabel="PSI")
    ax.legend()


def _hist(ax, ref: pd.Series, cur: pd.Series | None, name: str) -> None:
    ax.hist(ref.dropna(), bins=40, alpha=0.6, density=True, label="reference" if cur is not None else name)
    if cur is not None:
        ax.hist(cur.dropna(), bins=40, alpha=0.6, density=True, label="current")
    ax.set(title=name)
    ax.legend()


def write_report(report: dict[str, Any], out: Path, plots: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_output_dir(out) as tmp:
        (tmp / "monitor.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        lines = ["# funnel monitor", "", f"Reference: `{report['reference']}`; current: `{report['current']}`.", ""]
        if report["features"]:
            lines += [f"Drifted (PSI >= {report['psi_threshold']}): **{', '.join(report['drifted']) or 'none'}**.", "",
                      "| feature | kind | PSI | detail |", "|---|---|---:|---|"]
            for f in report["features"]:
                detail = (f"mean {f['mean_reference']} -> {f['mean_current']}" if f["kind"] == "numeric"
                          else f"top '{f['top_category']}' {f['top_share_reference']:.1%} -> {f['top_share_current']:.1%}")
                lines.append(f"| {f['feature']} | {f['kind']} | {f['psi']:.3f}{' **drift**' if f['drifted'] else ''} | {detail} |")
            c = report["concentration"]
            lines += ["", f"Top-1% items' share of purchases: {c['reference']['top1pct_share']:.1%} -> "
                          f"{c['current']['top1pct_share']:.1%}; Gini {c['reference']['gini']:.3f} -> {c['current']['gini']:.3f}."]
        if "served" in report:
            s = report["served"]
            lines += [f"Served: {s['records']:,} logged users in {s['requests']:,} requests, models {s['model_versions']}.",
                      f"Scores p05/p50/p95: {report['scores']}. Sources of served items: {report['sources']}.",
                      f"Concentration of served items: {report['served_concentration']} "
                      f"(purchases: {report['purchase_concentration']})."]
            if "hit_rate" in report:
                lines.append(f"Hit rate of served lists (purchase within 7 days): {report['hit_rate']['overall']:.1%}.")
        lines.append("")
        for name, draw in plots:
            fig, ax = plt.subplots(figsize=(7, 3.2 if name != "psi.png" else 0.3 * max(8, len(report["features"]))))
            draw(ax)
            fig.tight_layout()
            fig.savefig(tmp / name, dpi=100)
            plt.close(fig)
            lines.append(f"![{name}]({name})")
        (tmp / "monitor.md").write_text("\n".join(lines) + "\n")
