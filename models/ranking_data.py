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

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.io import Dataset
from merlin.schema import Schema

from funnel.core.artifacts import VALIDATED_TOWERS, read_preprocess_manifest
from funnel.core.memory import release_free_memory
from models.config import EarlierRetrievers, RankingConfig
from models.label_periods import LabelPeriod, Towers, label_periods, train_earlier_retrievers
from models.ranking_rows import (affinity_columns, assemble, candidates, dot_scores, hard_negatives, hide_new_ids,
                                 pair_history,
                                 ranking_schema, with_z_scores)
from models.sources import ItemItemSource, tune_blend, tune_item_item
from workflows import TARGET
from workflows import history as hist
from workflows.io import features_as_of
from workflows.item_item import ItemItem
from workflows.candidates import NEW_ITEM, Z_SCORES, NewItems
from workflows.codes import isin, parquet_batches, parquet_schema
from workflows.negatives import popularity_draws
from workflows.purchases import PurchaseHistory
from workflows.shuffle import ShuffledRows, permute_parts


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
    hard = hard_negatives(cands, is_pos, n_pos, cfg.hard_negatives, cfg.seed)
    counts = period.before["item_id"].value_counts(sort=False)  # most bought first, ties by item id: not by row order
    counts = counts[counts.index.isin(item_ids)].sort_index(kind="stable").sort_values(ascending=False, kind="stable")
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
                        item_item: dict[str, Any], rng: np.random.Generator, judged_path: Path
                        ) -> tuple[pd.DataFrame, dict[str, Any], "JudgedLists"]:
    """Model rows of an earlier label period, built as the latest one is: features as of its start,
    candidates from ``towers`` (a retriever that never saw the period) and an item-item source with
    the tuned lambda, recency and sequence weight (``item_item``, the latest period's tuning facts) fitted on what
    came before it. The held-out users get no training row; their candidate lists in this period
    are returned to be judged (model inputs in ``judged_path``)."""
    users, items = features_as_of(pre, period.before, period.cutoff)
    label_users = period.label["user_id"].unique()
    label_users = label_users[isin(label_users, users["user_id_raw"])]
    judged_users = label_users[isin(label_users, held_out)]
    train_users = label_users[~isin(label_users, held_out)]
    if len(train_users) > cfg.max_users:
        train_users = rng.choice(train_users, cfg.max_users, replace=False)
    label_users = np.concatenate([train_users, judged_users])
    user_index = pd.Index(users["user_id_raw"])  # every user: EASE is fitted on all their histories
    users = users[isin(users["user_id_raw"].to_numpy(), label_users)].reset_index(drop=True)  # features: theirs only
    item_ids = items["item_id_raw"].to_numpy()
    bought = period.label[period.label["user_id"].isin(label_users)][["user_id", "item_id"]].drop_duplicates()
    bought = bought[bought["item_id"].isin(item_ids)]
    source = None
    if cfg.item_item and item_item.get("lambda") is not None:
        # fitted on every user's history; scored for the label users only, so only theirs is kept (every
        # user's, 1.37M at H&M size, sat beside the period's candidates: 0.6 GB)
        purchases = PurchaseHistory.build(period.before, user_index, pd.Index(item_ids), period.cutoff)
        model = ItemItem.fit(purchases, item_item["lambda"], cfg.item_item_neighbours, cfg.item_item_max_items,
                             recency=item_item.get("recency", 0.0), sequence=item_item.get("sequence", 0.0))
        source = ItemItemSource(model, purchases.subset(user_index.get_indexer(label_users)), pd.Index(label_users),
                                cfg.item_item)
        del purchases, model
    q, vectors = towers.encode(users.set_index("user_id_raw").loc[label_users].reset_index(), items, schema)
    new = NewItems.as_of(pre_manifest["dataset"]["path"], period.before, period.cutoff, item_ids)
    recent = hist.recent_items(period.before, users=label_users).to_dict()
    cands = candidates(q, label_users, item_ids, vectors, cfg.candidates, recent, repurchase, item_item=source,
                       new=new, n_new=cfg.new_items)
    # the served graph's pair features: the blend reads them on the judged lists (earlier periods' too)
    cands["pair_purchases"], cands["pair_days_since"] = pair_history(cands, period.before, period.cutoff)
    training = cands["user_id"].isin(train_users).to_numpy()
    rows, facts = labelled_rows(cfg, period, bought[bought["user_id"].isin(train_users)], cands[training], q,
                                label_users, vectors, items, users, source, shares, new, schema, rng)
    judged = JudgedLists.of(cands, ~training, bought, users, items, period, shares, schema, judged_path)
    return rows, {**facts, "judged_users": int(len(judged_users))}, judged


