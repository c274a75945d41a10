"""RankCandidates: the DLRM scores every surviving candidate (batched over all users at once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema

from ensemble.config import TrendingForKnown
from workflows.purchases import PurchaseHistory
from ensemble.ops.base import (CANDIDATE_SCORES, CANDIDATES, ITEM_ITEM_SCORES, RESERVED_TIER, RETRIEVAL_SCORES,
                               SOURCES, TIERS, USER_ROW, ServingOperator, column, user_features)
from ensemble.ops.online import ONLINE_ITEMS, online_matches
from ensemble.savedmodel import model_runner
from workflows.candidates import RANKER_SCORE, TRENDING, Z_SCORES, NewItems, blend, logit, shortlist, standardise
from workflows.purchases import AFFINITY_PREFIX, ItemValues, affinity, pair_features


def reserve_new_items(scores: np.ndarray, tiers: np.ndarray, new: np.ndarray, n: int) -> np.ndarray:
    """``tiers`` with each row's ``n`` best candidates among ``new`` (bool, users x candidates) set to
    ``RESERVED_TIER``: best by tier, then score, ties in candidate order (the order ``OrderItems``
    draws them in); a row with fewer new candidates reserves what it has."""
    if n <= 0 or not new.any():
        return tiers
    keys = np.where(new, scores.astype(np.float64), -np.inf)
    order = np.lexsort((-keys, np.where(new, tiers, np.iinfo(np.int8).max)), axis=1)[:, :n]
    picked = np.take_along_axis(new, order, axis=1)
    rows = np.broadcast_to(np.arange(len(order))[:, None], order.shape)
    out = tiers.copy()
    out[rows[picked], order[picked]] = RESERVED_TIER
    return out


class RankCandidates(ServingOperator):
    """``candidate_scores`` per candidate (``-inf`` where there is none) and ``candidate_tiers``.

    Inputs of the DLRM: the user's encoded features, the candidate's encoded item features
    (``items.parquet``) and the pair features training used (log1p purchases of the item by
    the user, log1p days since, the two-tower and item-item scores and both standardised over
    the user's ranked candidates, a new item's freshness (``new_items.npz``), and the share of
    the user's items sharing each of the item's ``affinity`` feature values). Known users'
    candidates are ordered by ``blend_weights``: those scores and, with ``use_ranker``, the
    DLRM's logit (its gate found that blend better than the blend without it on held-out users). Unknown users are ordered by trending
    popularity.

    A cascade where ``shortlist > 0``: the DLRM scores only each known user's ``shortlist`` best
    candidates by ``first_weights`` (the sources' blend), which are ordered by ``blend_weights``
    (standardised over the shortlist); the user's other candidates follow in ``first_weights``'
    order. The ranker's inputs are standardised over every candidate, as in training.

    With ``new_item_slots`` = N, a known user's N best new candidates (never bought in training, on sale:
    ``new_items.npz``), best by the order below, get ``RESERVED_TIER`` (-1; :func:`reserve_new_items`):
    drawn first, so they are always shown, and shown in the list's last places (``OrderItems``).

    Tiers order before scores: -1 = reserved new items, 0 = ranked candidates, 1 = below the shortlist,
    2 = fill, 3 = none. With
    ``trending_for_known="fill"`` (default) trending items that only trending brought in
    fill a known user's list after every ranked candidate, by popularity: the ranker never
    saw such candidates in training.
    ``"rank"`` lets the ranker score them like the others.
    """

    files = ("ranker", "items.parquet", "history.npz", "trending.npz", "new_items.npz")

    triton_model: str | None = None  # set when the export runs the ranker as its own Triton model
    triton_spec: dict | None = None

    def __init__(self, source_dir: str | Path, item_features: list[str], use_ranker: bool = True,
                 trending_for_known: TrendingForKnown = TrendingForKnown.FILL,
                 blend_weights: dict[str, float] | None = None, affinity: list[str] | None = None,
                 first_weights: dict[str, float] | None = None, shortlist: int = 0, new_item_slots: int = 0):
        super().__init__(source_dir)
        self.new_item_slots = int(new_item_slots)
        self.first_weights = {name: float(w) for name, w in (first_weights or {}).items()}
        self.shortlist = int(shortlist) if use_ranker and self.first_weights else 0
        self.affinity = list(affinity or [])  # item features whose user-affinity the ranker reads
        default = {RANKER_SCORE: 1.0} if use_ranker else {"retrieval_score": 1.0}
        self.blend_weights = {name: float(w) for name, w in (blend_weights or default).items()}
        self.item_features = list(item_features)
        self.use_ranker = bool(use_ranker)
        self.trending_for_known = str(TrendingForKnown(trending_for_known))

    def load(self, path: Path) -> None:
        self._ranker = model_runner(path / "ranker", self.triton_model, self.triton_spec) if self.use_ranker else None
        items = pd.read_parquet(path / "items.parquet")
        self._items = {name: items[name].to_numpy() for name in self.item_features}
        self._values = ItemValues.from_codes({name: items[name].to_numpy() for name in getattr(self, "affinity", [])})
        self._history = PurchaseHistory.load(path / "history.npz")
        with np.load(path / "trending.npz", allow_pickle=False) as data:
            popularity = np.zeros(len(items), dtype=np.float32)
            popularity[data["items"]] = data["share"]
        self._popularity = popularity
        self._new_item = NewItems.load(path / "new_items.npz").scores(len(items))  # freshness, 0 if not new

    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:
        return [column(CANDIDATE_SCORES, np.float32, True), column(TIERS, np.int8, True)]

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cands, rows = columns[CANDIDATES], columns[USER_ROW]
        valid = cands >= 0
        known = (rows >= 0)[:, None] & valid
        tiers = np.where(valid, 0, 3).astype(np.int8)
        fill = valid & ~known
        if self.trending_for_known == TrendingForKnown.FILL:
            fill |= known & (columns[SOURCES] == TRENDING)
            known &= ~fill
            tiers[fill & (rows >= 0)[:, None]] = 2
        scores = np.full(cands.shape, -np.inf, dtype=np.float32)
        scores[fill] = self._popularity[cands[fill]]
        if known.any():
            users, slots = np.nonzero(known)
            items = cands[users, slots]
            bought, since = pair_features(self._history, rows, cands)
            if ONLINE_ITEMS in columns:  # one more purchase each, just now
                fresh = online_matches(cands, columns[ONLINE_ITEMS])
                bought = np.where(fresh, np.log1p(np.expm1(bought) + 1), bought).astype(np.float32)
                since = np.where(fresh, 0.0, since).astype(np.float32)
            pairs = dict(pair_purchases=bought[users, slots], pair_days_since=since[users, slots],
                         retrieval_score=columns[RETRIEVAL_SCORES][users, slots],
                         item_item_score=columns[ITEM_ITEM_SCORES][users, slots],
                         new_item=self._new_item[items])  # freshness of a new item, 0 for the others
            if self._ranker is None:
                scores[users, slots] = blend(pairs, users, self.blend_weights)
                return self._with_slots(scores, tiers, cands, known)
            # the ranker's logit joins the blend (weights tuned with it), on the shortlist where there is one
            pairs.update({name: standardise(pairs[score], users).astype(np.float32) for name, score in Z_SCORES.items()})
            n = getattr(self, "shortlist", 0)  # exports pickled before the cascade rank everything
            first = blend(pairs, users, self.first_weights) if n else None
            kept = shortlist(first, users, n) if first is not None else np.ones(len(users), bool)
            if not kept.all():  # below the shortlist: the sources' blend, after every ranked candidate
                scores[users[~kept], slots[~kept]] = first[~kept]
                tiers[users[~kept], slots[~kept]] = 1
                users, slots, items = users[kept], slots[kept], items[kept]
                pairs = {name: values[kept] for name, values in pairs.items()}
            ranked = np.zeros_like(known)
            ranked[users, slots] = True
            shares = affinity(self._history, rows, np.where(ranked, cands, -1), self._values, columns.get(ONLINE_ITEMS))
            pairs.update({AFFINITY_PREFIX + name: share[users, slots] for name, share in shares.items()})
            feed = {name: values[users] for name, values in user_features(columns).items()}
            feed.update({name: values[items] for name, values in self._items.items()})
            pairs[RANKER_SCORE] = logit(self._ranker({**feed, **pairs}).reshape(-1))
            scores[users, slots] = blend(pairs, users, self.blend_weights)
        return self._with_slots(scores, tiers, cands, known)

    def _with_slots(self, scores: np.ndarray, tiers: np.ndarray, cands: np.ndarray,
                    known: np.ndarray) -> dict[str, np.ndarray]:
        """The op's outputs, the known users' best new items given the last places (``new_item_slots``)."""
        n = getattr(self, "new_item_slots", 0)  # exports pickled before the rule reserve nothing
        if n:
            new = known & (self._new_item[np.where(cands >= 0, cands, 0)] > 0)
            tiers = reserve_new_items(scores, tiers, new, n)
        return {CANDIDATE_SCORES: scores, TIERS: tiers}
