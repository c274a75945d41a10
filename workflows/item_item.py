"""Item-to-item candidate source ("bought with what you bought"): EASE weights, pruned and sparse.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): with the binary
user-item matrix ``X`` of the training period, ``P = (X'X + lambda I)^-1`` and ``B = -P / diag(P)``
with a zero diagonal; a user's score for item ``i`` is ``sum_j x_uj B_ji``. Served, ``x_u`` may
weigh the user's items by how recently they were bought (``recency``: the n-th latest weighs
``exp(-n / recency)``; the fit stays on the binary matrix): on MovieLens-100k's last baskets that
order says more than the whole history does. The Gram matrix is dense in the number of items, so the fit keeps the ``max_items`` most-bought items (the rest get
no item-item score), and each item keeps its ``neighbours`` largest weights: the served artifact is
a CSR matrix of at most ``items x neighbours`` entries (``item_item.npz``, no pickles).

EASE is blind to order: buying a then b and buying b then a fit the same weights. ``sequence`` > 0
adds a "bought next" term before the pruning (:func:`transitions`: how often b followed a within a
few of a user's purchases, damped by both items' buyers), scaled to the EASE weights' total and
weighted by ``sequence``: ``weights = B + sequence * |B| / |T| * T``, in the spirit of the
first-order Markov term of FPMC (Rendle et al., WWW 2010) and session kNN's sequence weighting. With
recency weighting, a user's latest items lead: what people watched after them.

One implementation for ranker training (``models.ranking_data``) and the served graph
(``ensemble.ops.retrieve``): the same fit, the same user scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from workflows.purchases import PurchaseHistory

# dense Gram matrix: 10k items = 0.8 GB in float64 and ~30 s per fit on 2 cores; the cost grows with
# the cube (20k: 3.2 GB, ~4 min per fit, and `funnel train ranking` fits once per lambda tried)
MAX_ITEMS = 10_000
NEIGHBOURS = 200
SEQUENCE_WINDOW = 10  # b counts as bought after a when at most this many of the user's items apart
SEQUENCE_DECAY = 0.8  # ... d items apart weighing SEQUENCE_DECAY ** (d - 1)
BLOCK_ROWS = 1024  # rows of the dense items x items matrices worked on at once
CHUNK_CELLS = 1 << 24  # users x items scored densely at once (64 MiB of float32)


def gram_matrix(x: sp.spmatrix) -> np.ndarray:
    """The dense float64 Gram matrix ``X'X`` of a user-item matrix (the same for every lambda)."""
    return np.asarray((x.T @ x).toarray(), dtype=np.float64)


def ease_weights(x: sp.spmatrix, lam: float) -> np.ndarray:
    """EASE's dense item-item weights (zero diagonal) for a binary user-item matrix ``x``."""
    return ease_from_gram(gram_matrix(x), lam, overwrite=True)


def ease_from_gram(gram: np.ndarray, lam: float, overwrite: bool = False) -> np.ndarray:
    """EASE's weights from the Gram matrix (``overwrite``: work in ``gram`` itself instead of a copy)."""
    from scipy.linalg import lapack

    gram = gram if overwrite else np.ascontiguousarray(gram).copy()
    gram[np.diag_indices_from(gram)] += lam
    # the inverse of the (positive definite) Gram matrix by Cholesky: ~1.6x faster than np.linalg.inv.
    # LAPACK is handed the Fortran-ordered view of the (symmetric) matrix, so it works in place: given
    # the C-ordered array, scipy copies it first (one more items x items matrix: 800 MB at 10k items)
    factor, info = lapack.dpotrf(gram.T, lower=False, overwrite_a=True)
    if info == 0:
        upper, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:  # not positive definite (lam <= 0 on a singular Gram)
        raise np.linalg.LinAlgError(f"EASE: the Gram matrix + {lam} I is not positive definite (lapack info {info})")
    # in place, a block of rows at a time: the inverse's lower triangle from its upper one, then
    # B = -P / diag(P) (whole-matrix expressions would hold three more items x items copies)
    n = len(upper)
    for start in range(0, n, BLOCK_ROWS):
        end = min(start + BLOCK_ROWS, n)
        upper[start:end, :start] = upper[:start, start:end].T
        block = upper[start:end, start:end]
        block[np.tril_indices(end - start, -1)] = block.T[np.tril_indices(end - start, -1)]
    upper = upper.T  # P is symmetric: the C-ordered view of the same buffer, for the row blocks below
    diag = np.diag(upper).copy()
    for start in range(0, n, BLOCK_ROWS):
        upper[start:start + BLOCK_ROWS] /= -diag[None, :]
    np.fill_diagonal(upper, 0.0)
    return upper


