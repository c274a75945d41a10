"""A ranker row's features, built as serving builds them: the candidates of the served graph's sources,
pair features (how often and how long ago the user bought the item, the two-tower and item-item
scores and their z-scores over the user's candidates), the user's affinity to the item's
categories, and the ranker's input schema. ``models.ranking_data`` labels these rows per period;
``funnel evaluate`` orders candidate lists with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.io import Dataset
from merlin.schema import ColumnSchema, Schema, Tags

from funnel.core.topk import dot_top_k
from models.sources import ItemItemSource
from workflows import OOV_INDEX, TARGET
from workflows.graph import item_id_columns
from workflows.io import load_workflow
from workflows.candidates import (ITEM_ITEM, NEW, NEW_ITEM, REPURCHASE, RETRIEVAL, SOURCE_NAMES, Z_SCORES, NewItems,
                                 group_moments, merge_sources, standardise_by, top_new)
from workflows.purchases import (AFFINITY_PREFIX, MAX_AFFINITY_VALUES, ItemValues, PurchaseHistory, affinity,
                                pair_features)

DOT_CHUNK = 262_144  # pairs scored at once by dot_scores
# pairs whose affinity is computed at once: each pair gets a sparse row of its user's items and a
# dense row of value shares (at H&M size 1-2M pairs a label period: +3 GB at once, the build's peak)
AFFINITY_CHUNK = 65_536
PAIR_FEATURES = ["pair_purchases", "pair_days_since", "retrieval_score", "item_item_score", *Z_SCORES, NEW_ITEM]


def candidates(q: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray, vectors: np.ndarray, n: int,
               history: dict[Any, list], repurchase: bool, recent: int = 20,
               item_item: ItemItemSource | None = None, new: NewItems | None = None,
               n_new: int = 0) -> pd.DataFrame:
    """The served graph's known-user candidates: retriever top-n, the item-item top-N, the user's
    ``recent`` latest items where the domain repurchases, then the ``n_new`` items of ``new``
    (``workflows.candidates.NewItems``) with the best two-tower scores, merged as
    serving merges them (``workflows.candidates``); where the domain does not repurchase, seen
    items are then removed, as serving's filter does.

    Returns rows (user_id, item_id, source, retrieval_score, item_item_score, new_item: the item's
    freshness, 0 if not new) with raw ids, in candidate order (a retrieved item the user bought before keeps source 'retrieval').
    Trending fill, which the ranker never scores for known users, is not a training candidate.
    """
    pos = pd.Index(item_ids)
    parts, kinds = [dot_top_k(q, vectors, n)], [RETRIEVAL]
    rows = [pos.get_indexer(history.get(u, [])) for u in user_ids]  # most recent first; -1 = unknown item
    if item_item is not None and item_item.n:
        parts.append(item_item.top(np.asarray(user_ids), exclude_seen=not repurchase))
        kinds.append(ITEM_ITEM)
    if repurchase:
        own = np.full((len(user_ids), recent), -1, dtype=np.int64)
        for r, items in enumerate(rows):
            items = items[items >= 0][:recent]
            own[r, : len(items)] = items
        parts.append(own)
        kinds.append(REPURCHASE)
    new = new or NewItems.empty()
    if n_new:
        parts.append(top_new(q, vectors, new.rows, n_new))
        kinds.append(NEW)
    ids, src = merge_sources(parts, kinds)
    if not repurchase:  # serving's exclude_seen=all
        for r, items in enumerate(rows):
            ids[r, np.isin(ids[r], items[items >= 0])] = -1
    users, slots = np.nonzero(ids >= 0)
    cands = pd.DataFrame({"user_id": np.asarray(user_ids)[users], "item_id": item_ids[ids[users, slots]],
                          "source": np.asarray(SOURCE_NAMES)[src[users, slots]]})
    cands["retrieval_score"] = dot_scores(q, user_ids, vectors, item_ids, cands)
    cands["item_item_score"] = (item_item.pair_scores(cands["user_id"].to_numpy(), ids[users, slots])
                                if item_item is not None else np.zeros(len(cands), dtype=np.float32))
    cands[NEW_ITEM] = new.scores(len(item_ids))[ids[users, slots]]
    return cands


def hide_new_ids(rows: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Model rows with every id column of a new item (``NEW_ITEM`` > 0) set to the out-of-vocabulary
    code, as serving sees it: its vocabularies come from purchases, and nobody had bought it yet."""
    new = rows[NEW_ITEM].to_numpy() > 0
    return rows.assign(**{name: np.where(new, OOV_INDEX, rows[name].to_numpy()).astype(rows[name].dtype)
                          for name in item_id_columns(schema)})


