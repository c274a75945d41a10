"""The H&M Personalized Fashion Recommendations files: ``funnel data hm``.

``transactions_train.csv`` (t_dat, customer_id, article_id, price, sales_channel_id) is read
in chunks with pyarrow's streaming CSV reader and written row group by row group, so the
31.8M-row original needs memory for one chunk only. Same-day repeats of an article by one
customer in one channel (H&M's way of writing quantity) become one row with ``quantity``.
A basket (``order_id``) is one customer, one day, one channel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv

from funnel.data import canonical
from funnel.core.errors import DataError
from funnel.core.fsutil import sha256_files

TRANSACTIONS = "transactions_train.csv"
ARTICLES = "articles.csv"
CUSTOMERS = "customers.csv"
TX_COLUMNS = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
ARTICLE_FEATURES = [
    "product_code", "product_type_name", "product_group_name", "graphical_appearance_name", "colour_group_name",
    "perceived_colour_value_name", "department_name", "index_name", "index_group_name", "section_name",
    "garment_group_name",
]
CUSTOMER_FEATURES = ["FN", "Active", "club_member_status", "fashion_news_frequency", "age", "postal_code"]
BLOCK_BYTES = 64 << 20


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found (expected the Kaggle H&M files in {path.parent})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _read_side(path: Path, key: str, wanted: list[str], key_type: str) -> pd.DataFrame:
    _check_file(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    if key not in header:
        raise DataError(f"{path}: column '{key}' is missing (found: {', '.join(header)})")
    cols = [key] + [c for c in wanted if c in header]
    frame = pd.read_csv(path, usecols=cols, dtype={key: key_type}, low_memory=False)
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    if frame[key].isna().all():
        raise DataError(f"{path}: column '{key}' has only null ids")
    return frame[frame[key].notna()].drop_duplicates(subset=[key]).reset_index(drop=True)


def sample_customers(customers: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A reproducible random sample of ``n`` customers (all when ``n`` is None)."""
    if n is None or n >= len(customers):
        return customers
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(customers), n, replace=False))
    return customers.iloc[keep].reset_index(drop=True)


def _convert_error(exc: Exception, path: Path) -> DataError:
    text = str(exc).splitlines()[0]
    for i, name in enumerate(TX_COLUMNS):
        if f"column #{i}" in text:
            return DataError(f"{path}: column '{name}': {text.split(':', 1)[-1].strip()}")
    return DataError(f"{path}: cannot parse ({text})")


def stream_transactions(path: Path, keep_users: set[str] | None, on_rows: Callable[[int], None] | None = None):
    """Yield canonical interaction frames, one per block of the CSV, quantities aggregated."""
    _check_file(path)
    header = pd.read_csv(path, nrows=0).columns.tolist()
    for col in TX_COLUMNS:
        if col not in header:
            raise DataError(f"{path}: column '{col}' is missing (found: {', '.join(header)})")
    types = {"t_dat": pa.string(), "customer_id": pa.string(), "article_id": pa.int64(),
             "price": pa.float64(), "sales_channel_id": pa.int8()}
    try:
        reader = csv.open_csv(
            path, read_options=csv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=csv.ConvertOptions(column_types=types, include_columns=TX_COLUMNS),
        )
    except pa.ArrowInvalid as exc:
        raise _convert_error(exc, path) from None
    keep = pa.array(sorted(keep_users)) if keep_users is not None else None
    carry: pd.DataFrame | None = None
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise _convert_error(exc, path) from None
        if on_rows:
            on_rows(batch.num_rows)
        if keep is not None:
            batch = batch.filter(pc.is_in(batch.column("customer_id"), value_set=keep))
        frame = batch.to_pandas()
        if carry is not None:
            frame = pd.concat([carry, frame], ignore_index=True)
        if frame.empty:
            continue
        # hold back the last (day, customer) group: its repeats may continue in the next block
        last = (frame["t_dat"] == frame["t_dat"].iloc[-1]) & (frame["customer_id"] == frame["customer_id"].iloc[-1])
        carry, frame = frame[last], frame[~last]
        if len(frame):
            yield _canonical(frame, path)
    if carry is not None and len(carry):
        yield _canonical(carry, path)


