"""Any interactions file (CSV, TSV or parquet) with a column mapping: ``funnel data csv``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from funnel.data import canonical
from funnel.core.errors import DataError
from funnel.core.fsutil import sha256_files


@dataclass(frozen=True)
class TabularSource:
    """Where the columns are. Optional item and user tables join on their key columns."""

    interactions: Path
    user_col: str
    item_col: str
    time_col: str | None = None
    time_unit: str = "s"
    items: Path | None = None
    item_key: str | None = None
    users: Path | None = None
    user_key: str | None = None
    repurchase: bool = False
    drop_duplicates: bool = False
    drop_invalid: bool = False
    name: str | None = None


def _first_line(path: Path) -> int | None:
    """File line of data row 0 (CSV/TSV: after the header), None for parquet (rows are counted)."""
    return None if Path(path).is_dir() or Path(path).suffix.lower() in (".parquet", ".pq") else 2


def _content_files(path: Path) -> list[Path]:
    """The files whose bytes make a source: the file itself, or a parquet folder's files in order."""
    return sorted(f for f in path.rglob("*.parquet") if f.is_file()) if path.is_dir() else [path]


def _rename_key(frame: pd.DataFrame, key: str, target: str, origin: Path) -> pd.DataFrame:
    if key not in frame.columns:
        raise DataError(f"{origin}: column '{key}' is missing (found: {', '.join(map(str, frame.columns))})")
    if target in frame.columns and key != target:
        frame = frame.drop(columns=[target])
    frame = canonical.normalise_ids(frame.rename(columns={key: target}), target, str(origin))
    dup = frame[target].duplicated()
    if dup.any():
        raise DataError(f"{origin}: column '{key}': {int(dup.sum())} duplicate key(s) (first: {frame[target][dup].iloc[0]!r})")
    return frame


def load(src: TabularSource) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Read and validate the files; return canonical interactions, items and users frames."""
    frame = canonical.read_table(src.interactions, "interactions", text_columns=(src.user_col, src.item_col))
    frame = validate_interactions(frame, src, src.interactions, _first_line(src.interactions))
    items = users = None
    if src.items is not None:
        key = src.item_key or src.item_col
        items = validate_side_table(canonical.read_table(src.items, "items", (key,)), key, "item_id", src.items, frame)
    if src.users is not None:
        key = src.user_key or src.user_col
        users = validate_side_table(canonical.read_table(src.users, "users", (key,)), key, "user_id", src.users, frame)
    return frame, items, users


def validate_side_table(table: pd.DataFrame, key: str, target: str, origin, interactions: pd.DataFrame) -> pd.DataFrame:
    """An item or user table keyed like the interactions (unique keys, the same id type)."""
    table = _rename_key(table, key, target, origin)
    if table[target].dtype != interactions[target].dtype:
        table[target] = table[target].astype(interactions[target].dtype)
    return table


class ColumnMapping(Protocol):
    """What validation needs to know of a source (``TabularSource``, ``funnel.data.sql.SqlSource``)."""

    user_col: str
    item_col: str
    time_col: str | None
    time_unit: str
    drop_duplicates: bool
    drop_invalid: bool


def validate_interactions(frame: pd.DataFrame, src: ColumnMapping, origin, line: int | None) -> pd.DataFrame:
    """Columns mapped to the canonical names, ids and times checked (errors name ``origin`` and the
    row: ``line`` is the file line of row 0, None to count rows)."""
    for col in (src.user_col, src.item_col) + ((src.time_col,) if src.time_col else ()):
        if col not in frame.columns:
            raise DataError(f"{origin}: column '{col}' is missing (found: {', '.join(map(str, frame.columns))})")
    if len({src.user_col, src.item_col, src.time_col} - {None}) < 2 + (src.time_col is not None):
        raise DataError(f"{origin}: user, item and time columns must be different columns")
    renames = {src.user_col: "user_id", src.item_col: "item_id"}
    if src.time_col:
        renames[src.time_col] = "timestamp"
    clash = [c for c in ("user_id", "item_id", "timestamp") if c in frame.columns and c not in renames]
    frame = frame.drop(columns=clash).rename(columns=renames)
    frame = frame.reset_index(drop=True)
    bad = canonical.invalid_ids(frame["user_id"]) | canonical.invalid_ids(frame["item_id"])
    if bad.any() and not src.drop_invalid:
        at = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"line {at + line}" if line is not None else f"row {at + 1}"
        raise DataError(f"{origin}: {int(bad.sum()):,} row(s) whose '{src.user_col}' or '{src.item_col}' id is missing "
                        f"(null or blank) or a non-integer number such as 21.5 or 1e3 (first: {where}: "
                        f"{src.user_col}={frame['user_id'].iloc[at]!r}, {src.item_col}={frame['item_id'].iloc[at]!r}); "
                        "fix them or pass --drop-invalid to drop them")
    if bad.any():
        dropped = int(bad.sum())
        frame = frame[~bad.to_numpy()].reset_index(drop=True)
        print(f"{origin}: dropped {dropped:,} row(s) with a missing or invalid user or item id (--drop-invalid)",
              file=sys.stderr)
    frame = canonical.normalise_ids(frame, "user_id", str(origin), first_line=line, label=src.user_col)
    frame = canonical.normalise_ids(frame, "item_id", str(origin), first_line=line, label=src.item_col)
    if src.time_col:
        frame["timestamp"] = canonical.parse_timestamps(frame["timestamp"], str(origin), src.time_col, src.time_unit)
    else:  # no time: keep file order as a sequence (one second apart), so splits still work
        frame["timestamp"] = pd.Timestamp("2000-01-01") + pd.to_timedelta(range(len(frame)), unit="s")
    if src.drop_duplicates:
        frame = frame.drop_duplicates(ignore_index=True)
    else:
        canonical.check_duplicates(frame, str(origin), ["user_id", "item_id", "timestamp"])
    first = ["user_id", "item_id", "timestamp"]
    return frame[first + [c for c in frame.columns if c not in first]]


def build(src: TabularSource, out: Path) -> dict:
    """Validate ``src`` and write the canonical dataset into ``out``."""
    interactions, items, users = load(src)
    items, users = canonical.complete_side_tables(interactions, items, users)
    files = [p for p in (src.interactions, src.items, src.users) if p is not None]
    return canonical.write_dataset(
        out,
        name=src.name or Path(src.interactions).stem,
        interactions=interactions,
        items=items,
        users=users,
        repurchase=src.repurchase,
        source={"kind": "csv", "files": [str(p) for p in files],
                "columns": {"user": src.user_col, "item": src.item_col, "time": src.time_col}},
        source_checksum=sha256_files([f for p in files for f in _content_files(Path(p))]),
    )
