"""Notification decisions and their outcomes on disk: what ``funnel notify decide`` writes, what the
simulator writes for its exploration log, and what ``funnel notify train`` / OPE read.

- **decisions**: a folder of parquet files, one per ``decide`` call (written to a temporary name and
  renamed): ``user_id, day, item_id, <FEATURES>, send, propensity, policy, decided_at``; ``day`` is a
  date (production) or a day number (simulation); ``propensity`` is the chance of the action taken.
- **outcomes**: one parquet or CSV file of events ``user_id, day, event`` with ``event`` one of
  ``open`` (the day's push was opened), ``disable`` (notifications turned off after it) and
  ``visit`` (the user was active that day). An open is a visit.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from funnel.notify.history import FEATURES

DECISION_COLUMNS = ("user_id", "day", "item_id", *FEATURES, "send", "propensity")
EVENTS = ("open", "disable", "visit")


def write_decisions(frame: pd.DataFrame, folder: str | Path, policy: str) -> Path:
    """Append one parquet file of decisions to ``folder`` (atomically)."""
    missing = [c for c in DECISION_COLUMNS if c not in frame.columns]
    if missing:
        raise FunnelError(f"decision log: missing column(s) {', '.join(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["policy"] = policy
    out["decided_at"] = pd.Timestamp.now(tz="UTC")
    name = f"decisions-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        out.to_parquet(tmp, index=False)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / name


def read_decisions(path: str | Path) -> pd.DataFrame:
    """Every decision in a folder (or one parquet file), checked for the columns training needs."""
    path = Path(path)
    files = sorted(path.glob("decisions-*.parquet")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise FunnelError(f"{path}: no decision log here (funnel notify decide --log, or notify simulate --log)")
    try:
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise FunnelError(f"{path}: cannot read the decision log ({exc})") from None
    missing = [c for c in DECISION_COLUMNS if c not in frame.columns]
    if missing:
        raise FunnelError(f"{path}: not a decision log: missing column(s) {', '.join(missing)}")
    bad = ~frame["propensity"].between(0, 1, inclusive="right")
    if bad.any():
        row = frame[bad].iloc[0]
        raise FunnelError(f"{path}: user {row['user_id']} day {row['day']}: propensity {row['propensity']} "
                          f"is not in (0, 1]")
    frame["user_id"] = frame["user_id"].astype(str)
    return frame


def write_outcomes(events: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        events.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_outcomes(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FunnelError(f"{path}: outcomes file not found")
    try:
        events = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        raise FunnelError(f"{path}: cannot read outcomes ({exc})") from None
    missing = [c for c in ("user_id", "day", "event") if c not in events.columns]
    if missing:
        raise FunnelError(f"{path}: outcomes need columns user_id, day, event (missing {', '.join(missing)})")
    unknown = sorted(set(events["event"].astype(str)) - set(EVENTS))
    if unknown:
        raise FunnelError(f"{path}: column 'event': unknown value(s) {', '.join(unknown[:5])} "
                          f"(expected {', '.join(EVENTS)})")
    events = events.copy()
    events["user_id"] = events["user_id"].astype(str)
    return events


def day_numbers(*columns: pd.Series) -> list[np.ndarray]:
    """Day numbers for ``day`` columns holding either integers or dates (counted from the earliest)."""
    if all(pd.api.types.is_integer_dtype(c) for c in columns):
        return [c.to_numpy(np.int64) for c in columns]
    try:
        dates = [pd.to_datetime(c).dt.normalize() for c in columns]
    except (ValueError, TypeError):
        raise FunnelError("decision log / outcomes: column 'day' must hold day numbers or dates") from None
    start = min(d.min() for d in dates)
    return [((d - start) / pd.Timedelta(days=1)).to_numpy(np.int64) for d in dates]


def join(decisions: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Decisions with ``opened``, ``disabled`` and ``active`` columns; the activity table
    (``user_id, day`` of every active user-day); and the number of days covered."""
    dec_day, ev_day = day_numbers(decisions["day"], events["day"])
    dec = decisions.copy()
    dec["day"] = dec_day
    ev = pd.DataFrame({"user_id": events["user_id"].to_numpy(), "day": ev_day, "event": events["event"].astype(str)})
    for event, column in (("open", "opened"), ("disable", "disabled")):
        keys = ev[ev["event"] == event][["user_id", "day"]].drop_duplicates().assign(**{column: True})
        dec = dec.merge(keys, on=["user_id", "day"], how="left")
        dec[column] = dec[column].fillna(False).astype(bool)
    activity = ev[ev["event"].isin(["open", "visit"])][["user_id", "day"]].drop_duplicates()
    dec = dec.merge(activity.assign(active=True), on=["user_id", "day"], how="left")
    dec["active"] = dec["active"].fillna(False).astype(bool)
    unsent = dec["opened"] & ~dec["send"].astype(bool)
    if unsent.any():
        row = dec[unsent].iloc[0]
        raise FunnelError(f"outcomes: user {row['user_id']} opened a push on day {row['day']} that the log says "
                          "was not sent")
    days = int(max(dec["day"].max(), activity["day"].max() if len(activity) else 0)) + 1
    return dec, activity, days


def simulated_events(log: pd.DataFrame, activity: pd.DataFrame) -> pd.DataFrame:
    """The outcomes file of a simulated log (what production's event stream would hold)."""
    parts = [log[log["opened"]][["user_id", "day"]].assign(event="open"),
             log[log["disabled"]][["user_id", "day"]].assign(event="disable"),
             activity[["user_id", "day"]].assign(event="visit")]
    return pd.concat(parts, ignore_index=True)