@dataclass
class JudgedLists:
    """Held-out users' candidate lists of one label period, as the ranker would order them."""

    cands: pd.DataFrame  # user_id, item_id, source, scores and their z-scores
    full: Path  # the same rows as model inputs (the schema's columns), on disk: millions of rows at H&M size
    truth: pd.Series  # user id -> set of item ids bought in the period

    @classmethod
    def of(cls, cands: pd.DataFrame, mine: np.ndarray, bought: pd.DataFrame, users: pd.DataFrame,
           items: pd.DataFrame, period: LabelPeriod, shares: list[str], schema: Schema, path: Path) -> "JudgedLists":
        """The lists of the candidate rows ``mine`` (z-scores over each user's own candidates); their
        model inputs written to ``path``."""
        lists = with_z_scores(cands[mine].reset_index(drop=True), cands)
        full = hide_new_ids(assemble(lists[["user_id", "item_id", "retrieval_score", "item_item_score", *Z_SCORES,
                                            NEW_ITEM]], users, items, period.before, period.cutoff, shares), schema)
        full[TARGET] = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        full[schema.column_names].to_parquet(path, index=False)
        truth = bought[bought["user_id"].isin(lists["user_id"])].groupby("user_id")["item_id"].apply(set)
        return cls(lists, path, truth)

    @staticmethod
    def keyed(periods: list["JudgedLists"]) -> tuple[pd.DataFrame, list[Path], pd.Series, pd.Series]:
        """Every period's lists as one set: each (period, user) list gets its own key ``"k|user"``
        (the ``user_id`` of the returned candidates, one string per list, and the index of the truth);
        also the model input files in the same order, and key -> user."""
        cands, truth, owner = [], [], []
        for k, lists in enumerate(periods):
            users = pd.unique(lists.cands["user_id"])
            key = lists.cands["user_id"].map(pd.Series([f"{k}|{u}" for u in users], index=users, dtype=object))
            cands.append(lists.cands.assign(user_id=key))
            keys = pd.Index([f"{k}|{u}" for u in lists.truth.index])
            truth.append(pd.Series(list(lists.truth), index=keys, dtype=object))
            owner.append(pd.Series(lists.truth.index.to_numpy(), index=keys, dtype=object))
        return pd.concat(cands, ignore_index=True), [lists.full for lists in periods], pd.concat(truth), pd.concat(owner)