def transitions(history: PurchaseHistory, kept: np.ndarray, window: int = SEQUENCE_WINDOW,
                decay: float = SEQUENCE_DECAY) -> sp.coo_matrix:
    """``(len(kept), len(kept))`` "bought next" weights over the item rows ``kept``.

    Each user's distinct items in the order of their latest purchase (``history``'s entries, newest
    first): for every pair ``d <= window`` items apart, the older ``a`` and the newer ``b``, ``t[a, b]``
    gains ``decay ** (d - 1)``; items outside ``kept`` are skipped but keep their places. Then
    ``t[a, b] / sqrt((n_a + 1) (n_b + 1))`` with ``n`` the items' buyers, so the items everybody
    buys do not lead every row. Summed duplicates, no diagonal (a user's entries are distinct)."""
    column = np.full(history.n_items, -1, dtype=np.int32)  # int32 throughout: 25M entries at H&M size
    column[kept] = np.arange(len(kept), dtype=np.int32)
    items = column[history.items]
    users = np.repeat(np.arange(len(history.offsets) - 1, dtype=np.int32), np.diff(history.offsets))
    n = len(kept)
    # float32 weights (8 B an entry with the int32 indices): at H&M size tens of millions of pairs
    out = sp.csr_matrix((n, n), dtype=np.float32)
    for d in range(1, window + 1):  # entry j + d was bought d items before entry j
        ok = (users[d:] == users[:-d]) & (items[d:] >= 0) & (items[:-d] >= 0)
        out = out + sp.csr_matrix((np.full(int(ok.sum()), decay ** (d - 1), dtype=np.float32),
                                   (items[d:][ok], items[:-d][ok])), shape=(n, n))
        del ok
    damp = (1.0 / np.sqrt(np.bincount(items[items >= 0], minlength=n) + 1.0)).astype(np.float32)
    out = out.tocoo()
    out.data *= damp[out.row] * damp[out.col]
    return out


def prune_rows(dense: np.ndarray, keep: int) -> sp.csr_matrix:
    """Each row's ``keep`` largest positive entries as a CSR matrix (the rest dropped); a block of
    rows at a time, so the argpartition's positions never span the whole matrix."""
    keep = min(keep, dense.shape[1])
    parts_rows, parts_cols, parts_vals = [], [], []
    for start in range(0, len(dense), BLOCK_ROWS):
        block = dense[start:start + BLOCK_ROWS]
        top = np.argpartition(-block, keep - 1, axis=1)[:, :keep] if keep else np.zeros((len(block), 0), dtype=np.int64)
        vals = np.take_along_axis(block, top, axis=1).reshape(-1)
        ok = vals > 0
        parts_rows.append(np.repeat(np.arange(start, start + len(block)), top.shape[1])[ok])
        parts_cols.append(top.reshape(-1)[ok])
        parts_vals.append(vals[ok].astype(np.float32))
    if not parts_rows:
        return sp.csr_matrix(dense.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(parts_vals), (np.concatenate(parts_rows), np.concatenate(parts_cols))),
                         shape=dense.shape)


