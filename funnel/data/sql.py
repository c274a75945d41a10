"""``funnel data sql``: interactions (and optional item and user tables) from a SQL warehouse.

Any SQLAlchemy URL: DuckDB (``duckdb:///warehouse.duckdb``, embedded: the default that works
everywhere), SQLite (``sqlite:///shop.db``), PostgreSQL and others where their driver is
installed. A plain path to a ``.duckdb``/``.ddb`` or ``.db``/``.sqlite``/``.sqlite3`` file stands
for that file. Rows come from a ``--query`` or a whole ``--table``, fetched in chunks
(``chunk_rows``, a server-side cursor where the driver has one), then validated exactly as
``funnel data csv`` validates a file: the same column mapping, the same checks and messages,
naming the query or table instead of a file line.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from funnel.core.errors import DataError
from funnel.data import canonical
from funnel.data.tabular import validate_interactions, validate_side_table

FILE_DIALECTS = {".duckdb": "duckdb", ".ddb": "duckdb", ".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite"}
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


@dataclass(frozen=True)
class SqlSource:
    """A database, the interactions' query or table, the column mapping, optional side tables."""

    url: str
    user_col: str
    item_col: str
    query: str | None = None
    table: str | None = None
    time_col: str | None = None
    time_unit: str = "s"
    items_query: str | None = None
    items_table: str | None = None
    item_key: str | None = None
    users_query: str | None = None
    users_table: str | None = None
    user_key: str | None = None
    repurchase: bool = False
    drop_duplicates: bool = False
    drop_invalid: bool = False
    name: str | None = None
    chunk_rows: int = 500_000


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for ``url``; a database file must exist (DuckDB and SQLite would create it)."""
    if "://" not in url:
        path = Path(url)
        dialect = FILE_DIALECTS.get(path.suffix.lower())
        if dialect is None:
            raise DataError(f"{url}: not a database URL (e.g. duckdb:///shop.duckdb, sqlite:///shop.db, "
                            f"postgresql://user@host/db) nor a {', '.join(FILE_DIALECTS)} file")
        url = f"{dialect}:///{path.resolve()}"
    scheme, _, rest = url.partition(":///")
    if scheme.split("+")[0] in ("duckdb", "sqlite") and rest and rest != ":memory:" and not rest.startswith("?"):
        path = Path(rest.split("?")[0])
        if not path.exists():
            raise DataError(f"{path}: database file not found")
        if path.is_dir():
            raise DataError(f"{path}: a database file is needed, this is a directory")
    return url


def redacted(url: str) -> str:
    """The URL as it may be printed and stored (no password)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by connect()
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def statement(query: str | None, table: str | None, what: str) -> tuple[str, str]:
    """(SQL, label for messages) from exactly one of a query and a table name."""
    if (query is None) == (table is None):
        raise DataError(f"{what}: give either a query or a table")
    if table is not None:
        if not IDENTIFIER.match(table):
            raise DataError(f"{what} table {table!r}: not a plain table name (letters, digits, _, optional schema.)")
        return f"SELECT * FROM {table}", f"table {table}"
    if not query.strip():
        raise DataError(f"{what} query is empty")
    return query, f"query {query.strip()[:60]!r}"


def fetch(engine, sql: str, label: str, what: str, chunk_rows: int,
          on_rows: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Every row of ``sql``, fetched ``chunk_rows`` at a time; clear errors for failing or empty results."""
    import sqlalchemy as sa

    chunks = []
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(stream_results=True)
            for chunk in pd.read_sql(sa.text(sql), conn, chunksize=chunk_rows):
                chunks.append(chunk)
                if on_rows:
                    on_rows(len(chunk))
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DataError(f"{label}: the {what} could not be read ({reason})") from None
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    if frame.empty:
        raise DataError(f"{label}: the {what} {'query returned' if label.startswith('query ') else 'table has'} no rows")
    return frame


def load(src: SqlSource, on_rows: Callable[[int], None] | None = None):
    """Read and validate; return canonical interactions, items and users frames, and the labels."""
    import sqlalchemy as sa

    url = engine_url(src.url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy 1.4's 2.0-migration notices
            engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DataError(f"{redacted(url)}: cannot open the database ({str(exc).splitlines()[0]})") from None
    where = redacted(url)
    try:
        sql, label = statement(src.query, src.table, "interactions")
        label = f"{where}: {label}"
        frame = fetch(engine, sql, label, "interactions", src.chunk_rows, on_rows)
        frame = validate_interactions(frame, src, label, None)
        sides = {}
        for what, query, table, key, target in (
                ("items", src.items_query, src.items_table, src.item_key or src.item_col, "item_id"),
                ("users", src.users_query, src.users_table, src.user_key or src.user_col, "user_id")):
            if query is None and table is None:
                sides[what] = None
                continue
            side_sql, side_label = statement(query, table, what)
            side_label = f"{where}: {side_label}"
            sides[what] = validate_side_table(fetch(engine, side_sql, side_label, what, src.chunk_rows),
                                              key, target, side_label, frame)
    finally:
        engine.dispose()
    return frame, sides["items"], sides["users"], where


def build(src: SqlSource, out: Path, on_rows: Callable[[int], None] | None = None) -> dict:
    """Validate ``src`` and write the canonical dataset into ``out``."""
    interactions, items, users, where = load(src, on_rows)
    digest = hashlib.sha256()
    for table in (interactions, items, users):
        if table is not None:
            digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    items, users = canonical.complete_side_tables(interactions, items, users)
    return canonical.write_dataset(
        out,
        name=src.name or (src.table or "sql"),
        interactions=interactions,
        items=items,
        users=users,
        repurchase=src.repurchase,
        source={"kind": "sql", "url": where, "query": src.query, "table": src.table,
                "items": src.items_query or src.items_table, "users": src.users_query or src.users_table,
                "columns": {"user": src.user_col, "item": src.item_col, "time": src.time_col}},
        source_checksum="sha256:" + digest.hexdigest(),
    )
