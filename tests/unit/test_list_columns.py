"""models.list_columns: the merlin Loader's list-column flattening, against merlin-core's own."""

import itertools

import numpy as np
import pandas as pd
import pytest


def chained(column: pd.Series) -> pd.Series:
    """merlin-core 23.08's pandas path, written out: one Python object per value."""
    return pd.Series(itertools.chain(*column))


CASES = {
    "int32 arrays with an empty row": pd.Series([np.array([4, 2], np.int32), np.array([], np.int32), np.array([7], np.int32)]),
    "int64 arrays": pd.Series([np.arange(3), np.arange(5, 7)]),
    "python lists": pd.Series([[1, 2], [], [3]]),
    "floats": pd.Series([np.array([0.5, 1.5]), np.array([2.25])]),
    "every row empty": pd.Series([np.array([], np.int32), np.array([], np.int32)]),
    "no rows": pd.Series([], dtype=object),
    "strings (left to merlin)": pd.Series([["a", "b"], ["c"]]),
    "mixed dtypes (left to merlin)": pd.Series([np.array([1], np.int32), np.array([2.5])]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flatten_gives_merlins_values_and_dtype(name):
    from models.list_columns import flatten

    column = CASES[name]
    got, expected = flatten(column), chained(column)
    assert got.dtype == expected.dtype, name
    assert got.tolist() == expected.tolist(), name


def test_random_list_column_and_the_installed_loader_path():
    """A random genres-like column: the same values; and merlin's pull_apart_list, which the Loader
    calls, uses the installed function and returns the same values and offsets as merlin's own."""
    from merlin.core import dispatch

    from models import list_columns

    rng = np.random.default_rng(0)
    column = pd.Series([rng.integers(0, 20, rng.integers(0, 5)).astype(np.int32) for _ in range(3000)])
    assert list_columns.flatten(column).tolist() == chained(column).tolist()
    list_columns.install()
    list_columns.install()  # twice: still one layer over merlin's function
    assert dispatch.flatten_list_column_values._funnel
    values, offsets = dispatch.pull_apart_list(column)
    expected = np.concatenate([[0], np.cumsum([len(v) for v in column])])
    assert values.tolist() == chained(column).tolist() and values.dtype == np.int32
    assert offsets.tolist() == expected.tolist()
    assert dispatch.flatten_list_column_values(np.arange(6).reshape(2, 3)).tolist() == list(range(6))  # numpy: merlin's