def user_matrix(history: PurchaseHistory, rows: np.ndarray, extra: np.ndarray | None = None,
                recency: float = 0.0) -> sp.csr_matrix:
    """``(len(rows), n_items)`` matrix of each user row's distinct items (unknown rows: empty).

    ``extra`` (``(users, m)`` item rows, ``-1``-padded, newest first) adds items bought since the
    history was built. ``recency`` 0: every item weighs 1 (binary). ``recency`` > 0: a user's ``n``-th
    latest distinct item (``n`` from 0; ``extra``'s before the history's) weighs ``exp(-n / recency)``,
    so what was bought last says most about what comes next.
    """
    indptr, pos = history.entries_of(rows)
    items = history.items[pos] if len(pos) else np.zeros(0, dtype=np.int32)
    lengths = np.diff(indptr)
    user = np.repeat(np.arange(len(indptr) - 1), lengths)
    rank = np.arange(len(items)) - np.repeat(indptr[:-1], lengths)  # entries are most recent first
    if extra is None or not extra.size:  # a user's history entries are distinct items: CSR as it stands
        x = sp.csr_matrix((_weights(rank, recency), items.astype(np.int64), indptr),
                          shape=(len(indptr) - 1, history.n_items))
        x.sort_indices()
        return x
    valid = extra >= 0
    u, s = np.nonzero(valid)
    extra_rank = (np.cumsum(valid, axis=1) - 1)[u, s]
    rank = rank + valid.sum(axis=1)[user]  # the history's items come after the newer ones
    user = np.concatenate([u, user])
    items = np.concatenate([extra[u, s], items]).astype(np.int64)
    rank = np.concatenate([extra_rank, rank])
    order = np.lexsort((rank, items, user))  # an item bought again since: its newest rank counts
    first = np.ones(len(order), dtype=bool)
    first[1:] = (user[order][1:] != user[order][:-1]) | (items[order][1:] != items[order][:-1])
    keep = order[first]
    keep = keep[np.lexsort((rank[keep], user[keep]))]  # distinct items, newest first: ranked again
    counts = np.bincount(user[keep], minlength=len(rows))
    rank = np.arange(len(keep)) - np.repeat(np.cumsum(counts) - counts, counts)
    x = sp.csr_matrix((_weights(rank, recency), (user[keep], items[keep])), shape=(len(rows), history.n_items))
    x.sort_indices()
    return x


def _weights(rank: np.ndarray, recency: float) -> np.ndarray:
    if recency <= 0:
        return np.ones(len(rank), np.float32)
    return np.exp(-np.asarray(rank, np.float64) / recency).astype(np.float32)


