"""What a notification system can observe about each user: recent pushes, opens and active days.

The same :class:`History` is kept by the simulator, by a model policy's rollouts and (from the
decision log) in production, so a policy sees the same features everywhere. It holds the last
``WINDOW`` days as ring buffers plus lifetime counts; :meth:`History.features` turns it, with the
score of today's item, into the columns named in :data:`FEATURES`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

WINDOW = 7
MAX_DAYS = 30  # days-since counters are capped here (a user never pushed counts as MAX_DAYS)
# Columns a policy reads, in order; the decision log stores them next to every decision.
FEATURES = ("score", "pushes_7d", "opens_7d", "ignored_7d", "active_7d", "days_since_push",
            "days_since_active", "open_rate", "organic_rate")
HISTORY_FEATURES = FEATURES[1:]  # everything but today's score


@dataclass
class History:
    """Observable state of ``n`` users (arrays indexed by user)."""

    sent: np.ndarray  # bool [WINDOW, n]: pushed on each of the last WINDOW days
    opened: np.ndarray  # bool [WINDOW, n]
    active: np.ndarray  # bool [WINDOW, n]: visited (an open counts) on that day
    days_since_push: np.ndarray  # int [n]
    days_since_active: np.ndarray  # int [n]
    total_sent: np.ndarray  # int [n]
    total_opened: np.ndarray  # int [n]
    total_days: np.ndarray  # int [n]: days observed
    total_organic: np.ndarray  # int [n]: active days without an opened push
    enabled: np.ndarray  # bool [n]: notifications still allowed (the OS reports a disable)

    @classmethod
    def empty(cls, n: int) -> "History":
        window = np.zeros((WINDOW, n), dtype=bool)
        return cls(sent=window, opened=window.copy(), active=window.copy(),
                   days_since_push=np.full(n, MAX_DAYS, np.int32), days_since_active=np.full(n, MAX_DAYS, np.int32),
                   total_sent=np.zeros(n, np.int32), total_opened=np.zeros(n, np.int32), total_days=np.zeros(n, np.int32),
                   total_organic=np.zeros(n, np.int32), enabled=np.ones(n, bool))

    def __len__(self) -> int:
        return len(self.enabled)

    def take(self, index: np.ndarray) -> "History":
        """The users at ``index`` (a copy; repeats allowed: rollouts tile users)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value[:, index].copy() if value.ndim == 2 else value[index].copy()
        return History(**out)

    def update(self, sent: np.ndarray, opened: np.ndarray, active: np.ndarray, disabled: np.ndarray) -> None:
        """Record one day: who was pushed, who opened, who was active, who disabled notifications."""
        self.sent = np.roll(self.sent, 1, axis=0)
        self.opened = np.roll(self.opened, 1, axis=0)
        self.active = np.roll(self.active, 1, axis=0)
        self.sent[0], self.opened[0], self.active[0] = sent, opened, active | opened
        self.days_since_push = np.where(sent, 0, np.minimum(self.days_since_push + 1, MAX_DAYS)).astype(np.int32)
        self.days_since_active = np.where(active | opened, 0,
                                          np.minimum(self.days_since_active + 1, MAX_DAYS)).astype(np.int32)
        self.total_sent = self.total_sent + sent
        self.total_opened = self.total_opened + opened
        self.total_days = self.total_days + 1
        self.total_organic = self.total_organic + (active & ~opened)
        self.enabled = self.enabled & ~disabled

    def features(self, score: np.ndarray) -> np.ndarray:
        """[n, len(FEATURES)] float64 matrix: today's item score and the user's history."""
        pushes = self.sent.sum(axis=0)
        opens = self.opened.sum(axis=0)
        return np.column_stack([
            np.asarray(score, np.float64), pushes, opens, pushes - opens, self.active.sum(axis=0),
            self.days_since_push, self.days_since_active,
            (self.total_opened + 0.5) / (self.total_sent + 2.0),  # smoothed lifetime open rate
            # the user's own visiting habit (not counting opened pushes): a trait, kept apart from
            # the recent state so a model does not read "active lately" as "an active kind of user"
            (self.total_organic + 0.5) / (self.total_days + 2.0),
        ]).astype(np.float64)


def from_features(frame) -> History:
    """A history that reproduces the logged feature columns of ``frame`` (one row per user).

    Used where only the features are known (``funnel notify decide --users-file``): the counts of
    the last WINDOW days are spread over the most recent days, which is all a policy reads.
    """
    n = len(frame)
    h = History.empty(n)
    days = np.arange(WINDOW)[:, None]
    pushes = frame["pushes_7d"].to_numpy(np.int64)
    opens = frame["opens_7d"].to_numpy(np.int64)
    h.sent = days < pushes[None, :]
    h.opened = days < opens[None, :]
    h.active = days < frame["active_7d"].to_numpy(np.int64)[None, :]
    h.days_since_push = frame["days_since_push"].to_numpy(np.int32)
    h.days_since_active = frame["days_since_active"].to_numpy(np.int32)
    # lifetime counts that give the logged smoothed open rate: opens + 0.5 = rate * (sent + 2)
    rate = frame["open_rate"].to_numpy(np.float64)
    total = np.maximum(pushes, 20)
    h.total_sent = total.astype(np.int32)
    h.total_opened = np.clip(rate * (total + 2.0) - 0.5, 0, total).astype(np.float64)
    observed = 1000
    h.total_days = np.full(n, observed, np.int32)
    h.total_organic = np.clip(frame["organic_rate"].to_numpy(np.float64) * (observed + 2.0) - 0.5, 0, observed)
    return h
