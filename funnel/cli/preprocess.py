"""``funnel preprocess DATA --out PRE``: split, build features, fit and apply the NVTabular workflow."""

from __future__ import annotations

import argparse

from funnel.cli.args import add_config_arguments, config_from_args
from workflows.config import PreprocessConfig

STEPS = ["split", "features", "stage", "fit", "transform_retrieval", "catalogue", "save"]


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="split, build features, fit and apply the NVTabular workflow")
    p.add_argument("data", help="dataset directory from `funnel data`")
    p.add_argument("--out", required=True, help="preprocessing output directory")
    p.add_argument("--config", help="YAML file with PreprocessConfig fields; flags override it")
    add_config_arguments(p, PreprocessConfig, skip=("data", "out"), title="preprocessing settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from funnel.report import progress, table
    from workflows.preprocess import preprocess

    cfg = config_from_args(PreprocessConfig, args, data=args.data, out=args.out)
    with progress(len(STEPS), "preprocessing", unit="steps") as bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        m = preprocess(cfg, step=step)
    r, u, i = m["rows"], m["users"], m["items"]
    rows = [
        ("device", m["device"] + (f", Dask {cfg.workers} workers" if cfg.workers else "")
         + (f", Dask scheduler {cfg.scheduler}" if cfg.scheduler else "")),
        ("split", f"{cfg.split}" + (f", last {cfg.test_days} days" if cfg.split == "time" else "")
         + f", cutoff {m['split']['cutoff'][:19]}"),
        ("interactions", r["interactions"]),
        ("train / test rows", f"{r['train']:,} / {r['test']:,}"),
        ("users: all / train / test (cold)", f"{u['total']:,} / {u['train']:,} / {u['test']:,} ({u['test_cold']:,})"),
        ("items: all / train / test (cold)", f"{i['total']:,} / {i['train']:,} / {i['test']:,} ({i['test_cold']:,})"),
        ("time", f"{m['timings_s']['total']:.1f} s ({m['rows_per_s']:,} rows/s), peak RSS {m['peak_rss_mb']:,} MB"),
        ("written to", args.out),
    ]
    print(table(rows, title="funnel preprocess: done"))
