"""The ranker's data: labelled candidates with features as of each label period's start.

Labels come from the period the retriever did not see (its validation period) and, with
``label_windows`` > 1, from earlier periods whose candidates come from a retriever trained
before them (``models.label_periods``); held-out users come from the latest period only, are
left out of every period's training rows and are judged on their lists in every period.
Positives are what users bought then; hard negatives are the retriever's own top candidates (plus the
user's earlier purchases where the domain repurchases) that were not bought; random
negatives are drawn by popularity. Features are the fitted workflow's user and item
features computed *as of the start of that period* (no look-ahead), plus pair features
serving computes too: how often the user bought the item before, days since, the two-tower and
item-item scores, and those two scores standardised over the user's candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.io import Dataset
from merlin.schema import ColumnSchema, Schema, Tags

from funnel.core.artifacts import read_preprocess_manifest
from funnel.core.memory import release_free_memory
from funnel.core.topk import dot_top_k
from models.config import RankingConfig
from models.label_periods import LabelPeriod, Towers, label_periods, train_earlier_retriever
from models.sources import ItemItemSource, tune_blend, tune_item_item
from workflows import OOV_INDEX, TARGET
from workflows import history as hist
from workflows.graph import item_id_columns
from workflows.io import features_as_of, load_workflow
from workflows.item_item import ItemItem
from workflows.candidates import (ITEM_ITEM, NEW, NEW_ITEM, REPURCHASE, RETRIEVAL, SOURCE_NAMES, Z_SCORES, NewItems,
                                 group_moments, merge_sources, standardise_by, top_new)
from workflows.negatives import popularity_draws
from workflows.purchases import (AFFINITY_PREFIX, MAX_AFFINITY_VALUES, ItemValues, PurchaseHistory, affinity,
                                pair_features)

DOT_CHUNK = 262_144  # pairs scored at once by dot_scores
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
    items = pd.Index(pd.unique(pd.concat([pairs["item_id"], history["item_id"]], ignore_index=True)))
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
                     columns: list[str]) -> dict[str, np.ndarray]:
    """``AFFINITY_PREFIX + col`` per raw (user_id, item_id) pair: the share of the user's items in
    ``history`` (as of ``now``) sharing the pair item's values of ``col`` (``workflows.purchases.affinity``,
    as serving computes it). ``items``: the encoded item table with ``item_id_raw``."""
    if not columns:
        return {}
    users = pd.Index(pd.unique(pairs["user_id"]))
    index = pd.Index(items["item_id_raw"])
    purchases = PurchaseHistory.build(history, users, index, now)
    rows = users.get_indexer(pairs["user_id"])
    cands = index.get_indexer(pairs["item_id"]).reshape(-1, 1)
    shares = affinity(purchases, rows, cands, ItemValues.from_codes({col: items[col].to_numpy() for col in columns}))
    return {AFFINITY_PREFIX + col: share.reshape(-1) for col, share in shares.items()}


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


def labelled_rows(cfg: RankingConfig, period: LabelPeriod, bought: pd.DataFrame, cands: pd.DataFrame, q: np.ndarray,
                  label_users: np.ndarray, vectors: np.ndarray, items: pd.DataFrame, users: pd.DataFrame,
                  source: ItemItemSource | None, shares: list[str], new: NewItems, schema: Schema,
                  rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One label period's model rows: positives are ``bought`` (user_id, item_id), hard negatives the
    users' unbought candidates (``cands``, ``hard_negatives`` per positive), random negatives drawn by
    popularity before the period; every feature as of the period's start. Returns the rows and figures."""
    item_ids = items["item_id_raw"].to_numpy()
    bought_key = set(zip(bought["user_id"], bought["item_id"]))
    is_pos = np.fromiter((k in bought_key for k in zip(cands["user_id"], cands["item_id"])), bool, len(cands))
    n_pos = bought.groupby("user_id").size()
    hard = cands[~is_pos].sample(frac=1.0, random_state=cfg.seed)
    hard = hard[hard.groupby("user_id").cumcount().to_numpy()
                < cfg.hard_negatives * n_pos.reindex(hard["user_id"]).fillna(1).to_numpy()]
    counts = period.before["item_id"].value_counts()
    counts = counts[counts.index.isin(item_ids)]
    draws = popularity_draws(counts, len(bought) * cfg.random_negatives, rng)
    rand = pd.DataFrame({"user_id": np.repeat(bought["user_id"].to_numpy(), cfg.random_negatives),
                         "item_id": counts.index.to_numpy()[draws]})
    rand = rand[[k not in bought_key for k in zip(rand["user_id"], rand["item_id"])]]
    pairs = pd.concat([bought.assign(**{TARGET: 1}), hard[["user_id", "item_id"]].assign(**{TARGET: 0}),
                       rand.assign(**{TARGET: 0})], ignore_index=True)
    pairs = pairs.drop_duplicates(["user_id", "item_id"], keep="first").reset_index(drop=True)
    pairs["retrieval_score"] = dot_scores(q, label_users, vectors, item_ids, pairs)
    pairs["item_item_score"] = (source.pair_scores(pairs["user_id"].to_numpy(), pd.Index(item_ids).get_indexer(pairs["item_id"]))
                                if source is not None else np.float32(0.0))
    pairs[NEW_ITEM] = new.scores(len(item_ids))[pd.Index(item_ids).get_indexer(pairs["item_id"])]
    rows = assemble(with_z_scores(pairs, cands), users, items, period.before, period.cutoff, shares)
    rows = hide_new_ids(rows, schema)
    rows[TARGET] = rows[TARGET].astype(np.int32)
    facts = {"label_period_start": str(period.cutoff), "label_users": int(len(label_users)),
             "positives": int(rows[TARGET].sum()), "hard_negatives": int(len(hard)), "random_negatives": int(len(rand)),
             "candidates_per_user": round(len(cands) / max(len(label_users), 1), 1),
             "label_recall_of_candidates": round(float(is_pos.sum()) / max(len(bought), 1), 4)}
    return rows, facts