def _canonical(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if frame["customer_id"].isna().any():
        raise DataError(f"{path}: column 'customer_id': {int(frame['customer_id'].isna().sum())} empty id(s)")
    if frame["article_id"].isna().any():
        raise DataError(f"{path}: column 'article_id': {int(frame['article_id'].isna().sum())} empty id(s)")
    ts = pd.to_datetime(frame["t_dat"], format="%Y-%m-%d", errors="coerce")
    if ts.isna().any():
        bad = frame["t_dat"][ts.isna()].iloc[0]
        raise DataError(f"{path}: column 't_dat': {int(ts.isna().sum())} value(s) are not dates YYYY-MM-DD (first: {bad!r})")
    frame = frame.assign(timestamp=ts)
    grouped = (
        frame.groupby(["customer_id", "timestamp", "sales_channel_id", "article_id"], sort=False)
        .agg(price=("price", "mean"), quantity=("price", "size"))
        .reset_index()
    )
    return pd.DataFrame(
        {
            "user_id": grouped["customer_id"].astype(str),
            "item_id": grouped["article_id"].astype(np.int64),
            "timestamp": grouped["timestamp"].astype("datetime64[ns]"),
            "price": grouped["price"].astype(np.float32),
            "channel": grouped["sales_channel_id"].astype(np.int8),
            "quantity": grouped["quantity"].astype(np.int16),
        }
    )


def build(kaggle_dir: Path, out: Path, sample_users: int | None = None, seed: int = 0,
          on_rows: Callable[[int], None] | None = None) -> dict:
    """Convert the Kaggle files in ``kaggle_dir`` into the canonical dataset in ``out``."""
    kaggle_dir = Path(kaggle_dir)
    if not kaggle_dir.is_dir():
        raise DataError(f"{kaggle_dir}: no such directory (expected {TRANSACTIONS}, {ARTICLES}, {CUSTOMERS})")
    customers = _read_side(kaggle_dir / CUSTOMERS, "customer_id", CUSTOMER_FEATURES, "string")
    articles = _read_side(kaggle_dir / ARTICLES, "article_id", ARTICLE_FEATURES, "int64")
    customers = sample_customers(customers, sample_users, seed)
    keep = set(customers["customer_id"].astype(str)) if sample_users is not None else None

    writer = None
    open_baskets: dict[tuple, int] = {}  # baskets of the latest day(s), which may continue in the next block
    next_order = 0
    n_rows = 0
    try:
        for part in stream_transactions(kaggle_dir / TRANSACTIONS, keep, on_rows):
            key = pd.MultiIndex.from_frame(part[["user_id", "timestamp", "channel"]])
            codes, uniques = pd.factorize(key)
            ids = np.empty(len(uniques), dtype=np.int64)
            for j, k in enumerate(uniques):
                if k not in open_baskets:
                    open_baskets[k] = next_order
                    next_order += 1
                ids[j] = open_baskets[k]
            part["order_id"] = ids[codes]
            table = pa.Table.from_pandas(part, preserve_index=False)
            writer = writer or pq.ParquetWriter(out / canonical.INTERACTIONS, table.schema)
            writer.write_table(table)
            n_rows += len(part)
            latest = part["timestamp"].max()
            open_baskets = {k: v for k, v in open_baskets.items() if k[1] >= latest}
    finally:
        if writer is not None:
            writer.close()
    if n_rows == 0:
        what = "for the sampled customers" if keep is not None else ""
        raise DataError(f"{kaggle_dir / TRANSACTIONS}: no transactions {what}".strip())

    users = customers.rename(columns={"customer_id": "user_id"})
    items = articles.rename(columns={"article_id": "item_id"})
    files = [kaggle_dir / n for n in (TRANSACTIONS, ARTICLES, CUSTOMERS)]
    return canonical.write_dataset(
        out, name="hm", interactions=None, items=items, users=users, repurchase=True,
        source={"kind": "hm", "dir": str(kaggle_dir), "sample_users": sample_users, "seed": seed},
        source_checksum=sha256_files(files),
    )
