"""Optimizer cost per training step as the user table grows: Adam vs LazyAdam (models.optimizers).

    python bench/optimizer.py [--users 10000 100000 1370000] [--items 105000] [--steps 20]

Builds funnel's own two-tower model (``models.retrieval.build_model``: user id + item id towers,
in-batch negatives, logQ) for each user count and optimizer, trains it on random 1,024-row batches,
and reports the median time of one step after a warm-up. Prints a table and one JSON document
(also written to bench/results/optimizer.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def schema_for(users: int, items: int):
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name: str, size: int, tags: list):
        return ColumnSchema(name, dtype=np.int64, tags=[*tags, Tags.CATEGORICAL],
                            properties={"domain": {"min": 0, "max": size - 1, "name": name}})

    return Schema([column("user_id", users, [Tags.USER, Tags.USER_ID, Tags.ID]),
                   column("item_id", items, [Tags.ITEM, Tags.ITEM_ID, Tags.ID])])


def step_seconds(users: int, items: int, optimizer: str, steps: int, batch: int, seed: int) -> float:
    """Median seconds per training step of the two-tower model (one process-wide TF session)."""
    import tensorflow as tf
    from merlin.io import Dataset
    import merlin.models.tf as mm
    import pandas as pd
    from merlin.schema import Tags

    from models import distribute
    from models.config import RetrievalConfig
    from models.retrieval import build_model

    tf.keras.backend.clear_session()
    schema = schema_for(users, items)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": rng.integers(3, users, batch * (steps + 3)),
                          "item_id": rng.integers(3, items, batch * (steps + 3))})
    data = SimpleNamespace(schema=schema, user_schema=schema.select_by_tag(Tags.USER), item_schema=schema.select_by_tag(Tags.ITEM),
                           item_counts=np.bincount(frame["item_id"], minlength=items))
    cfg = RetrievalConfig(optimizer=optimizer, item_id_dropout=0.0, batch_size=batch)
    model = build_model(cfg, data, distribute.choose_strategy("one"))
    times: list[float] = []

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    loader = mm.Loader(Dataset(frame, schema=schema, cpu=True), batch_size=batch, shuffle=False)
    model.fit(loader, epochs=1, verbose=0, callbacks=[Clock()])
    return float(np.median(times[3:]))  # graph tracing and warm-up excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_370_000])
    parser.add_argument("--items", type=int, default=105_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--out", default="bench/results/optimizer.json")
    args = parser.parse_args()
    from models.tf_helpers import configure_tensorflow

    device = configure_tensorflow(0)
    rows = []
    for users in args.users:
        row = {"users": users, "items": args.items, "batch": args.batch}
        for optimizer in ("adam", "lazy_adam"):
            seconds = step_seconds(users, args.items, optimizer, args.steps, args.batch, 0)
            row[f"{optimizer}_ms_per_step"] = round(seconds * 1000, 2)
            row[f"{optimizer}_samples_per_s"] = round(args.batch / seconds)
            print(f"  {users:>9,} users  {optimizer:<9} {seconds * 1000:9.1f} ms/step", file=sys.stderr, flush=True)
        row["speedup"] = round(row["adam_ms_per_step"] / row["lazy_adam_ms_per_step"], 1)
        rows.append(row)
    doc = {"device": device, "model": "two-tower (user id, item id), funnel's build_model", "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'users':>10} {'items':>8} {'adam ms/step':>13} {'lazy ms/step':>13} {'adam rows/s':>12} {'lazy rows/s':>12} {'speed-up':>9}")
    for r in rows:
        print(f"{r['users']:>10,} {r['items']:>8,} {r['adam_ms_per_step']:>13.1f} {r['lazy_adam_ms_per_step']:>13.1f} "
              f"{r['adam_samples_per_s']:>12,} {r['lazy_adam_samples_per_s']:>12,} {r['speedup']:>8.1f}x")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
