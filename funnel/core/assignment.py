"""Experiment assignment: a salted hash of (experiment, user id) picks each user's variant.

Sticky (the same user always gets the same variant of one experiment), independent across
experiments (the experiment name salts the hash), and the same in every process and host (no
state, no random seed): serving, the prediction log and the analysis agree on who saw what.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from funnel.core.errors import FunnelError


def parse_traffic(spec: dict[str, float] | Iterable[str]) -> dict[str, float]:
    """``{"control": 0.5, "new": 0.5}`` from a dict or ``["control=0.5", "new=0.5"]``; validated.

    Shares must be in (0, 1] and sum to 1 (within 1e-6); names are unique and non-empty.
    """
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for text in spec:
            name, sep, value = str(text).partition("=")
            if not sep or not name.strip():
                raise FunnelError(f"traffic: {text!r} is not NAME=FRACTION")
            try:
                items.append((name.strip(), float(value)))
            except ValueError:
                raise FunnelError(f"traffic: {text!r}: {value!r} is not a number") from None
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise FunnelError(f"traffic: a variant is named twice ({', '.join(names)})")
    for name, share in items:
        if not 0.0 < share <= 1.0 or not np.isfinite(share):
            raise FunnelError(f"traffic: {name}={share} is outside (0, 1]")
    total = sum(s for _, s in items)
    if abs(total - 1.0) > 1e-6:
        raise FunnelError(f"traffic: the fractions sum to {total:g}, not 1")
    return dict(items)


def unit_interval(experiment: str, user_ids: Iterable) -> np.ndarray:
    """Each user's position in [0, 1): the first 8 bytes of sha256("experiment\\0user") / 2^64."""
    out = []
    for user in user_ids:
        text = user.decode("utf-8", "replace") if isinstance(user, bytes) else str(user)
        digest = hashlib.sha256(f"{experiment}\0{text}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "big"))
    return np.asarray(out, dtype=np.float64) / 2.0**64


def assign(experiment: str, user_ids: Iterable, traffic: dict[str, float]) -> np.ndarray:
    """The variant name of each user (object array), by cumulative traffic shares in the given order."""
    names = list(traffic)
    edges = np.cumsum([traffic[n] for n in names])
    edges[-1] = 1.0  # no user falls off the end through rounding
    position = unit_interval(experiment, user_ids)
    return np.asarray(names, dtype=object)[np.searchsorted(edges, position, side="right")]
