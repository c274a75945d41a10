"""The canonical dataset directory every source writes and every later stage reads.

Layout::

    DIR/interactions.parquet  user_id, item_id, timestamp [, price, channel, order_id, quantity]
    DIR/items.parquet         item_id + item features [, in_stock]
    DIR/users.parquet         user_id + user features
    DIR/stock.parquet         optional stock history: item_id, timestamp, in_stock (one row per change)
    DIR/dataset.json          name, row counts, id types, repurchase, source checksum, ...

``items.in_stock`` is the stock at the end of the data (what production serves with); the stock
history answers "what was on sale at time t" (what an evaluation as of a cutoff may know).

Raw ids are kept as they came: H&M customer ids are strings, article ids integers.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from funnel.core.errors import DataError
from funnel.core.fsutil import sha256_files

FORMAT_VERSION = 1
INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
STOCK = "stock.parquet"
META = "dataset.json"
REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True)
class Dataset:
    """A canonical dataset directory and its metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def repurchase(self) -> bool:
        """Whether buying the same item again is normal in this domain."""
        return bool(self.meta["repurchase"])

    def interactions(self, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.path / INTERACTIONS, columns=columns)

    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / ITEMS)

    def users(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / USERS)

    @property
    def has_stock_history(self) -> bool:
        return (self.path / STOCK).exists()

    @cached_property
    def stock_changes(self) -> pd.DataFrame | None:
        """The stock history (``item_id``, ``timestamp``, ``in_stock``), read once per Dataset; None
        without one. Callers filter it, never change it in place."""
        return pd.read_parquet(self.path / STOCK) if self.has_stock_history else None

    def stock_at(self, when: pd.Timestamp) -> pd.DataFrame | None:
        """``item_id``, ``in_stock`` as of ``when``: each item's latest stock change at or before it.

        Items with no change by then count as in stock. None when the dataset has no stock history.
        """
        changes = self.stock_changes
        if changes is None:
            return None
        known = changes[changes["timestamp"] <= pd.Timestamp(when)].sort_values("timestamp", kind="stable")
        latest = known.drop_duplicates("item_id", keep="last")
        return latest[["item_id", "in_stock"]].astype({"in_stock": bool}).reset_index(drop=True)

    def in_stock_at(self, item_ids: Any, when: pd.Timestamp) -> np.ndarray | None:
        """One flag per id of ``item_ids``: on sale as of ``when`` (:meth:`stock_at`; items with no
        change by then count as in stock). None when the dataset has no stock history."""
        latest = self.stock_at(when)
        if latest is None:
            return None
        flags = pd.Series(np.asarray(item_ids)).map(latest.set_index("item_id")["in_stock"])
        return flags.fillna(True).to_numpy(dtype=bool)

    def days_on_sale_at(self, item_ids: Any, when: pd.Timestamp) -> np.ndarray | None:
        """Days from each id's latest change to in stock (at or before ``when``) to ``when``; NaN where
        the history has none (on sale since before it, or never). None without a stock history."""
        changes = self.stock_changes
        if changes is None:
            return None
        came = changes[changes["in_stock"].astype(bool) & (changes["timestamp"] <= pd.Timestamp(when))]
        since = pd.Series(np.asarray(item_ids)).map(came.groupby("item_id")["timestamp"].max())
        return ((pd.Timestamp(when) - since) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)