@dataclass
class RankingData:
    """Labelled training rows, the held-out users' full candidate lists, and the figures about them."""

    schema: Schema
    fit_rows: ShuffledRows  # training rows (users not held out), shuffled once, on disk (the schema's columns)
    fit_folder: Path  # where they are: removed by close()
    valid_rows: pd.DataFrame  # labelled rows of the held-out users (AUC, log loss)
    valid_full: list[Path]  # every candidate of the held-out users as model inputs, a file per label period (how the ranker is used)
    valid_cands: pd.DataFrame  # the same candidates with their scores; user_id = the list key "period|user"
    valid_truth: pd.Series  # list key -> set of items bought in that period
    list_users: pd.Series  # list key -> held-out user (the gate resamples users, not lists)
    gate_lists: np.ndarray  # the lists (keys) of half of the held-out users: the gate decides on them, the epoch on the others
    facts: dict[str, Any]  # for the manifest
    blend: dict[str, Any] | None = None  # the candidate order without a ranker: its tuned weights, for the manifest
    item_item: dict[str, Any] | None = None  # the item-item source's tuning (lambda, blend weight), for the manifest

    def close(self) -> None:
        """Remove the training rows from disk."""
        shutil.rmtree(self.fit_folder, ignore_errors=True)

    def train_dataset(self) -> Dataset:
        """The shuffled training rows as a merlin Dataset read part by part."""
        return Dataset(self.fit_rows.files, engine="parquet", schema=self.schema, cpu=True)

    @classmethod
    def build(cls, cfg: RankingConfig, retrieval_manifest: dict[str, Any],
              progress: Callable[[str], None] | None = None) -> "RankingData":
        """Every label period's rows; the training rows go to disk as each period is built (at H&M size
        they are millions of rows a period), so memory holds one period's at a time."""
        folder = Path(tempfile.mkdtemp(prefix="funnel-ranking-rows-"))
        try:
            return cls._build(cfg, retrieval_manifest, progress, StagedRows(folder))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @classmethod
    def _build(cls, cfg: RankingConfig, retrieval_manifest: dict[str, Any], progress: Callable[[str], None] | None,
               staged: "StagedRows") -> "RankingData":
        pre, run = Path(cfg.pre), Path(cfg.run)
        pre_manifest = read_preprocess_manifest(pre)
        repurchase = bool(pre_manifest["dataset"]["repurchase"])
        rng = np.random.default_rng(cfg.seed)
        say = progress or (lambda _: None)

        # The label periods: the retriever's validation period (window 0), then earlier ones; every
        # feature of a window describes only what came before it.
        split_file = pre / "splits" / "train.parquet"
        needed = [c for c in ("user_id", "item_id", "timestamp", "price") if c in parquet_schema(split_file).names]
        windows = label_periods(pd.read_parquet(split_file, columns=needed), pre_manifest["split"]["how"],
                                retrieval_manifest["config"]["valid_days"], cfg.label_windows)
        first = windows[0]
        # Earlier periods' candidates come from retrievers that never saw them, trained first: after
        # the latest period's build one ran beside that build's frames (H&M size: 10.2 GiB peak). Their
        # towers wait on disk until their period is built.
        earlier: list[tuple[Path, dict[str, Any]]] = []
        if len(windows) > 1:
            mode = cfg.earlier_retrievers
            backs = [len(windows) - 1] if mode == EarlierRetrievers.ONE else list(range(1, len(windows)))
            say({EarlierRetrievers.EACH: f"label periods 2-{len(windows)}: training a retriever on what came before each",
                 EarlierRetrievers.ONE: f"label periods 2-{len(windows)}: training a retriever on what came before them",
                 EarlierRetrievers.UPDATED: f"label periods 2-{len(windows)}: training a retriever on what came before "
                                            f"period {len(windows)}, updated for each later one"}[mode])
            update = cfg.earlier_update_epochs if mode == EarlierRetrievers.UPDATED else 0
            earlier = train_earlier_retrievers(pre, retrieval_manifest, backs, staged.folder / "earlier_retrievers",
                                               update)
            release_free_memory()
        users, items = features_as_of(pre, first.before, first.cutoff)
        schema = ranking_schema(pre)
        staged.columns = schema.column_names
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
            say("item-item source: EASE for each lambda, recency and bought-next weighting")
            purchases = PurchaseHistory.build(first.before, user_index, item_index, first.cutoff)
            truth_rows = tuning.assign(row=item_index.get_indexer(tuning["item_id"])).groupby("user_id")["row"].apply(set)
            source, item_item_facts = tune_item_item(purchases, user_index, truth_rows, cfg.valid_k, cfg.item_item_lambdas,
                                                     cfg.item_item_neighbours, cfg.item_item_max_items, cfg.item_item,
                                                     exclude_seen=not repurchase, recencies=cfg.item_item_recencies,
                                                     sequences=cfg.item_item_sequences)

        release_free_memory()  # EASE's dense matrices and the purchase frames are gone
        say("label period 1: candidates")
        towers = Towers.before_validation(run)  # the served towers may have been refit on this period
        latest_towers = "early-stopped (validated/)" if (run / VALIDATED_TOWERS).is_dir() else "served"
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
        staged.add(rows[~is_valid])
        facts_by_window = [window_facts]
        valid_rows, latest_rows = rows[is_valid], len(rows)
        # the held-out users' full candidate lists: how the ranker is used, so how it is judged
        judged = [JudgedLists.of(cands, cands["user_id"].isin(valid_users).to_numpy(), bought, users, items, first,
                                 shares, schema, staged.judged_path(0))]
        by_source = cands["source"].value_counts().to_dict()
        # what only the latest period needs goes before the earlier ones are built (at H&M size period 2
        # peaked at 9.3 GiB beside the latest period's candidates, rows, EASE source and towers)
        rows = cands = source = purchases = recent = q = towers = users = None
        release_free_memory()
        for k, window in enumerate(windows[1:], start=2):
            say(f"label period {k}: candidates")
            folder = earlier[k - 2 if len(earlier) > 1 else 0][0]
            towers = Towers.load(folder)
            part, part_facts, lists = earlier_window_rows(cfg, pre, pre_manifest, window, valid_users, towers,
                                                          schema, shares, repurchase, item_item_facts,
                                                          rng, staged.judged_path(k - 1))
            towers = None
            if len(earlier) > 1:
                shutil.rmtree(folder, ignore_errors=True)
            staged.add(part)
            part = None
            facts_by_window.append(part_facts)
            judged.append(lists)
            release_free_memory()  # the period's candidates, features, towers and EASE: back to the system
        shutil.rmtree(staged.folder / "earlier_retrievers", ignore_errors=True)
        earlier_rows = sum(staged.rows[1:])
        cutoff, n_windows = first.cutoff, len(windows)
        windows = first = None  # the training split's frame: not needed to shuffle the rows
        release_free_memory()
        say("shuffling the training rows")
        fit_rows = staged.shuffle(cfg.seed)
        valid_cands, valid_full, valid_truth, list_users = JudgedLists.keyed(judged)
        facts = {"pre": str(pre.resolve()), "content_checksum": pre_manifest["dataset"]["content_checksum"],
                 "label_period_start": str(cutoff), "label_users": int(len(label_users)),
                 "rows": int(latest_rows + earlier_rows),
                 "positives": int(sum(f["positives"] for f in facts_by_window)),
                 "hard_negatives": int(sum(f["hard_negatives"] for f in facts_by_window)),
                 "random_negatives": int(sum(f["random_negatives"] for f in facts_by_window)),
                 "candidates_per_user": window_facts["candidates_per_user"],
                 "label_recall_of_candidates": window_facts["label_recall_of_candidates"],
                 "candidates_by_source": by_source, "affinity_columns": shares,
                 "new_items": int(len(new.rows)), "latest_period_towers": latest_towers,
                 "label_windows": facts_by_window}
        if n_windows > 1:
            facts["earlier_retrievers"] = {"mode": str(cfg.earlier_retrievers), "runs": [f for _, f in earlier]}
        return cls(schema=schema, fit_rows=fit_rows, fit_folder=staged.folder,
                   valid_rows=valid_rows, valid_full=valid_full, valid_cands=valid_cands, valid_truth=valid_truth,
                   list_users=list_users, gate_lists=list_users.index[list_users.isin(gate_users)].to_numpy(),
                   facts=facts, blend=blend_facts, item_item=item_item_facts)


