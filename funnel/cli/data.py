"""``funnel data SOURCE``: write a canonical dataset directory from a source."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from funnel.cli.args import add_config_arguments, config_from_args, positive
from funnel.data.synth_config import PRESETS, SynthConfig


def register(sub) -> None:
    data = sub.add_parser("data", help="create a canonical dataset directory from a source")
    dsub = data.add_subparsers(dest="source", metavar="SOURCE")
    dsub.required = True

    p = dsub.add_parser("synth", help="H&M-shaped synthetic data with planted structure (the default)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named size: hm = the H&M Kaggle data's users, "
                                                            "articles, days and ~31.8M transactions")
    add_config_arguments(p, SynthConfig, title="generator settings")
    p.set_defaults(func=synth)

    p = dsub.add_parser("hm", help="H&M Personalized Fashion Recommendations (Kaggle files)")
    p.add_argument("--kaggle-dir", required=True, help="folder with transactions_train.csv, articles.csv, customers.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--sample-users", type=positive, default=None, help="keep a random sample of N customers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=hm)

    p = dsub.add_parser("movielens-100k", help="MovieLens-100k ratings as interactions")
    p.add_argument("--out", required=True)
    p.add_argument("--source", help="ml-100k folder or zip (GroupLens) or RecBole ml-100k folder")
    p.set_defaults(func=movielens)

    p = dsub.add_parser("csv", help="any interactions CSV/parquet file or parquet folder with a column mapping")
    p.add_argument("--interactions", required=True, help="a CSV/TSV/parquet file or a folder of parquet files")
    _column_arguments(p)
    p.add_argument("--items", help="item features file")
    p.add_argument("--item-key", help="item id column in --items (default: --item-col)")
    p.add_argument("--users", help="user features file")
    p.add_argument("--user-key", help="user id column in --users (default: --user-col)")
    _cleaning_arguments(p)
    p.add_argument("--name", help="dataset name (default: the file's stem)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=csv)

    p = dsub.add_parser("sql", help="interactions from a SQL database (DuckDB, SQLite, any SQLAlchemy URL)")
    p.add_argument("--url", required=True, help="SQLAlchemy URL (duckdb:///shop.duckdb, sqlite:///shop.db, "
                                                "postgresql://...) or a .duckdb/.db/.sqlite file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", help="SELECT returning one row per interaction")
    what.add_argument("--table", help="a table (or schema.table) with one row per interaction")
    _column_arguments(p)
    items = p.add_mutually_exclusive_group()
    items.add_argument("--items-query", help="item features: a SELECT")
    items.add_argument("--items-table", help="item features: a table")
    p.add_argument("--item-key", help="item id column of the item features (default: --item-col)")
    users = p.add_mutually_exclusive_group()
    users.add_argument("--users-query", help="user features: a SELECT")
    users.add_argument("--users-table", help="user features: a table")
    p.add_argument("--user-key", help="user id column of the user features (default: --user-col)")
    _cleaning_arguments(p)
    p.add_argument("--chunk-rows", type=positive, default=500_000, help="rows fetched per round trip")
    p.add_argument("--name", help="dataset name (default: the table's name, else 'sql')")
    p.add_argument("--out", required=True)
    p.set_defaults(func=sql)

    p = dsub.add_parser("info", help="print a dataset's dataset.json")
    p.add_argument("data")
    p.set_defaults(func=info)


def _column_arguments(p) -> None:
    """The column mapping shared by `data csv` and `data sql`."""
    p.add_argument("--user-col", required=True)
    p.add_argument("--item-col", required=True)
    p.add_argument("--time-col")
    p.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "ns"], help="unit of numeric times")


def _cleaning_arguments(p) -> None:
    """Domain and bad-row handling shared by `data csv` and `data sql`."""
    p.add_argument("--repurchase", action=argparse.BooleanOptionalAction, default=False,
                   help="buying the same item again is normal in this domain")
    p.add_argument("--drop-duplicates", action="store_true", help="drop exact duplicate rows instead of failing")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop rows whose user or item id is missing or a non-integer number (21.5, 1e3) "
                        "instead of failing; says how many")


def print_summary(meta: dict, out: Path, seconds: float) -> None:
    from funnel.report import table

    rows = [
        ("dataset", meta["name"]),
        ("interactions", meta["rows"]["interactions"]),
        ("users (with interactions)", f"{meta['rows']['users']:,} ({meta['n_users_with_interactions']:,})"),
        ("items (with interactions)", f"{meta['rows']['items']:,} ({meta['n_items_with_interactions']:,})"),
        ("time range", " .. ".join(t[:10] for t in meta["time_range"])),
        ("id types", f"user {meta['id_types']['user_id']}, item {meta['id_types']['item_id']}"),
        ("repurchase normal", meta["repurchase"]),
        ("written to", str(out)),
        ("time", f"{seconds:.1f} s ({meta['rows']['interactions'] / max(seconds, 1e-9):,.0f} rows/s)"),
    ]
    print(table(rows, title="funnel data: done"))


def synth(args: argparse.Namespace) -> None:
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data.synth import generate
    from funnel.report import progress

    preset = PRESETS.get(args.preset or "", {})
    given = {name: value for name, value in vars(args).items() if value is not None}
    cfg = config_from_args(SynthConfig, args, **{k: v for k, v in preset.items() if k not in given})
    start = time.perf_counter()
    with progress(cfg.expected_interactions(), "generating") as bar, atomic_output_dir(args.out) as tmp:
        meta = generate(cfg, tmp, progress=bar.update)
    print_summary(meta, Path(args.out), time.perf_counter() - start)


def hm(args: argparse.Namespace) -> None:
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data import hm as source
    from funnel.report import progress

    start = time.perf_counter()
    with progress(None, "reading transactions") as bar, atomic_output_dir(args.out) as tmp:
        meta = source.build(Path(args.kaggle_dir), tmp, args.sample_users, args.seed, on_rows=bar.update)
    print_summary(meta, Path(args.out), time.perf_counter() - start)


def movielens(args: argparse.Namespace) -> None:
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data import movielens as source

    start = time.perf_counter()
    with atomic_output_dir(args.out) as tmp:
        meta = source.build(tmp, Path(args.source) if args.source else None)
    print_summary(meta, Path(args.out), time.perf_counter() - start)


def csv(args: argparse.Namespace) -> None:
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data import tabular

    src = tabular.TabularSource(
        interactions=Path(args.interactions), user_col=args.user_col, item_col=args.item_col,
        time_col=args.time_col, time_unit=args.time_unit,
        items=Path(args.items) if args.items else None, item_key=args.item_key,
        users=Path(args.users) if args.users else None, user_key=args.user_key,
        repurchase=args.repurchase, drop_duplicates=args.drop_duplicates, drop_invalid=args.drop_invalid,
        name=args.name,
    )
    start = time.perf_counter()
    with atomic_output_dir(args.out) as tmp:
        meta = tabular.build(src, tmp)
    print_summary(meta, Path(args.out), time.perf_counter() - start)


def sql(args: argparse.Namespace) -> None:
    from funnel.core.fsutil import atomic_output_dir
    from funnel.data import sql as source
    from funnel.report import progress

    src = source.SqlSource(
        url=args.url, user_col=args.user_col, item_col=args.item_col, query=args.query, table=args.table,
        time_col=args.time_col, time_unit=args.time_unit, items_query=args.items_query,
        items_table=args.items_table, item_key=args.item_key, users_query=args.users_query,
        users_table=args.users_table, user_key=args.user_key, repurchase=args.repurchase,
        drop_duplicates=args.drop_duplicates, drop_invalid=args.drop_invalid, name=args.name,
        chunk_rows=args.chunk_rows,
    )
    start = time.perf_counter()
    with progress(None, "fetching rows") as bar, atomic_output_dir(args.out) as tmp:
        meta = source.build(src, tmp, on_rows=bar.update)
    print_summary(meta, Path(args.out), time.perf_counter() - start)


def info(args: argparse.Namespace) -> None:
    from funnel.data.canonical import read_dataset

    print(json.dumps(read_dataset(args.data).meta, indent=2))