def hard_negatives(cands: pd.DataFrame, is_pos: np.ndarray, positives: pd.Series, per_positive: int,
                   seed: int) -> pd.DataFrame:
    """The unbought candidates (``~is_pos``) in a random order, at most ``per_positive`` times each user's
    ``positives`` count (1 where the user has none) per user: the rows and order of
    ``cands[~is_pos].sample(frac=1, random_state=seed)`` cut by a per-user ``cumcount``, taken without
    copying every unbought candidate first (11M rows at H&M size: a GB)."""
    unbought = np.flatnonzero(~np.asarray(is_pos, dtype=bool))
    order = unbought[np.random.RandomState(seed).permutation(len(unbought))]  # pandas' sample order
    user_ids = cands["user_id"].to_numpy()[order]
    codes = pd.factorize(user_ids)[0]
    seen = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    return cands.iloc[order[seen < per_positive * positives.reindex(user_ids).fillna(1).to_numpy()]]


def with_z_scores(rows: pd.DataFrame, cands: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (user_id, retrieval_score, item_item_score) plus ``Z_SCORES``: each score standardised
    by the mean and spread of that score over the user's candidates ``cands``, as serving standardises
    it over the candidates it ranks (0 for a user without candidates)."""
    users = pd.Index(pd.unique(cands["user_id"]))
    groups = users.get_indexer(cands["user_id"])
    where = users.get_indexer(rows["user_id"])
    out = {}
    for name, score in Z_SCORES.items():
        mean, std = group_moments(cands[score].to_numpy(), groups, len(users))
        out[name] = standardise_by(rows[score].to_numpy(), where, mean, std).astype(np.float32)
    return rows.assign(**out)


def dot_scores(q: np.ndarray, user_ids: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray,
               pairs: pd.DataFrame) -> np.ndarray:
    """Two-tower score of each (user_id, item_id) pair (raw ids; unknown items score 0)."""
    u = pd.Index(user_ids).get_indexer(pairs["user_id"])
    i = pd.Index(item_ids).get_indexer(pairs["item_id"])
    scores = np.zeros(len(u), dtype=np.float32)
    for start in range(0, len(u), DOT_CHUNK):  # gathered vectors in chunks: 10M pairs x 64 dims is 5 GiB
        part = slice(start, start + DOT_CHUNK)
        scores[part] = np.einsum("ij,ij->i", q[u[part]], vectors[np.maximum(i[part], 0)])
    return np.where(i >= 0, scores, 0.0).astype(np.float32)


def pair_history(pairs: pd.DataFrame, history: pd.DataFrame, now: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """Per raw (user_id, item_id) pair: the served graph's pair features (``workflows.purchases``) of
    ``history`` as seen at ``now``: log1p(times bought), log1p(days since the last time, or 365)."""
    users = pd.Index(pd.unique(pairs["user_id"]))
    # the items of both, without a concatenated copy of the history's column (31M ids at H&M size)
    items = pd.Index(pd.unique(pairs["item_id"])).union(pd.Index(pd.unique(history["item_id"])), sort=False)
    purchases = PurchaseHistory.build(history, users, items, now)
    bought, since = pair_features(purchases, users.get_indexer(pairs["user_id"]),
                                  items.get_indexer(pairs["item_id"]).reshape(-1, 1))
    return bought.reshape(-1), since.reshape(-1)


def affinity_columns(schema: Schema) -> list[str]:
    """The item features that get a user-affinity feature: categorical (single or multi-hot), not the
    id, with at most ``MAX_AFFINITY_VALUES`` codes (product types, colours, genres; not product codes)."""
    out = []
    for col in schema.select_by_tag(Tags.ITEM).select_by_tag(Tags.CATEGORICAL):
        size = (col.int_domain.max + 1) if col.int_domain is not None and col.int_domain.max is not None else None
        if Tags.ID not in col.tags and size is not None and size <= MAX_AFFINITY_VALUES:
            out.append(col.name)
    return out


def affinity_history(pairs: pd.DataFrame, items: pd.DataFrame, history: pd.DataFrame, now: pd.Timestamp,
                     columns: list[str], chunk: int = AFFINITY_CHUNK) -> dict[str, np.ndarray]:
    """``AFFINITY_PREFIX + col`` per raw (user_id, item_id) pair: the share of the user's items in
    ``history`` (as of ``now``) sharing the pair item's values of ``col`` (``workflows.purchases.affinity``,
    as serving computes it), ``chunk`` pairs at a time. ``items``: the encoded item table with ``item_id_raw``."""
    if not columns:
        return {}
    users = pd.Index(pd.unique(pairs["user_id"]))
    index = pd.Index(items["item_id_raw"])
    purchases = PurchaseHistory.build(history, users, index, now)
    rows = users.get_indexer(pairs["user_id"])
    cands = index.get_indexer(pairs["item_id"]).reshape(-1, 1)
    values = ItemValues.from_codes({col: items[col].to_numpy() for col in columns})
    out = {col: np.zeros(len(rows), dtype=np.float32) for col in columns}
    for start in range(0, len(rows), chunk):
        for col, share in affinity(purchases, rows[start:start + chunk], cands[start:start + chunk], values).items():
            out[col][start:start + chunk] = share.reshape(-1)
    return {AFFINITY_PREFIX + col: share for col, share in out.items()}


def assemble(pairs: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, history: pd.DataFrame,
             now: pd.Timestamp, affinity: list[str] | None = None) -> pd.DataFrame:
    """Model rows for raw (user_id, item_id) pairs: encoded user + item features + pair features.

    ``users``/``items`` are encoded tables with ``user_id_raw``/``item_id_raw``; the result keeps
    the raw ids in ``user_id_raw``/``item_id_raw`` beside the encoded ``user_id``/``item_id``.
    Pair features describe ``history`` as seen at ``now``; ``affinity``: the item features whose
    user-affinity features are added (``affinity_columns``).
    """
    bought, since = pair_history(pairs, history, now)
    out = pairs.assign(pair_purchases=bought, pair_days_since=since,
                       **affinity_history(pairs, items, history, now, affinity or []))
    out = out.rename(columns={"user_id": "user_id_raw", "item_id": "item_id_raw"})
    return out.merge(users, on="user_id_raw", how="left").merge(items, on="item_id_raw", how="left")


def rank_candidates(scores: np.ndarray, cands: pd.DataFrame, k: int) -> pd.Series:
    """Top-k raw item ids per user by ``scores`` (ties keep candidate order)."""
    ranked = cands.assign(_score=scores).sort_values(["user_id", "_score"], ascending=[True, False], kind="stable")
    return ranked.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(s[:k]))


def ranking_schema(pre: Path) -> Schema:
    """Schema of the ranker's inputs: user + item features (as transformed), pair features (with the
    user's affinity to the item's categories), the target (the workflow's own column schema)."""
    base = Dataset(str(pre / "retrieval" / "train"), engine="parquet", cpu=True).schema
    names = PAIR_FEATURES + [AFFINITY_PREFIX + col for col in affinity_columns(base)]
    pair = Schema([ColumnSchema(name, tags=[Tags.CONTINUOUS], dtype=np.float32, is_list=False) for name in names])
    target = Schema([load_workflow(pre).output_schema[TARGET]])
    return base.select_by_tag(Tags.USER) + base.select_by_tag(Tags.ITEM) + pair + target
