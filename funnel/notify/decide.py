"""One day's send/skip decisions for a list of users (``funnel notify decide``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from funnel.core.errors import FunnelError
from funnel.notify.history import FEATURES
from funnel.notify.response import design


def decide_users(policy, users: pd.DataFrame, explore: float = 0.0, seed: int | None = None,
                 today: pd.Timestamp | None = None) -> pd.DataFrame:
    """Decisions for ``users`` (user_id, item_id, score and the history columns of FEATURES).

    ``explore``: the share of decisions taken by a fair coin instead of the policy; the chance of
    the action taken is recorded as ``propensity`` either way, so the log can train and evaluate
    the next policy. A user without an item (nothing survived the funnel's filters) is skipped.
    """
    if not 0 <= explore <= 1:
        raise FunnelError(f"--explore {explore}: must be between 0 and 1")
    now = pd.Timestamp.now(tz="UTC") if today is None else pd.Timestamp(today)
    if now.tzinfo is not None:
        now = now.tz_convert("UTC").tz_localize(None)
    today = now.normalize()
    out = users.copy()
    has_item = out["item_id"].astype(str).ne("") & np.isfinite(out["score"].to_numpy(np.float64))
    out["score"] = out["score"].astype(np.float64).where(has_item, 0.0)
    feats = out[list(FEATURES)].to_numpy(np.float64)
    day_number = int(today.toordinal())
    gain = np.full(len(out), np.nan)
    if hasattr(policy, "explain"):
        p, gain = policy.explain(feats, day_number)
    else:
        p = policy.decide(feats, np.ones(len(out), bool), day_number)
    p = np.where(has_item, np.clip(p, 0.0, 1.0), 0.0)
    p_send = np.where(has_item, (1 - explore) * p + explore * 0.5, 0.0)
    rng = np.random.default_rng(seed)
    send = rng.random(len(out)) < p_send
    out["day"] = today
    out["send"] = send
    out["propensity"] = np.where(send, p_send, 1.0 - p_send)
    out["p_send"] = p_send
    out["p_open"] = policy.models.p_open(design(feats)) if hasattr(policy, "models") else np.nan
    out["gain"] = gain
    out["decision"] = np.where(send, "send", "skip")
    return out