def earlier_window_rows(cfg: RankingConfig, pre: Path, pre_manifest: dict[str, Any], period: LabelPeriod,
                        held_out: np.ndarray, towers: Towers, schema: Schema, shares: list[str], repurchase: bool,
                        lam: float | None, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any], "JudgedLists"]:
    """Model rows of an earlier label period, built as the latest one is: features as of its start,
    candidates from ``towers`` (a retriever that never saw the period) and an item-item source with
    the tuned ``lam`` fitted on what came before it. The held-out users get no training row; their
    candidate lists in this period are returned to be judged."""
    users, items = features_as_of(pre, period.before, period.cutoff)
    label_users = period.label["user_id"].unique()
    label_users = label_users[np.isin(label_users, users["user_id_raw"])]
    judged_users = label_users[np.isin(label_users, held_out)]
    train_users = label_users[~np.isin(label_users, held_out)]
    if len(train_users) > cfg.max_users:
        train_users = rng.choice(train_users, cfg.max_users, replace=False)
    label_users = np.concatenate([train_users, judged_users])
    item_ids = items["item_id_raw"].to_numpy()
    bought = period.label[period.label["user_id"].isin(label_users)][["user_id", "item_id"]].drop_duplicates()
    bought = bought[bought["item_id"].isin(item_ids)]
    source = None
    if cfg.item_item and lam is not None:
        user_index = pd.Index(users["user_id_raw"])
        purchases = PurchaseHistory.build(period.before, user_index, pd.Index(item_ids), period.cutoff)
        source = ItemItemSource(ItemItem.fit(purchases, lam, cfg.item_item_neighbours, cfg.item_item_max_items),
                                purchases, user_index, cfg.item_item)
    q, vectors = towers.encode(users.set_index("user_id_raw").loc[label_users].reset_index(), items, schema)
    new = NewItems.as_of(pre_manifest["dataset"]["path"], period.before, period.cutoff, item_ids)
    recent = hist.recent_items(period.before, users=label_users).to_dict()
    cands = candidates(q, label_users, item_ids, vectors, cfg.candidates, recent, repurchase, item_item=source,
                       new=new, n_new=cfg.new_items)
    training = cands["user_id"].isin(train_users).to_numpy()
    rows, facts = labelled_rows(cfg, period, bought[bought["user_id"].isin(train_users)], cands[training], q,
                                label_users, vectors, items, users, source, shares, new, schema, rng)
    judged = JudgedLists.of(cands, ~training, bought, users, items, period, shares, schema)
    return rows, {**facts, "judged_users": int(len(judged_users))}, judged


