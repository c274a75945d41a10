"""Fit the workflow on the feature tables and encode interaction rows by joining encoded tables.

Features describe users and items, not interactions, so the user and item sub-workflows are fitted
on the feature tables of the users and items that have training interactions (normalisation
statistics are over users or items; categorical vocabularies count each value once per training
purchase of the user or item that has it, ``weighted_vocabulary``), and each table is transformed
once. An interaction row's model input is then the encoded row of its
user, of its item and of its context, taken by position: integer work on the rows, no string
columns joined onto millions of rows and no NVTabular pass over them.

Ids and features keep the interaction-weighted meaning: the id vocabularies (and the context's) are
counted over the training rows (``freq_threshold`` on purchases, most frequent first) and handed to Categorify
as fixed vocabularies. ``tests/unit/test_workflow_tables.py`` checks the joined rows against
NVTabular's own ``workflow.transform`` of the joined raw rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from merlin.dag.ops.subgraph import Subgraph
from merlin.io import Dataset

from workflows.io import encode_table


def vocabulary(values: pd.Series, threshold: int = 1) -> pd.Series:
    """The values seen at least ``threshold`` times, most frequent first (ties by value): a Categorify vocab."""
    return vocabulary_of_counts(values.dropna().value_counts(), threshold).rename(values.name)


def vocabulary_of_counts(counts: pd.Series, threshold: int = 1) -> pd.Series:
    """``vocabulary`` from value -> times seen (values seen 0 times are left out)."""
    counts = counts[(counts >= threshold) & (counts > 0)]
    order = np.lexsort((counts.index.to_numpy(), -counts.to_numpy()))
    return pd.Series(counts.index.to_numpy()[order], name=counts.index.name)


def weighted_vocabulary(values: pd.Series, weights: np.ndarray, threshold: int = 1) -> pd.Series:
    """``vocabulary`` of values that each stand for ``weights`` occurrences (lists: each element does).

    A feature table has one row per user or item; weighting each row by its entity's training
    purchases counts a feature value over the purchases, as if the table were joined onto them.
    """
    frame = pd.DataFrame({"value": values.to_numpy(), "weight": np.asarray(weights, dtype=np.int64)})
    sample = values.dropna().head(1)
    if len(sample) and not pd.api.types.is_scalar(sample.iloc[0]):  # multi-hot lists
        frame = frame.explode("value")
    counts = frame.dropna().groupby("value", sort=False)["weight"].sum()
    counts = counts[counts >= threshold]
    order = np.lexsort((counts.index.to_numpy(), -counts.to_numpy()))
    return pd.Series(counts.index.to_numpy()[order], name=values.name).infer_objects()


def _subgraph_ops(workflow) -> dict[str, Subgraph]:
    from merlin.dag.node import iter_nodes

    ops = {}
    for node in iter_nodes([workflow.output_node]):
        if isinstance(node.op, Subgraph):
            ops[node.op.name] = node.op
    return ops


def fit_on_tables(workflow, tables: dict[str, pd.DataFrame], sample: pd.DataFrame, device: str) -> None:
    """Fit each named sub-workflow on its table, then the rest of the graph on ``sample``.

    ``tables``: subgraph name -> the rows to fit it on (one per user or item). ``sample``: a few
    rows with every input column of the workflow (the dtypes the transformed output will have);
    sub-workflows not in ``tables`` (the context, whose vocabulary is given) are fitted on it.
    """
    from merlin.dag.executors import DaskExecutor

    ops = _subgraph_ops(workflow)
    for name, table in tables.items():
        op = ops[name]
        op.fit(None, Dataset(table.reset_index(drop=True), npartitions=1, cpu=device == "cpu"))
        op.fitted = True
    DaskExecutor().fit(Dataset(sample.reset_index(drop=True), npartitions=1, cpu=device == "cpu"),
                       workflow.graph, refit=False)


def encoded_tables(workflow, names_keys: dict[str, str], tables: dict[str, pd.DataFrame],
                   lacking: dict[str, np.ndarray], device: str) -> dict[str, pd.DataFrame]:
    """Each sub-workflow applied to its whole table, plus rows for ``lacking[name]``: ids of the
    interaction rows that the table lacks (in order of first appearance).

    A row whose user (or item, or context value) is missing from the table gets what a left join
    would have given NVTabular: the id with every other input null.
    """
    out = {}
    for name, key in names_keys.items():
        table = tables[name]
        missing = np.asarray(lacking.get(name, []))
        if len(missing):
            extra = pd.DataFrame({key: missing.astype(table[key].dtype)})
            table = pd.concat([table, extra], ignore_index=True)
        sub = workflow.get_subworkflow(name)
        out[name] = encode_table(sub, table[sub.input_schema.column_names], key, device)
    return out


def lacking_ids(table_ids: pd.Series, row_ids: np.ndarray) -> np.ndarray:
    """The distinct ``row_ids`` (first appearance order) that ``table_ids`` lacks."""
    distinct = pd.unique(row_ids)
    return distinct[pd.Index(table_ids).get_indexer(distinct) < 0]


def row_positions(rows: pd.DataFrame, indexes: dict[str, pd.Index], keys: dict[str, str]) -> dict[str, np.ndarray]:
    """For each encoded table, the position of every row's key in it: ``indexes[name]`` is the
    table's ``{key}_raw`` column as an index (built once, reused by every part)."""
    out = {}
    for name, key in keys.items():
        position = indexes[name].get_indexer(rows[key])
        if (position < 0).any():  # encoded_tables added every id of the rows
            raise ValueError(f"{key} {rows[key].to_numpy()[position < 0][0]!r} has no encoded row")
        out[name] = position.astype(np.int32)
    return out


def join_rows(positions: dict[str, np.ndarray], passthrough: dict[str, np.ndarray],
              encoded: dict[str, pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The workflow's output for some rows: each encoded table's row at the rows' ``positions``,
    plus the ``passthrough`` columns, in the order of ``columns``."""
    pieces = dict(passthrough)
    for name, position in positions.items():
        table = encoded[name]
        for col in table.columns:
            if col in columns and col not in pieces:
                pieces[col] = table[col].to_numpy()[position]
    return pd.DataFrame({col: pieces[col] for col in columns})
