"""`funnel data sql` against real DuckDB and SQLite database files: the same dataset as `data csv`
of the same rows, chunked fetching, and clear errors for every bad input."""

import sqlite3

import duckdb
import numpy as np
import pandas as pd
import pytest

from funnel.data.canonical import read_dataset

EVENTS = pd.DataFrame({
    "uid": ["u1", "u1", "u2", "u3", "u3", "u4", "u2"],
    "sku": [10, 11, 10, 12, 10, 13, 12],
    "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-02", "2024-01-02", "2024-01-03", "2024-01-04",
                          "2024-01-05", "2024-01-06 08:30"]),
    "price": [9.5, 20.0, 9.5, 5.0, 9.5, 1.0, 5.0],
    "store": ["web", "web", "shop", "web", "shop", "web", "web"],
})
ITEMS = pd.DataFrame({"sku": [10, 11, 12, 13, 14], "colour": ["red", "blue", "red", "green", "black"]})


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(path))
    con.register("events_df", EVENTS)
    con.register("items_df", ITEMS)
    con.execute("CREATE TABLE purchases AS SELECT * FROM events_df")
    con.execute("CREATE TABLE articles AS SELECT * FROM items_df")
    con.execute("CREATE TABLE nothing AS SELECT * FROM events_df WHERE false")
    con.close()
    return path


@pytest.fixture
def sqlite_db(tmp_path):
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as con:  # SQLite keeps times as text
        EVENTS.assign(ts=EVENTS["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_sql("purchases", con, index=False)
        ITEMS.to_sql("articles", con, index=False)
    return path


def test_duckdb_table_equals_the_csv_of_the_same_rows(warehouse, tmp_path, cli):
    EVENTS.to_csv(tmp_path / "events.csv", index=False)
    ITEMS.to_csv(tmp_path / "items.csv", index=False)
    code, _, err = cli("data", "csv", "--interactions", tmp_path / "events.csv", "--user-col", "uid",
                       "--item-col", "sku", "--time-col", "ts", "--items", tmp_path / "items.csv",
                       "--out", tmp_path / "from_csv")
    assert code == 0, err
    code, out, err = cli("data", "sql", "--url", f"duckdb:///{warehouse}", "--table", "purchases", "--user-col",
                         "uid", "--item-col", "sku", "--time-col", "ts", "--items-table", "articles",
                         "--chunk-rows", "2", "--out", tmp_path / "from_sql")  # 4 round trips
    assert code == 0, err
    assert "funnel data: done" in out
    a, b = read_dataset(tmp_path / "from_csv"), read_dataset(tmp_path / "from_sql")
    pd.testing.assert_frame_equal(a.interactions(), b.interactions())
    pd.testing.assert_frame_equal(a.items(), b.items())
    pd.testing.assert_frame_equal(a.users(), b.users())
    inter = b.interactions()
    assert list(inter.columns[:3]) == ["user_id", "item_id", "timestamp"] and len(inter) == len(EVENTS)
    assert inter["timestamp"].tolist() == EVENTS["ts"].tolist()  # independent of the csv path
    assert b.meta["source"]["kind"] == "sql" and b.meta["source"]["table"] == "purchases"
    assert 14 in set(b.items()["item_id"])  # a catalogue item nobody bought is kept


def test_sqlite_query_with_a_join_and_a_plain_file_path(sqlite_db, tmp_path, cli):
    query = ("SELECT p.uid AS customer, p.sku, p.ts, p.price FROM purchases p "
             "JOIN articles a ON a.sku = p.sku WHERE a.colour = 'red'")
    code, _, err = cli("data", "sql", "--url", sqlite_db, "--query", query, "--user-col", "customer",
                       "--item-col", "sku", "--time-col", "ts", "--out", tmp_path / "ds")
    assert code == 0, err
    inter = read_dataset(tmp_path / "ds").interactions()
    red = EVENTS[EVENTS["sku"].isin([10, 12])]
    assert sorted(zip(inter["user_id"], inter["item_id"])) == sorted(zip(red["uid"], red["sku"]))
    assert inter["timestamp"].max() == pd.Timestamp("2024-01-06 08:30") and np.isclose(inter["price"].sum(), red["price"].sum())


@pytest.mark.parametrize("flags, message", [
    (["--table", "missing_table"], "table missing_table: the interactions could not be read"),
    (["--table", "purchases; DROP TABLE purchases"], "not a plain table name"),
    (["--table", "nothing"], "table nothing: the interactions table has no rows"),
    (["--query", "SELECT uid, ts FROM purchases"], "column 'sku' is missing"),
    (["--query", "SELEC nonsense"], "the interactions could not be read"),
    (["--query", "SELECT uid, sku, 'not a time' AS ts FROM purchases"], "ts"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(warehouse, tmp_path, cli, flags, message):
    code, out, err = cli("data", "sql", "--url", warehouse, *flags, "--user-col", "uid", "--item-col", "sku",
                         "--time-col", "ts", "--out", tmp_path / "ds")
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()
    assert duckdb.connect(str(warehouse), read_only=True).execute("SELECT count(*) FROM purchases").fetchone()[0] == 7


def test_database_files_are_never_created(tmp_path, cli):
    for url in (tmp_path / "absent.duckdb", f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "notes.txt"):
        code, _, err = cli("data", "sql", "--url", url, "--table", "t", "--user-col", "u", "--item-col", "i",
                           "--out", tmp_path / "ds")
        assert code != 0 and ("database file not found" in err or "not a database URL" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    code, _, err = cli("data", "sql", "--url", "nosuchdb://host/db", "--table", "t", "--user-col", "u",
                       "--item-col", "i", "--out", tmp_path / "ds")
    assert code != 0 and "cannot open the database" in err


def test_an_empty_table_whose_name_contains_query_is_called_a_table(tmp_path):
    import sqlalchemy as sa

    from funnel.core.errors import FunnelError
    from funnel.data.sql import fetch, statement

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE query_log (user_id TEXT)"))
    sql, label = statement(None, "query_log", "interactions")
    with pytest.raises(FunnelError, match="table query_log: the interactions table has no rows"):
        fetch(engine, sql, label, "interactions", 100)
    sql, label = statement("SELECT * FROM query_log", None, "interactions")
    with pytest.raises(FunnelError, match="the interactions query returned no rows"):
        fetch(engine, sql, label, "interactions", 100)
