"""Candidate lists from several sources, as the served graph builds them and the ranker is trained on.

Candidates are ``(users, width)`` arrays of item rows, ``-1``-padded. Sources are concatenated
in priority order and a duplicate keeps its first source (a retrieved item the user bought
before stays a ``retrieval`` candidate). ``ensemble.ops.retrieve.RetrieveCandidates`` and
``models.ranking_rows.candidates`` both build their lists with :func:`merge_sources`.

Candidates are ordered by :func:`blend`: a weighted sum of the candidate scores every source
provides (``BLEND_SCORES``), each standardised over the user's candidates, plus the ranker's
logit where its gate lets it in; the weights are tuned at training time (``models.sources``)
and served from ``ranking.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from funnel.core.topk import dot_top_k
from funnel.data.canonical import read_dataset
from workflows.codes import isin

RETRIEVAL, REPURCHASE, TRENDING, ITEM_ITEM, NEW = 0, 1, 2, 3, 4
SOURCE_NAMES = ("retrieval", "repurchase", "trending", "item-item", "new")


NEW_ITEM = "new_item"
NEW_DAYS = 28.0  # with a stock history: an unbought item is new for this long after it came on sale
FRESH_DAYS = 7.0  # and its freshness, the ``new_item`` blend score, decays over this many days


@dataclass
class NewItems:
    """The items that are *new* at a cutoff, and how new.

    New: nobody bought it before the cutoff, it is on sale at the cutoff, and it came on sale at
    most ``NEW_DAYS`` before it (an unbought item on sale for longer is dead stock, not news); its
    freshness is ``exp(-days on sale / FRESH_DAYS)``. That takes a stock history: without one an
    unbought item cannot be told from one nobody wants, and nothing is new (on MovieLens-100k,
    treating every unrated film as new cost the blend its item-item share). Only its features can place a new
    item (the two-tower's item-id dropout trains it to); the ``new`` source asks the two-tower
    among new items alone, and the blend's ``new_item`` score is the freshness (0: not new).
    """

    rows: np.ndarray  # int32 item rows
    freshness: np.ndarray  # float32, one per row

    @classmethod
    def at(cls, bought_items: np.ndarray, item_ids: np.ndarray, in_stock: np.ndarray | None = None,
           days_on_sale: np.ndarray | None = None) -> "NewItems":
        """``bought_items``: raw ids bought before the cutoff; ``in_stock`` and ``days_on_sale`` (NaN:
        on sale since before the stock history) one per ``item_ids`` entry, None without a history
        (then nothing is new)."""
        if days_on_sale is None:
            return cls.empty()
        new = ~isin(item_ids, bought_items)
        if in_stock is not None:
            new &= np.asarray(in_stock, dtype=bool)
        days = np.asarray(days_on_sale, dtype=np.float64)
        new &= days <= NEW_DAYS  # NaN (on sale all along) is not new
        freshness = np.exp(-np.nan_to_num(days, nan=np.inf).clip(min=0) / FRESH_DAYS)
        rows = np.flatnonzero(new).astype(np.int32)
        return cls(rows, freshness[rows].astype(np.float32))

    @classmethod
    def as_of(cls, dataset_path: str | Path, before: pd.DataFrame, cutoff: pd.Timestamp,
              item_ids: np.ndarray) -> "NewItems":
        """The items of ``item_ids`` new at ``cutoff``: not bought in ``before``; on sale then, and for
        how long, by the stock history of the canonical dataset at ``dataset_path`` if it has one."""
        dataset = read_dataset(dataset_path)
        return cls.at(pd.unique(before["item_id"]), item_ids, dataset.in_stock_at(item_ids, cutoff),
                      dataset.days_on_sale_at(item_ids, cutoff))

    @classmethod
    def empty(cls) -> "NewItems":
        return cls(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))

    def scores(self, n_items: int) -> np.ndarray:
        """The ``new_item`` score of every item row (``n_items`` of them): its freshness, 0 if not new."""
        out = np.zeros(n_items, dtype=np.float32)
        out[self.rows] = self.freshness
        return out

    def save(self, path) -> None:
        np.savez(path, items=self.rows, freshness=self.freshness)

    @classmethod
    def load(cls, path) -> "NewItems":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["items"].astype(np.int32), data["freshness"].astype(np.float32))


def top_new(queries: np.ndarray, vectors: np.ndarray, new_rows: np.ndarray, n: int) -> np.ndarray:
    """``(users, n)`` item rows (``-1``-padded): the new items with the best two-tower scores per query."""
    out = np.full((len(queries), n), -1, dtype=np.int64)
    if n <= 0 or not len(new_rows) or not len(queries):
        return out
    width = min(n, len(new_rows))
    pos = dot_top_k(queries, vectors[new_rows], width)
    out[:, :width] = np.where(pos >= 0, np.asarray(new_rows)[np.maximum(pos, 0)], -1)
    return out


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """1 where an id appears for the first time in its row (scanning left to right), else 0; -1 never counts."""
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros(ids.shape, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    first = np.empty(ids.shape, dtype=np.int8)
    np.put_along_axis(first, order, (~repeat & (ordered >= 0)).astype(np.int8), axis=1)
    return first


def merge_sources(parts: list[np.ndarray], kinds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``(users, n_i)`` blocks of item rows; later duplicates and ``-1`` become ``-1``.

    Returns the candidate rows (int32) and the source of each (int8, ``-1`` where none).
    """
    ids = np.concatenate(parts, axis=1).astype(np.int32)
    src = np.concatenate([np.full(p.shape, kind, dtype=np.int8) for p, kind in zip(parts, kinds)], axis=1)
    ids[first_occurrence(ids) == 0] = -1
    return ids, np.where(ids >= 0, src, -1).astype(np.int8)


# the scores a candidate carries, and the direction in which each one is better; ``new_item`` is 1
# for an article nobody bought before the cutoff that is on sale at it (see ``new_item_rows``)
BLEND_SCORES = {"retrieval_score": 1.0, "item_item_score": 1.0, "pair_purchases": 1.0, "pair_days_since": -1.0,
                NEW_ITEM: 1.0}
# the ranker's logit: one more score in the blend where the ranker's gate lets it in
RANKER_SCORE = "ranker_score"
# ranker inputs: a source's score standardised over the user's candidates (where it stands among them)
Z_SCORES = {"retrieval_z": "retrieval_score", "item_item_z": "item_item_score"}


def group_moments(values: np.ndarray, groups: np.ndarray, n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of ``values`` within each group code ``0..n_groups-1``."""
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n = max(int(n_groups if n_groups is not None else (groups.max() + 1 if len(groups) else 0)), 0)
    count = np.maximum(np.bincount(groups, minlength=n), 1)
    mean = np.bincount(groups, values, minlength=n) / count
    std = np.sqrt(np.bincount(groups, (values - mean[groups]) ** 2, minlength=n) / count)
    return mean, std


def standardise_by(values: np.ndarray, groups: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(value - mean) / std of each value's group (``group_moments``); 0 where the group is constant or ``-1``."""
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    ok = groups >= 0
    g = np.where(ok, groups, 0)
    m = mean[g] if len(mean) else np.zeros(len(values))
    s = std[g] if len(std) else np.zeros(len(values))
    usable = ok & (s > 1e-12)
    return np.where(usable, (values - m) / np.where(usable, s, 1.0), 0.0)


def standardise(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(value - mean) / std within each group (a user's candidates); 0 where a group is constant."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return values
    mean, std = group_moments(values, groups)
    return standardise_by(values, groups, mean, std)


def blend(scores: dict[str, np.ndarray], users: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """The candidate order: ``sum_f w_f z(s_f)`` over ``BLEND_SCORES`` and the ranker's score (days
    since counted negatively), each score standardised over the user's candidates. Flat arrays, one
    entry per candidate; ``users`` says whose it is (any integer code). Missing weights count 0."""
    out = np.zeros(len(users), dtype=np.float64)
    for name, sign in {**BLEND_SCORES, RANKER_SCORE: 1.0}.items():
        if weights.get(name):
            out += weights[name] * standardise(sign * np.asarray(scores[name], dtype=np.float64), users)
    return out.astype(np.float32)


def shortlist(order: np.ndarray, users: np.ndarray, n: int) -> np.ndarray:
    """True for each user's ``n`` best entries by ``order`` (higher first; ties: the earlier entry), the
    ranker's share of a cascade: the blend of the sources' scores picks what the DLRM scores. Flat
    arrays like :func:`blend`; ``n <= 0`` keeps everything."""
    users = np.asarray(users, dtype=np.int64)
    if n <= 0 or not len(users):
        return np.ones(len(users), dtype=bool)
    ranked = np.lexsort((-np.asarray(order, dtype=np.float64), users))  # by user, best first; stable
    by_user = users[ranked]
    position = np.arange(len(ranked)) - np.searchsorted(by_user, by_user)  # place in the user's own list
    kept = np.zeros(len(users), dtype=bool)
    kept[ranked[position < n]] = True
    return kept


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of the ranker's probabilities (clipped away from 0 and 1), float32."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)