@dataclass
class JudgedLists:
    """Held-out users' candidate lists of one label period, as the ranker would order them."""

    cands: pd.DataFrame  # user_id, item_id, source, scores and their z-scores
    full: pd.DataFrame  # the same rows as model inputs
    truth: pd.Series  # user id -> set of item ids bought in the period

    @classmethod
    def of(cls, cands: pd.DataFrame, mine: np.ndarray, bought: pd.DataFrame, users: pd.DataFrame,
           items: pd.DataFrame, period: LabelPeriod, shares: list[str], schema: Schema) -> "JudgedLists":
        """The lists of the candidate rows ``mine`` (z-scores over each user's own candidates)."""
        lists = with_z_scores(cands[mine].reset_index(drop=True), cands)
        full = hide_new_ids(assemble(lists[["user_id", "item_id", "retrieval_score", "item_item_score", *Z_SCORES,
                                            NEW_ITEM]], users, items, period.before, period.cutoff, shares), schema)
        full[TARGET] = 0
        truth = bought[bought["user_id"].isin(lists["user_id"])].groupby("user_id")["item_id"].apply(set)
        return cls(lists, full, truth)

    @staticmethod
    def keyed(periods: list["JudgedLists"]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
        """Every period's lists as one set: each (period, user) list gets its own key ``"k|user"``
        (the ``user_id`` of the returned candidates and the index of the truth); also key -> user."""
        cands, truth, owner = [], [], []
        for k, lists in enumerate(periods):
            key = lists.cands["user_id"].map(lambda u, k=k: f"{k}|{u}")
            cands.append(lists.cands.assign(user_id=key))
            keys = pd.Index([f"{k}|{u}" for u in lists.truth.index])
            truth.append(pd.Series(list(lists.truth), index=keys, dtype=object))
            owner.append(pd.Series(lists.truth.index.to_numpy(), index=keys, dtype=object))
        full = pd.concat([lists.full for lists in periods], ignore_index=True)
        return pd.concat(cands, ignore_index=True), full, pd.concat(truth), pd.concat(owner)


@dataclass
class RankingData:
    """Labelled training rows, the held-out users' full candidate lists, and the figures about them."""

    schema: Schema
    fit_rows: pd.DataFrame  # shuffled training rows (users not held out)
    valid_rows: pd.DataFrame  # labelled rows of the held-out users (AUC, log loss)
    valid_full: pd.DataFrame  # every candidate of the held-out users, every label period (how the ranker is used)
    valid_cands: pd.DataFrame  # the same candidates with their scores; user_id = the list key "period|user"
    valid_truth: pd.Series  # list key -> set of items bought in that period
    list_users: pd.Series  # list key -> held-out user (the gate resamples users, not lists)
    gate_lists: np.ndarray  # the lists (keys) of half of the held-out users: the gate decides on them, the epoch on the others
    facts: dict[str, Any]  # for the manifest
    blend: dict[str, Any] | None = None  # the candidate order without a ranker: its tuned weights, for the manifest
    item_item: dict[str, Any] | None = None  # the item-item source's tuning (lambda, blend weight), for the manifest

    @classmethod
    def build(cls, cfg: RankingConfig, retrieval_manifest: dict[str, Any],
              progress: Callable[[str], None] | None = None) -> "RankingData":
        pre, run = Path(cfg.pre), Path(cfg.run)
        pre_manifest = read_preprocess_manifest(pre)
        repurchase = bool(pre_manifest["dataset"]["repurchase"])
        rng = np.random.default_rng(cfg.seed)
        say = progress or (lambda _: None)

        # The label periods: the retriever's validation period (window 0), then earlier ones; every
        # feature of a window describes only what came before it.
        windows = label_periods(pd.read_parquet(pre / "splits" / "train.parquet"), pre_manifest["split"]["how"],
                                retrieval_manifest["config"]["valid_days"], cfg.label_windows)
        first = windows[0]
        # Earlier periods' candidates come from a retriever that saw none of them, trained first: after
        # the latest period's build it ran beside that build's frames (H&M size: 10.2 GiB peak)
        towers_before = None
        if len(windows) > 1:
            say(f"label periods 2-{len(windows)}: training a retriever on what came before them")
            towers_before, earlier = train_earlier_retriever(pre, retrieval_manifest, len(windows) - 1)
            release_free_memory()
        users, items = features_as_of(pre, first.before, first.cutoff)
        schema = ranking_schema(pre)
        shares = affinity_columns(schema)

        label_users = first.label["user_id"].unique()
        if len(label_users) > cfg.max_users:
            label_users = rng.choice(label_users, cfg.max_users, replace=False)
        valid_users = rng.choice(label_users, max(2, int(len(label_users) * cfg.valid_share)), replace=False)
        gate_users = valid_users[: len(valid_users) // 2]  # a random half (valid_users is a random draw)

        item_ids = items["item_id_raw"].to_numpy()
        bought = first.label[first.label["user_id"].isin(label_users)][["user_id", "item_id"]].drop_duplicates()
        bought = bought[bought["item_id"].isin(item_ids)]
        # the item-item source, fitted on the history before the label period; lambda chosen on the
        # label purchases of every label user but the gate's
        item_index, user_index = pd.Index(item_ids), pd.Index(users["user_id_raw"])
        tuning = bought[~bought["user_id"].isin(gate_users)]
        source, item_item_facts = None, {}
        if cfg.item_item:
            say("item-item source: EASE for each lambda")
            purchases = PurchaseHistory.build(first.before, user_index, item_index, first.cutoff)
            truth_rows = tuning.assign(row=item_index.get_indexer(tuning["item_id"])).groupby("user_id")["row"].apply(set)
            source, item_item_facts = tune_item_item(purchases, user_index, truth_rows, cfg.valid_k, cfg.item_item_lambdas,
                                                     cfg.item_item_neighbours, cfg.item_item_max_items, cfg.item_item,
                                                     exclude_seen=not repurchase)

        release_free_memory()  # EASE's dense matrices and the purchase frames are gone
        say("label period 1: candidates")
        towers = Towers.load(run)
        q, vectors = towers.encode(users.set_index("user_id_raw").loc[label_users].reset_index(), items, schema)
        new = NewItems.as_of(pre_manifest["dataset"]["path"], first.before, first.cutoff, item_ids)
        recent = hist.recent_items(first.before, users=label_users).to_dict()
        cands = candidates(q, label_users, item_ids, vectors, cfg.candidates, recent, repurchase, item_item=source,
                       new=new, n_new=cfg.new_items)
        cands["pair_purchases"], cands["pair_days_since"] = pair_history(cands, first.before, first.cutoff)
        _, blend_facts = tune_blend(cands, tuning.groupby("user_id")["item_id"].apply(set), cfg.valid_k, cfg.seed)
        rows, window_facts = labelled_rows(cfg, first, bought, cands, q, label_users, vectors, items, users, source,
                                           shares, new, schema, rng)
        is_valid = rows["user_id_raw"].isin(valid_users).to_numpy()
        fit_parts, facts_by_window = [rows[~is_valid]], [window_facts]
        valid_rows, latest_rows = rows[is_valid], len(rows)
        # the held-out users' full candidate lists: how the ranker is used, so how it is judged
        judged = [JudgedLists.of(cands, cands["user_id"].isin(valid_users).to_numpy(), bought, users, items, first,
                                 shares, schema)]
        by_source = cands["source"].value_counts().to_dict()
        # what only the latest period needs goes before the earlier ones are built (at H&M size period 2
        # peaked at 9.3 GiB beside the latest period's candidates, rows, EASE source and towers)
        rows = cands = source = purchases = recent = q = towers = users = None
        release_free_memory()
        if towers_before is not None:
            for k, window in enumerate(windows[1:], start=2):
                say(f"label period {k}: candidates")
                part, part_facts, lists = earlier_window_rows(cfg, pre, pre_manifest, window, valid_users, towers_before,
                                                              schema, shares, repurchase, item_item_facts.get("lambda"),
                                                              rng)
                window.release()  # its history: 1.2 GB at H&M size
                fit_parts.append(part)
                facts_by_window.append(part_facts)
                judged.append(lists)
        earlier_rows = sum(len(p) for p in fit_parts[1:])
        fit_rows = pd.concat(fit_parts, ignore_index=True)
        fit_parts.clear()  # two copies of the training rows at most (concatenated, then shuffled), not three
        valid_cands, valid_full, valid_truth, list_users = JudgedLists.keyed(judged)
        facts = {"pre": str(pre.resolve()), "content_checksum": pre_manifest["dataset"]["content_checksum"],
                 "label_period_start": str(first.cutoff), "label_users": int(len(label_users)),
                 "rows": int(latest_rows + earlier_rows),
                 "positives": int(sum(f["positives"] for f in facts_by_window)),
                 "hard_negatives": int(sum(f["hard_negatives"] for f in facts_by_window)),
                 "random_negatives": int(sum(f["random_negatives"] for f in facts_by_window)),
                 "candidates_per_user": window_facts["candidates_per_user"],
                 "label_recall_of_candidates": window_facts["label_recall_of_candidates"],
                 "candidates_by_source": by_source, "affinity_columns": shares,
                 "new_items": int(len(new.rows)),
                 "label_windows": facts_by_window}
        if len(windows) > 1:
            facts["earlier_retriever"] = earlier
        return cls(schema=schema, fit_rows=fit_rows.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True),
                   valid_rows=valid_rows, valid_full=valid_full, valid_cands=valid_cands, valid_truth=valid_truth,
                   list_users=list_users, gate_lists=list_users.index[list_users.isin(gate_users)].to_numpy(),
                   facts=facts, blend=blend_facts, item_item=item_item_facts)