@dataclass
class ItemItem:
    """Pruned item-item weights over the item table's rows (``weights[j, i]``: buying j says i)."""

    weights: sp.csr_matrix  # (n_items, n_items) float32
    lam: float
    recency: float = 0.0  # users' items weigh exp(-n / recency) by recency rank n (0: all 1; see user_matrix)
    sequence: float = 0.0  # weight of the "bought next" term in the weights (0: EASE alone; see transitions)

    @classmethod
    def fit(cls, history: PurchaseHistory, lam: float, neighbours: int = NEIGHBOURS,
            max_items: int = MAX_ITEMS, recency: float = 0.0, sequence: float = 0.0) -> "ItemItem":
        """EASE on every user's distinct items in ``history``, over its ``max_items`` most-bought items,
        plus ``sequence`` times the scaled "bought next" term; users scored with ``recency`` weighting
        (see :func:`user_matrix`)."""
        model = next(cls.fit_each(history, [lam], neighbours, max_items, [sequence]))
        return replace(model, recency=float(recency))

    @classmethod
    def fit_each(cls, history: PurchaseHistory, lams: list[float], neighbours: int = NEIGHBOURS,
                 max_items: int = MAX_ITEMS, sequences: list[float] = (0.0,)) -> Iterator["ItemItem"]:
        """:meth:`fit` for each lambda and, within it, each sequence weight in turn, the Gram matrix
        computed once (at H&M size its sparse product over 25M purchases took 15 s of each fit) and
        the transitions once."""
        x = user_matrix(history, np.arange(len(history.offsets) - 1)).tocsc()
        buyers = np.diff(x.indptr)
        kept = np.sort(np.argsort(-buyers, kind="stable")[:max_items])
        kept = kept[buyers[kept] > 0]
        if len(kept) < 2:
            yield from (replace(cls.empty(history.n_items), sequence=float(s)) for _ in lams for s in sequences)
            return
        gram = gram_matrix(x[:, kept])
        del x
        steps = transitions(history, kept) if any(s > 0 for s in sequences) else None
        for lam in lams:
            dense = ease_from_gram(gram, lam, overwrite=len(lams) == 1)
            scale = float(np.abs(dense).sum() / steps.data.sum(dtype=np.float64)) if steps is not None and steps.nnz else 0.0
            added = 0.0
            for sequence in sequences:
                if scale and sequence != added:  # in place: B + sequence * scale * T (entries are distinct)
                    dense[steps.row, steps.col] += (sequence - added) * scale * steps.data
                    added = sequence
                pruned = prune_rows(dense, neighbours).tocoo()
                full = sp.csr_matrix((pruned.data, (kept[pruned.row], kept[pruned.col])),
                                     shape=(history.n_items, history.n_items), dtype=np.float32)
                yield cls(full, float(lam), sequence=float(sequence))
            del dense

    @classmethod
    def empty(cls, n_items: int) -> "ItemItem":
        """No weights: every score 0, no item-item candidates."""
        return cls(sp.csr_matrix((n_items, n_items), dtype=np.float32), 0.0)

    @property
    def n_items(self) -> int:
        return self.weights.shape[0]

    def sparse_scores(self, history: PurchaseHistory, rows: np.ndarray, extra: np.ndarray | None = None) -> sp.csr_matrix:
        """``(len(rows), n_items)`` item-item scores as a CSR matrix with sorted indices: only the items
        some item of the user points to have an entry (the weights are pruned), so nothing is dense."""
        out = sp.csr_matrix(user_matrix(history, rows, extra, self.recency) @ self.weights, dtype=np.float32)
        out.sum_duplicates()
        out.sort_indices()
        return out

    def scores(self, history: PurchaseHistory, rows: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Dense ``(len(rows), n_items)`` float32 item-item scores of each user row (0 for unknown users)."""
        return np.asarray(self.sparse_scores(history, rows, extra).toarray(), dtype=np.float32)

    def _chunks(self, rows: np.ndarray):
        step = max(1, CHUNK_CELLS // max(self.n_items, 1))
        return [slice(i, i + step) for i in range(0, len(rows), step)]

    def for_rows(self, history: PurchaseHistory, rows: np.ndarray, extra: np.ndarray | None = None) -> "RowScores":
        """The scores of ``rows``, computed once (a bounded number of users at a time) for ``top`` and
        ``pairs`` both: the served graph asks for the top-N and then for the merged candidates' scores."""
        return RowScores(self, history, np.asarray(rows), extra)

    def top(self, history: PurchaseHistory, rows: np.ndarray, n: int, extra: np.ndarray | None = None,
            exclude_seen: bool = False) -> np.ndarray:
        """``(len(rows), n)`` best item rows by item-item score (positive scores only, ties by item row,
        ``-1``-padded), scored a bounded number of users at a time; ``exclude_seen`` skips the users' own items."""
        return self.for_rows(history, rows, extra).top(n, exclude_seen)

    def pair_scores(self, history: PurchaseHistory, rows: np.ndarray, items: np.ndarray,
                    extra: np.ndarray | None = None) -> np.ndarray:
        """Score of each ``(users, width)`` item row for its user row (0 where the item is ``-1``)."""
        return self.for_rows(history, rows, extra).pairs(items)

    def save(self, path: Path) -> None:
        w = self.weights
        np.savez(path, indptr=w.indptr, indices=w.indices, data=w.data, n_items=np.int64(w.shape[0]),
                 lam=np.float64(self.lam), recency=np.float64(self.recency), sequence=np.float64(self.sequence))

    @classmethod
    def load(cls, path: Path) -> "ItemItem":
        with np.load(path, allow_pickle=False) as f:
            n = int(f["n_items"])
            recency = float(f["recency"]) if "recency" in f.files else 0.0  # exports before recency weighting
            sequence = float(f["sequence"]) if "sequence" in f.files else 0.0  # exports before the sequence term
            return cls(sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=(n, n)), float(f["lam"]), recency,
                       sequence)


