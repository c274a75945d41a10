"""What the item-item source's tuning costs, with and without its "bought next" grid, side by side.

    python bench/item_item_tuning.py PRE [--repeats 2]

PRE: a `funnel preprocess` output of user-last data (MovieLens-100k: `funnel data movielens-100k`,
`funnel preprocess DATA --split user-last`). The label is each training user's last basket (as
`funnel train ranking` labels user-last data), the history everything before it. Each grid is tuned
``--repeats`` times, alternating, with `models.sources.tune_item_item` as `train ranking` calls it
(the ranking config's default grids); the table has the fastest of each, the JSON every time and
the chosen (lambda, recency, bought-next weight) with its label Recall@12.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/quality.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pre", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import pandas as pd

    from funnel.report import table
    from models.config import RankingConfig
    from models.sources import tune_item_item
    from quality import user_last  # the benchmark's own user-last split
    from workflows.purchases import PurchaseHistory

    cfg = RankingConfig()
    train = pd.read_parquet(args.pre / "splits" / "train.parquet", columns=["user_id", "item_id", "timestamp"])
    before, label = user_last(train)
    users, items = pd.Index(train["user_id"].unique()), pd.Index(train["item_id"].unique())
    history = PurchaseHistory.build(before, users, items, before["timestamp"].max())
    truth = label.assign(row=items.get_indexer(label["item_id"])).groupby("user_id")["row"].apply(set)
    grids = {"lambda x recency": [0.0], "lambda x recency x bought-next": cfg.item_item_sequences}
    runs: dict[str, list[dict]] = {name: [] for name in grids}
    for _ in range(args.repeats):
        for name, sequences in grids.items():
            started = time.perf_counter()
            _, facts = tune_item_item(history, users, truth, cfg.valid_k, cfg.item_item_lambdas, cfg.item_item_neighbours,
                                      cfg.item_item_max_items, cfg.item_item, exclude_seen=True,
                                      recencies=cfg.item_item_recencies, sequences=sequences)
            tried = facts[f"label_recall@{cfg.valid_k}_by_lambda/recency/sequence"]
            runs[name].append({"seconds": round(time.perf_counter() - started, 2), "tried": len(tried),
                               "chosen": {k: facts[k] for k in ("lambda", "recency", "sequence")},
                               f"label_recall@{cfg.valid_k}": max(tried.values())})
            print(f"  {name}: {runs[name][-1]['seconds']} s", file=sys.stderr, flush=True)
    rows = [(name, r[0]["tried"], min(x["seconds"] for x in r), r[0]["chosen"]["lambda"], r[0]["chosen"]["recency"],
             r[0]["chosen"]["sequence"], f"{r[0][f'label_recall@{cfg.valid_k}']:.4f}") for name, r in runs.items()]
    print(table(rows, header=["grid", "settings", "seconds (fastest)", "lambda", "recency", "bought-next",
                              f"label recall@{cfg.valid_k}"]))
    print(json.dumps({"pre": str(args.pre), "label_users": len(truth), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
