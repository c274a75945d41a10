"""List features (e.g. a film's genres) through the merlin Loader on CPU, without a Python loop per value.

merlin-core 23.08's ``flatten_list_column_values`` flattens a pandas list column with
``pd.Series(itertools.chain(*column))``: one Python object per value, for every batch chunk of every
epoch. On MovieLens-100k (genres on every row) that was most of the Loader's time, and the Loader most of
an epoch's. :func:`flatten` concatenates the rows' arrays instead and gives the same values with the same
dtype; :func:`install` puts it in merlin-core's place, so the Loader's ``pull_apart_list`` uses it.
Anything else (strings, mixed dtypes, nested lists, an all-empty column) still goes through the original.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

NUMERIC_KINDS = "biuf"


def flatten(column: pd.Series, fallback=None) -> pd.Series:
    """Every row's values of a pandas list column, in order, as one Series (merlin-core's result)."""
    rows = [np.asarray(v) for v in column.to_numpy()]
    filled = [a for a in rows if a.size]
    dtypes = {a.dtype for a in filled}
    if not filled or len(dtypes) != 1 or next(iter(dtypes)).kind not in NUMERIC_KINDS or any(a.ndim != 1 for a in filled):
        return (fallback or _chained)(column)
    return pd.Series(np.concatenate(filled))


def _chained(column: pd.Series) -> pd.Series:
    return pd.Series(itertools.chain(*column))


def install() -> None:
    """Make merlin-core flatten pandas list columns with :func:`flatten` (once per process)."""
    from merlin.core import dispatch

    original = dispatch.flatten_list_column_values
    if getattr(original, "_funnel", False):
        return

    def flatten_list_column_values(s):
        return flatten(s, original) if isinstance(s, pd.Series) else original(s)

    flatten_list_column_values._funnel = True  # type: ignore[attr-defined]
    dispatch.flatten_list_column_values = flatten_list_column_values
