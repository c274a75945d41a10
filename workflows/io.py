"""Workflow I/O: the fitted workflow of a preprocessing output, transformed parquet parts, encoded tables."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import nvtabular as nvt
from merlin.io import Dataset

from funnel.core.artifacts import read_preprocess_manifest
from funnel.core.errors import FunnelError
from funnel.core.fsutil import sha256_files
from funnel.data.canonical import read_dataset
from workflows import ITEM_SUBGRAPH, USER_SUBGRAPH
from workflows import history as hist

# groups of distinct (user, item) pairs counted one at a time when a history comes in parts
PAIR_GROUPS = 16


def encode_table(sub_workflow, table: pd.DataFrame, key: str, device: str) -> pd.DataFrame:
    """Apply a fitted sub-workflow to a whole feature table, keeping the raw id beside the codes."""
    ds = Dataset(table, npartitions=1, cpu=device == "cpu")
    encoded = sub_workflow.transform(ds).to_ddf().compute()
    if hasattr(encoded, "to_pandas"):
        encoded = encoded.to_pandas()
    encoded = encoded.reset_index(drop=True)
    encoded.insert(0, f"{key}_raw", table[key].to_numpy())
    return encoded



def parquet_parts(path: str | Path) -> list[Path]:
    """The part_N.parquet files of a transformed output directory, in part order."""
    parts = sorted(Path(path).glob("part_*.parquet"), key=lambda p: int(p.stem.split("_")[-1]))
    if not parts:
        raise FunnelError(f"{path}: no part_*.parquet files")
    return parts


def read_parquet_dir(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a transformed output directory (part_N.parquet files, in part order) into pandas."""
    return pd.concat([pd.read_parquet(p, columns=columns) for p in parquet_parts(path)], ignore_index=True)


def load_workflow(pre: str | Path):
    """Load the fitted workflow of a preprocessing run, refusing a pickle that is not ours.

    ``workflow.pkl`` is a cloudpickle; it is only loaded when its checksum matches the one
    recorded in ``preprocess.json`` at save time.
    """

    pre = Path(pre)
    manifest = read_preprocess_manifest(pre)
    actual = sha256_files([pre / "workflow" / "workflow.pkl"])
    if actual != manifest.get("workflow_checksum"):
        raise FunnelError(f"{pre}/workflow/workflow.pkl: checksum differs from preprocess.json; refusing to load")
    return nvt.Workflow.load(str(pre / "workflow"))


def features_as_of(pre: Path, history: pd.DataFrame | Iterable[pd.DataFrame],
                   cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Encoded user and item feature tables computed from ``history`` (a frame, or frames passed a
    part at a time) as of ``cutoff``.

    Uses the saved workflow's sub-workflows, so the encoding is exactly the one serving uses.
    """
    ds = read_dataset(read_preprocess_manifest(pre)["dataset"]["path"])
    workflow = load_workflow(pre)
    with tempfile.TemporaryDirectory(prefix="funnel-pairs-") as scratch:  # distinct (user, item) pairs wait on disk
        stats = hist.HistoryStats(ds.users(), ds.items(), cutoff, buckets=PAIR_GROUPS, scratch=Path(scratch))
        for part in [history] if isinstance(history, pd.DataFrame) else history:
            stats.add(part)
        users, items = stats.tables()
    user_sub, item_sub = workflow.get_subworkflow(USER_SUBGRAPH), workflow.get_subworkflow(ITEM_SUBGRAPH)
    users = encode_table(user_sub, users[user_sub.input_schema.column_names], "user_id", "cpu")
    items = encode_table(item_sub, items[item_sub.input_schema.column_names], "item_id", "cpu")
    return users, items