class StagedRows:
    """Training rows written to disk a label period at a time (the schema's ``columns``), then
    shuffled once into parts: the order of ``pd.concat(parts).sample(frac=1, random_state=seed)``;
    the held-out users' lists beside them (``judged_path``)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.columns = folder, None
        self.files: list[Path] = []
        self.rows: list[int] = []  # rows per period

    def judged_path(self, period: int) -> Path:
        """Where the held-out users' lists of label period ``period`` (0: the latest) go."""
        return self.folder / "judged" / f"period_{period:02d}.parquet"

    def add(self, rows: pd.DataFrame) -> None:
        path = self.folder / "staged" / f"period_{len(self.files):02d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        (rows if self.columns is None else rows[self.columns]).to_parquet(path, index=False)
        self.files.append(path)
        self.rows.append(len(rows))

    def shuffle(self, seed: int) -> ShuffledRows:
        """The rows in pandas' ``sample(frac=1.0, random_state=seed)`` order (a permutation from a
        ``RandomState(seed)``), written as parts into ``folder/rows``; the staged files removed."""
        order = np.random.RandomState(seed).permutation(sum(self.rows))
        out = permute_parts(parquet_batches(self.folder / "staged"), order, self.folder / "rows")
        shutil.rmtree(self.folder / "staged", ignore_errors=True)
        return out
