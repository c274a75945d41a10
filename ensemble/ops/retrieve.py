"""RetrieveCandidates: query tower + Faiss top-N, item-item (EASE) top-N, own recent items, new items, trending items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from merlin.schema import ColumnSchema, Schema

from workflows.candidates import ITEM_ITEM, NEW, REPURCHASE, RETRIEVAL, TRENDING, NewItems, merge_sources, top_new
from workflows.item_item import ItemItem
from workflows.purchases import PurchaseHistory
from ensemble.index import load_index
from ensemble.savedmodel import model_runner
from ensemble.ops.online import ONLINE_ITEMS
from ensemble.ops.base import (CANDIDATES, ITEM_ITEM_SCORES, RETRIEVAL_SCORES, SOURCES, USER_ROW, ServingOperator, column,
                               user_features)



class RetrieveCandidates(ServingOperator):
    """Candidates per user, ``-1``-padded to ``n + item_item + recent + new + trending`` columns.

    Known users: the query tower's embedding searched in the Faiss index (top ``n``), then the
    ``item_item`` best items by the EASE weights of what the user bought (``item_item.npz``,
    including purchases since the export read online), then, where the domain repurchases,
    the user's ``recent`` latest items, then the ``new`` best-scored of the items nobody bought
    in training (``new_items.npz``: exact search, they are few), then ``trending`` items; the
    first source of a duplicate wins. Unknown users get trending items only. ``retrieval_scores`` is the
    two-tower dot product of every candidate (0 for cold users), ``item_item_scores`` its
    EASE score.
    """

    files = ("query_tower", "item_index.faiss", "index.json", "item_vectors.npy", "history.npz", "trending.npz",
             "item_item.npz", "new_items.npz")

    def __init__(self, source_dir: str | Path, n: int, recent: int, trending: int, repurchase: bool,
                 item_item: int = 0, new: int = 0):
        super().__init__(source_dir)
        self.n, self.recent, self.trending, self.repurchase = int(n), int(recent), int(trending), bool(repurchase)
        self.item_item, self.new = int(item_item), int(new)

    online_width: int = 0  # set when an OnlineHistory operator feeds this one
    triton_model: str | None = None  # set when the export runs the query tower as its own Triton model
    triton_spec: dict | None = None

    @property
    def width(self) -> int:
        return (self.n + self.item_item + ((self.recent + self.online_width) if self.repurchase else 0)
                + self.new + self.trending)

    def load(self, path: Path) -> None:
        self._tower = model_runner(path / "query_tower", self.triton_model, self.triton_spec)
        self._index = load_index(path / "item_index.faiss", json.loads((path / "index.json").read_text()))
        self._vectors = np.load(path / "item_vectors.npy", allow_pickle=False)
        self._history = PurchaseHistory.load(path / "history.npz")
        self._item_item = ItemItem.load(path / "item_item.npz")
        with np.load(path / "trending.npz", allow_pickle=False) as data:
            self._trending = data["items"][: self.trending].astype(np.int32)
        self._new_items = NewItems.load(path / "new_items.npz").rows

    def new_columns(self, input_schema: Schema) -> list[ColumnSchema]:
        return [column(CANDIDATES, np.int32, True), column(SOURCES, np.int8, True),
                column(RETRIEVAL_SCORES, np.float32, True), column(ITEM_ITEM_SCORES, np.float32, True)]

    def compute(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = columns[USER_ROW]
        users = len(rows)
        known = np.flatnonzero(rows >= 0)
        cands = np.full((users, self.width), -1, dtype=np.int32)
        sources = np.full((users, self.width), -1, dtype=np.int8)
        scores = np.zeros((users, self.width), dtype=np.float32)
        queries = np.zeros((users, self._vectors.shape[1]), dtype=np.float32)
        found = np.full((users, 0), -1, dtype=np.int64)
        if len(known):
            feats = {name: values[known] for name, values in user_features(columns).items()}
            queries[known] = self._tower(feats)
            n = min(self.n, self._vectors.shape[0])
            found = np.full((users, n), -1, dtype=np.int64)
            _, found[known] = self._index.search(np.ascontiguousarray(queries[known]), n)
        parts = [np.where((rows >= 0)[:, None], found, -1)]
        kinds = [RETRIEVAL]
        online = columns.get(ONLINE_ITEMS)  # purchases since the export, from the online store
        item_item = self._item_item.for_rows(self._history, rows, online)  # scored once: top-N and pairs
        if self.item_item:
            parts.append(item_item.top(self.item_item, exclude_seen=not self.repurchase))
            kinds.append(ITEM_ITEM)
        if self.repurchase:
            own = self._history.recent(rows, self.recent)
            if online is not None:  # the newest purchases come first
                own = np.concatenate([online, own], axis=1)
            parts.append(own)
            kinds.append(REPURCHASE)
        if self.new:
            new = np.full((users, self.new), -1, dtype=np.int64)
            if len(known):
                new[known] = top_new(queries[known], self._vectors, self._new_items, self.new)
            parts.append(new)
            kinds.append(NEW)
        parts.append(np.tile(self._trending, (users, 1)))
        kinds.append(TRENDING)
        ids, src = merge_sources(parts, kinds)  # a duplicate keeps its first source
        cands[:, : ids.shape[1]] = ids
        sources[:, : ids.shape[1]] = src
        valid = cands >= 0
        pair_scores = item_item.pairs(cands)
        if len(known):
            vec = self._vectors[np.maximum(cands, 0)]
            dots = np.einsum("ucd,ud->uc", vec, queries)
            scores = np.where(valid & (rows >= 0)[:, None], dots, 0.0).astype(np.float32)
        return {CANDIDATES: cands, SOURCES: sources, RETRIEVAL_SCORES: scores,
                ITEM_ITEM_SCORES: pair_scores.astype(np.float32)}
