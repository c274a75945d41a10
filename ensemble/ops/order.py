"""OrderItems: top-k by score (deterministic), or softmax sampling with a temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema

from ensemble.ops.base import (CANDIDATE_SCORES, CANDIDATES, K, RESERVED_TIER, SEED, SOURCES, TEMPERATURE, TIERS,
                               ServingOperator, column)
from workflows.candidates import SOURCE_NAMES

ITEM_IDS, SCORES, ITEM_SOURCES = "item_ids", "scores", "sources"
# every candidate that reached the ranker, for the served-prediction log (not sent to clients)
LOG_CANDIDATES, LOG_SOURCES, LOG_SCORES = "candidate_ids", "candidate_sources", "candidate_scores"
# each candidate's tier (fills after ranked candidates; NaN where no candidate): the draw's order, for off-policy evaluation
LOG_TIERS = "candidate_tiers"
# each shown item's probability of being drawn at its position given the items above it (the log's propensities)
LOG_PROPENSITIES = "propensities"


def order_slots(scores: np.ndarray, k: int, temperature: float = 0.0,
                rng: np.random.Generator | None = None, tiers: np.ndarray | None = None) -> np.ndarray:
    """Slot positions of the k best candidates per row (``-1`` where fewer survive).

    ``tiers`` (optional, lower first) order before scores: fills come after ranked candidates.

    ``temperature <= 0``: by score, ties broken by candidate order (deterministic).
    ``temperature > 0``: k draws without replacement with probability softmax(score / T)
    (the Gumbel-top-k trick), so T -> 0 approaches the deterministic order and large T
    approaches uniform over the surviving candidates.
    """
    keys = scores.astype(np.float64)
    if temperature > 0:
        rng = rng or np.random.default_rng()
        keys = keys / temperature + rng.gumbel(size=keys.shape)
    keys = np.where(np.isfinite(scores), keys, -np.inf)
    if tiers is None:
        order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    else:
        order = np.lexsort((-keys, tiers), axis=1)[:, :k]  # stable: ties keep candidate order
    alive = np.isfinite(np.take_along_axis(scores, order, axis=1))
    return np.where(alive, order, -1)


def reserved_last(slots: np.ndarray, tiers: np.ndarray | None) -> np.ndarray:
    """``slots`` (from :func:`order_slots`) with each row's reserved candidates (``RESERVED_TIER``, drawn
    first, so leading the row) moved behind the row's other shown candidates, in their drawn order.

    The shown set and each position's draw are unchanged (the reserved tier is drawn on its own, the
    others from the rest tier by tier), so :func:`plackett_luce` of the moved slots is their propensity."""
    if tiers is None or not (tiers == RESERVED_TIER).any():
        return slots
    shown = slots >= 0
    reserved = shown & (np.take_along_axis(tiers, np.maximum(slots, 0), axis=1) == RESERVED_TIER)
    r, alive = reserved.sum(axis=1, keepdims=True), shown.sum(axis=1, keepdims=True)
    j = np.arange(slots.shape[1])[None, :]
    source = np.where(j < alive - r, j + r, np.where(j < alive, j - (alive - r), j))
    return np.take_along_axis(slots, source, axis=1)


def plackett_luce(scores: np.ndarray, slots: np.ndarray, temperature: float,
                  tiers: np.ndarray | None = None) -> np.ndarray:
    """Propensity of each drawn slot: P(item at position j | items above it) under ``order_slots``.

    Gumbel-top-k with keys score / T is a Plackett-Luce draw: position j takes item i with
    probability exp(s_i / T) / sum over the items still available of exp(s / T). With tiers the
    draw runs tier by tier, so the sum runs over the remaining items of the drawn item's tier.
    Deterministic orders (``temperature <= 0``) have propensity 1. NaN where a slot is empty.
    """
    out = np.where(slots >= 0, 1.0, np.nan)
    if temperature <= 0:
        return out.astype(np.float32)
    alive = np.isfinite(scores)
    logits = np.where(alive, scores / temperature, -np.inf)
    tier = np.zeros(scores.shape, dtype=np.int64) if tiers is None else np.asarray(tiers)
    for row in range(scores.shape[0]):
        remaining = alive[row].copy()
        for j, slot in enumerate(slots[row]):
            if slot < 0:
                break
            pool = remaining & (tier[row] == tier[row, slot])
            top = logits[row, pool].max()
            out[row, j] = np.exp(logits[row, slot] - top) / np.exp(logits[row, pool] - top).sum()
            remaining[slot] = False
    return out.astype(np.float32)


class OrderItems(ServingOperator):
    """Final lists: raw ``item_ids``, ``scores`` and candidate ``sources`` per user, ``k`` wide.

    Candidates of ``RESERVED_TIER`` (new items an export's ``new_item_slots`` keeps places for) are
    drawn first and shown last (:func:`reserved_last`).

    Rows with fewer than k surviving candidates are padded with empty ids and NaN scores.
    The request's ``temperature`` (0 = deterministic) and ``seed`` (-1 = fresh randomness)
    control sampling.
    """

    files = ("item_attributes.parquet",)
    passthrough = False

    def __init__(self, source_dir: str | Path, max_k: int):
        super().__init__(source_dir)
        self.max_k = int(max_k)

    def load(self, path: Path) -> None:
        attrs = pd.read_parquet(path / "item_attributes.parquet", columns=["item_id"])
        self._raw_ids = np.array([str(v).encode() for v in attrs["item_id"]] + [b""], dtype=object)
        self._source_names = np.array([s.encode() for s in SOURCE_NAMES] + [b""], dtype=object)

    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:
        return [column(ITEM_IDS, np.object_, True), column(SCORES, np.float32, True),
                column(ITEM_SOURCES, np.object_, True), column(LOG_CANDIDATES, np.object_, True),
                column(LOG_SOURCES, np.object_, True), column(LOG_SCORES, np.float32, True),
                column(LOG_PROPENSITIES, np.float32, True), column(LOG_TIERS, np.float32, True)]

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores, cands, sources = columns[CANDIDATE_SCORES], columns[CANDIDATES], columns[SOURCES]
        k = int(columns[K].reshape(-1)[0]) if len(cands) else self.max_k
        temperature = float(columns[TEMPERATURE].reshape(-1)[0]) if len(cands) else 0.0
        seed = int(columns[SEED].reshape(-1)[0]) if len(cands) else -1
        rng = np.random.default_rng(None if seed < 0 else seed)
        masked = np.where(cands >= 0, scores, -np.inf)
        slots = reserved_last(order_slots(masked, k, temperature, rng, columns.get(TIERS)), columns.get(TIERS))
        safe = np.maximum(slots, 0)
        picked = np.where(slots >= 0, np.take_along_axis(cands, safe, axis=1), -1)
        out_scores = np.where(slots >= 0, np.take_along_axis(scores, safe, axis=1), np.nan).astype(np.float32)
        out_sources = np.where(slots >= 0, np.take_along_axis(sources, safe, axis=1), -1)
        alive = cands >= 0
        tiers = columns.get(TIERS)
        tiers = np.zeros(cands.shape, np.float32) if tiers is None else tiers.astype(np.float32)
        return {ITEM_IDS: self._raw_ids[picked], SCORES: out_scores, ITEM_SOURCES: self._source_names[out_sources],
                LOG_CANDIDATES: self._raw_ids[np.where(alive, cands, -1)],
                LOG_SOURCES: self._source_names[np.where(alive, sources, -1)],
                LOG_SCORES: np.where(alive & np.isfinite(scores), scores, np.nan).astype(np.float32),
                LOG_PROPENSITIES: plackett_luce(masked, slots, temperature, columns.get(TIERS)),
                LOG_TIERS: np.where(alive, tiers, np.nan).astype(np.float32)}