class RowScores:
    """Item-item scores of some user rows, chunked by ``CHUNK_CELLS`` users x items; a single chunk (a
    served request) is scored once and kept for every later question."""

    def __init__(self, model: ItemItem, history: PurchaseHistory, rows: np.ndarray, extra: np.ndarray | None):
        self.model, self.history, self.rows, self.extra = model, history, rows, extra
        self.parts = model._chunks(rows) if model.weights.nnz else []
        self._kept: sp.csr_matrix | None = None

    def _scores(self, part: slice) -> sp.csr_matrix:
        if len(self.parts) == 1 and self._kept is not None:
            return self._kept
        out = self.model.sparse_scores(self.history, self.rows[part], None if self.extra is None else self.extra[part])
        if len(self.parts) == 1:
            self._kept = out
        return out

    def top(self, n: int, exclude_seen: bool = False) -> np.ndarray:
        out = np.full((len(self.rows), min(n, self.model.n_items)), -1, dtype=np.int64)
        for part in self.parts:
            scores = self._scores(part).copy()
            scores.data[scores.data < 0] = 0.0  # positive scores only
            if exclude_seen:
                own = user_matrix(self.history, self.rows[part], None if self.extra is None else self.extra[part])
                scores = scores - scores.multiply(own > 0)
            scores.eliminate_zeros()
            scores.sort_indices()
            out[part] = sparse_top(scores, out.shape[1])
        return out

    def pairs(self, items: np.ndarray) -> np.ndarray:
        out = np.zeros(items.shape, dtype=np.float32)
        for part in self.parts:
            scores = self._scores(part)
            keys = np.repeat(np.arange(scores.shape[0], dtype=np.int64), np.diff(scores.indptr)) * self.model.n_items
            keys += scores.indices  # row-major, sorted within rows: ascending
            wanted = np.arange(scores.shape[0], dtype=np.int64)[:, None] * self.model.n_items + items[part]
            if not len(keys):
                continue
            pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            hit = (keys[pos] == wanted) & (items[part] >= 0)
            out[part] = np.where(hit, scores.data[pos], 0.0)
        return out


def sparse_top(scores: sp.csr_matrix, n: int) -> np.ndarray:
    """``(rows, n)`` columns of each row's ``n`` largest stored entries, best first, ties by column
    (``scores`` with sorted indices), ``-1``-padded. Row by row: a partial sort of each user's entries."""
    out = np.full((scores.shape[0], n), -1, dtype=np.int64)
    indptr, data, indices = scores.indptr, scores.data, scores.indices
    for r in range(scores.shape[0]):
        vals, cols = data[indptr[r]:indptr[r + 1]], indices[indptr[r]:indptr[r + 1]]
        if len(vals) > n > 0:  # keep the n largest; among values equal to the n-th, the lowest columns
            nth = np.partition(vals, len(vals) - n)[len(vals) - n]
            keep = vals > nth
            keep[np.flatnonzero(vals == nth)[: n - int(keep.sum())]] = True
            vals, cols = vals[keep], cols[keep]
        order = np.lexsort((cols, -vals))[:n]
        out[r, : len(order)] = cols[order]
    return out