def read_dataset(path: str | Path) -> Dataset:
    """Open a canonical dataset directory, with a clear error when it is not one."""
    path = Path(path)
    meta_path = path / META
    if not path.is_dir():
        raise DataError(f"{path}: no such dataset directory (create one with `funnel data ...`)")
    for name in (INTERACTIONS, ITEMS, USERS, META):
        if not (path / name).exists():
            raise DataError(f"{path}: not a funnel dataset, {name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return Dataset(path=path, meta=meta)


def id_type(series: pd.Series) -> str:
    """Name the raw id type stored in dataset.json: 'int64' or 'string'."""
    return "int64" if pd.api.types.is_integer_dtype(series.dtype) else "string"


NUMBER_NOT_INTEGER = r"^\s*[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+)\s*$"  # 21.5, 1e3, 7.


def invalid_ids(values: pd.Series) -> pd.Series:
    """Which ids are unusable: missing, blank, or written as a non-integer number (``21.5``,
    ``1e3``: a spreadsheet's rendering of an id, which would silently become a different id)."""
    bad = values.isna()
    if pd.api.types.is_float_dtype(values.dtype):
        return bad | (np.mod(values.fillna(0).to_numpy(), 1) != 0)
    if pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
        text = values.astype(str)
        return bad | text.str.strip().eq("") | text.str.match(NUMBER_NOT_INTEGER)
    return bad


def normalise_ids(frame: pd.DataFrame, column: str, origin: str, drop_invalid: bool = False,
                  first_line: int | None = None, label: str | None = None) -> pd.DataFrame:
    """Check an id column and normalise it: integers stay int64, anything else is text.

    Ids are integers when every id is one written without zero padding (float columns of whole
    numbers, as pandas reads integers with gaps, become int64); otherwise every id is kept as
    its text (surrounding blanks removed), so ``0108775015`` stays that string.
    Missing or blank ids and ids written as non-integer numbers (``21.5``, ``1e3``) are an
    error naming how many and the first (``first_line``: the file line of data row 0, for CSV;
    else rows are counted from 1), unless ``drop_invalid``, which drops those rows (the caller
    reports how many: compare lengths). ``origin`` names the file in error messages.
    """
    if column not in frame.columns:
        raise DataError(f"{origin}: column '{column}' is missing (found: {', '.join(map(str, frame.columns))})")
    values = frame[column]
    if values.isna().all():
        raise DataError(f"{origin}: column '{column}' has only null ids")
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"{origin}: column '{column}' is boolean; ids must be integers or strings")
    bad = invalid_ids(values)
    if bad.any() and not drop_invalid:
        at = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"line {at + first_line}" if first_line is not None else f"row {at + 1}"
        shown = values.iloc[at]
        raise DataError(f"{origin}: column '{label or column}': {int(bad.sum())} row(s) with a missing or invalid id "
                        f"(first: {where}, value {shown!r}); fix them or pass --drop-invalid to drop them")
    if bad.any():
        frame = frame[~bad.to_numpy()]
        values = frame[column]
    if pd.api.types.is_float_dtype(values.dtype):
        values = values.astype("int64")
    elif not pd.api.types.is_integer_dtype(values.dtype):
        values = values.astype(str).str.strip()
        if values.str.fullmatch(r"[+-]?(?:0|[1-9]\d{0,17})").all():  # all integers, no zero padding
            values = values.astype("int64")
    elif values.dtype != np.int64:
        values = values.astype("int64")
    frame = frame.copy()
    frame[column] = values
    return frame


def parse_timestamps(values: pd.Series, origin: str, column: str, unit: str | None = None) -> pd.Series:
    """Parse a time column (unix seconds, or date/datetime strings) to datetime64[ns]."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = pd.to_datetime(values)
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        parsed = pd.to_datetime(values, unit=unit or "s", errors="coerce")
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True).dt.tz_localize(None)
    bad = parsed.isna() & values.notna()
    if bad.any():
        first = values[bad].iloc[0]
        raise DataError(
            f"{origin}: column '{column}': {int(bad.sum())} value(s) are not parseable timestamps (first: {first!r})"
        )
    if parsed.isna().any():
        raise DataError(f"{origin}: column '{column}': {int(parsed.isna().sum())} timestamp(s) are missing")
    return parsed.astype("datetime64[ns]")


def check_duplicates(frame: pd.DataFrame, origin: str, keys: list[str]) -> None:
    """Refuse exact duplicate interactions (same user, item and time and all other columns)."""
    dup = frame.duplicated(keep="first")
    if dup.any():
        row = frame[dup].iloc[0]
        shown = ", ".join(f"{k}={row[k]!r}" for k in keys)
        raise DataError(
            f"{origin}: {int(dup.sum())} duplicate row(s) in columns {', '.join(frame.columns)} "
            f"(first: {shown}); remove them or pass --drop-duplicates"
        )


def write_dataset(
    out: Path,
    *,
    name: str,
    interactions: pd.DataFrame | None,
    items: pd.DataFrame,
    users: pd.DataFrame,
    repurchase: bool,
    source: dict[str, Any],
    source_checksum: str,
    extra: dict[str, Any] | None = None,
    stock: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write the canonical files into ``out`` (a temporary directory) and return the metadata.

    ``interactions`` may be None when the caller already streamed ``interactions.parquet``
    into ``out`` itself; the summary is then read back from the file's metadata. ``stock`` is
    the optional stock history (item_id, timestamp, in_stock).
    """
    if interactions is not None:
        interactions.to_parquet(out / INTERACTIONS, index=False)
    items.to_parquet(out / ITEMS, index=False)
    users.to_parquet(out / USERS, index=False)
    if stock is not None:
        missing = [c for c in ("item_id", "timestamp", "in_stock") if c not in stock.columns]
        if missing:
            raise DataError(f"stock history: column(s) {', '.join(missing)} missing")
        stock.to_parquet(out / STOCK, index=False)
    meta = summarise(out, name=name, items=items, users=users, repurchase=repurchase,
                     source=source, source_checksum=source_checksum, extra=extra)
    (out / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def summarise(
    out: Path,
    *,
    name: str,
    items: pd.DataFrame,
    users: pd.DataFrame,
    repurchase: bool,
    source: dict[str, Any],
    source_checksum: str,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Compute dataset.json from the written interactions file (streamed, bounded memory)."""
    pf = pq.ParquetFile(out / INTERACTIONS)
    n_rows = pf.metadata.num_rows
    users_seen: set[Any] = set()
    items_seen: set[Any] = set()
    t_min, t_max = None, None
    id_types = None
    for i in range(pf.num_row_groups):
        group = pf.read_row_group(i, columns=["user_id", "item_id", "timestamp"]).to_pandas()
        if id_types is None:
            id_types = {"user_id": id_type(group["user_id"]), "item_id": id_type(group["item_id"])}
        users_seen.update(pd.unique(group["user_id"]))
        items_seen.update(pd.unique(group["item_id"]))
        lo, hi = group["timestamp"].min(), group["timestamp"].max()
        t_min = lo if t_min is None or lo < t_min else t_min
        t_max = hi if t_max is None or hi > t_max else t_max
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": {"interactions": int(n_rows), "items": int(len(items)), "users": int(len(users))},
        "n_users_with_interactions": len(users_seen),
        "n_items_with_interactions": len(items_seen),
        "id_types": id_types or {"user_id": id_type(users["user_id"]), "item_id": id_type(items["item_id"])},
        "repurchase": bool(repurchase),
        "time_range": [str(t_min), str(t_max)],
        "columns": {
            "interactions": pf.schema_arrow.names,
            "items": list(map(str, items.columns)),
            "users": list(map(str, users.columns)),
        },
        "has_in_stock": "in_stock" in items.columns,
        "has_stock_history": (out / STOCK).exists(),
        "source": source,
        "source_checksum": source_checksum,
        "content_checksum": sha256_files([out / INTERACTIONS, out / ITEMS, out / USERS]
                                         + ([out / STOCK] if (out / STOCK).exists() else [])),
    }
    if extra:
        meta.update(extra)
    return meta


def complete_side_tables(
    interactions: pd.DataFrame, items: pd.DataFrame | None, users: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make sure every id in the interactions has a row in items/users (features left null)."""
    return _complete(items, interactions["item_id"]), _complete(users, interactions["user_id"])


def _complete(table: pd.DataFrame | None, ids: pd.Series) -> pd.DataFrame:
    known = pd.Series(pd.unique(ids), name=ids.name)
    if table is None:
        return known.sort_values(ignore_index=True).to_frame()
    missing = known[~known.isin(table[ids.name])]
    if len(missing):
        table = pd.concat([table, missing.to_frame()], ignore_index=True)
    return table.reset_index(drop=True)


def read_table(path: Path, what: str, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or parquet file, or a folder of parquet files (hive-partitioned folders such as
    ``date=2024-01-01/`` become columns), with clear errors for missing, empty or unreadable input.

    ``text_columns`` of a CSV are read as written (ids: ``1e3`` must not become the number 1000).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    if path.is_dir():
        return _read_parquet_folder(path, what)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} file is empty")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
            frame = pd.read_csv(path, sep=sep, low_memory=False, dtype={c: str for c in text_columns} or None)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: {what} file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read {what} file ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise DataError(f"{path}: {what} file has a header but no rows")
    return frame


def _read_parquet_folder(path: Path, what: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.dataset as pads

    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".pq")
             and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)]
    if not files:
        raise DataError(f"{path}: {what} folder has no .parquet files")
    try:
        frame = pads.dataset(str(path), format="parquet", partitioning="hive",
                             exclude_invalid_files=False).to_table().to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read {what} folder ({str(exc).splitlines()[0]})") from None
    for column in frame.columns:  # partition keys arrive as dictionary-encoded categoricals
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(frame[column].cat.categories.dtype)
    if frame.empty:
        raise DataError(f"{path}: {what} folder has no rows")
    return frame
