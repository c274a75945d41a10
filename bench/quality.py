"""Quality benchmark: the full offline funnel against honest baselines.

    python bench/quality.py [--only movielens|synthetic] [--work DIR]

- MovieLens-100k, ``--split user-last``: popularity, retrieval, retrieval + ranking, and
  implicit's ALS (a small grid tuned on a validation split carved from train, then scored
  once on test, with the same seen-item exclusion).
- Synthetic default (planted structure), ``--split time``: the methods as shares of the oracle.

Prints a table and one JSON document (also written to bench/results/quality.json), with the
quality bars of issue 3 marked as met or missed. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FUNNEL = [sys.executable, "-m", "funnel"]


def sh(*args: str) -> None:
    started = time.perf_counter()
    subprocess.run([*FUNNEL, *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    print(f"  {' '.join(map(str, args[:3]))} ... {time.perf_counter() - started:.0f} s", file=sys.stderr)


def als_recall(train: pd.DataFrame, test: pd.DataFrame, k: int, factors: int, reg: float, alpha: float,
               exclude_seen: bool, seed: int = 0) -> float:
    """Recall@k of implicit's ALS trained on ``train`` and scored on ``test``."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares

    users = pd.Index(train["user_id"].unique())
    items = pd.Index(train["item_id"].unique())
    matrix = sp.csr_matrix(
        (np.ones(len(train), dtype=np.float32) * alpha, (users.get_indexer(train["user_id"]), items.get_indexer(train["item_id"]))),
        shape=(len(users), len(items)),
    )
    matrix.sum_duplicates()
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=reg, iterations=15, random_state=seed)
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads only slow it
        model.fit(matrix, show_progress=False)
    truth = test.groupby("user_id")["item_id"].apply(set)
    known = truth.index[truth.index.isin(users)]
    ids, _ = model.recommend(users.get_indexer(known), matrix[users.get_indexer(known)], N=k,
                             filter_already_liked_items=exclude_seen)
    recalls = [len(set(items[row]) & truth[u]) / len(truth[u]) for u, row in zip(known, ids)]
    recalls += [0.0] * (len(truth) - len(known))  # cold users: ALS has nothing for them
    return float(np.mean(recalls))


def user_last(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    last = frame.groupby("user_id")["timestamp"].transform("max")
    first = frame.groupby("user_id")["timestamp"].transform("min")
    held = (frame["timestamp"] == last) & (first < last)
    return frame[~held], frame[held]


def tuned_als(pre: Path, k: int, exclude_seen: bool) -> dict:
    train = pd.read_parquet(pre / "splits" / "train.parquet")
    test = pd.read_parquet(pre / "splits" / "test.parquet")
    inner_train, inner_valid = user_last(train)
    grid = list(itertools.product([32, 64, 128], [0.01, 0.1], [5.0, 10.0, 40.0]))
    scored = [(als_recall(inner_train, inner_valid, k, f, r, a, exclude_seen), (f, r, a)) for f, r, a in grid]
    best_valid, (f, r, a) = max(scored)
    return {"recall@%d" % k: als_recall(train, test, k, f, r, a, exclude_seen),
            "params": {"factors": f, "regularization": r, "alpha": a}, "valid_recall": best_valid, "grid": len(grid)}


def run_funnel(data: Path, work: Path, split: str, retrieval_args: list[str], ks: list[int]) -> dict:
    pre, run = work / "pre", work / "run"
    sh("preprocess", data, "--out", pre, "--split", split)
    sh("train", "retrieval", pre, "--out", run, *retrieval_args)
    sh("train", "ranking", pre, "--run", run)
    sh("evaluate", run, "--k", *map(str, ks), "--json", work / "eval.json")
    return json.loads((work / "eval.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["movielens", "synthetic"])
    parser.add_argument("--work", help="keep intermediate output here")
    parser.add_argument("--ml100k", default=".cache/ml-100k")
    parser.add_argument("--out", default="bench/results/quality.json")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="funnel-quality-"))
    doc: dict = {}

    if args.only in (None, "movielens"):
        print("MovieLens-100k (user-last split)", file=sys.stderr)
        data = work / "ml" / "data"
        sh("data", "movielens-100k", "--source", args.ml100k, "--out", data)
        report = run_funnel(data, work / "ml", "user-last", ["--valid-days", "7"], [10])
        m = report["methods"]
        als = tuned_als(work / "ml" / "pre", 10, exclude_seen=True)
        doc["movielens-100k"] = {
            "recall@10": {name: m[name]["recall@10"] for name in m} | {"implicit-als": als["recall@10"]},
            "als": als,
            "ranker_on_test_candidates": report.get("ranker_on_test_candidates"),
            "bars": {
                "funnel >= 1.5x popularity": m["retrieval+ranking"]["recall@10"] >= 1.5 * m["popularity"]["recall@10"],
                "funnel >= ALS": m["retrieval+ranking"]["recall@10"] >= als["recall@10"],
            },
        }

    if args.only in (None, "synthetic"):
        print("Synthetic default (time split, last 7 days)", file=sys.stderr)
        data = work / "synth" / "data"
        sh("data", "synth", "--out", data)
        report = run_funnel(data, work / "synth", "time", [], [12])
        m = report["methods"]
        doc["synthetic"] = {
            "recall@12": {name: m[name]["recall@12"] for name in m},
            "share_of_oracle@12": {name: m[name]["share_of_oracle@12"] for name in m},
            "map@12": {name: m[name]["map@12"] for name in m},
            "ranker_on_test_candidates": report.get("ranker_on_test_candidates"),
            "bars": {
                "funnel >= 3x popularity": m["retrieval+ranking"]["recall@12"] >= 3 * m["popularity"]["recall@12"],
                "funnel >= 70% of oracle": m["retrieval+ranking"]["share_of_oracle@12"] >= 0.7,
            },
        }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for name, section in doc.items():
        metric = "recall@10" if "recall@10" in section else "recall@12"
        print(f"\n{name}: {metric}")
        for method, value in section[metric].items():
            share = section.get("share_of_oracle@12", {}).get(method)
            print(f"  {method:<20} {value:.4f}" + (f"   ({share:.0%} of oracle)" if share is not None else ""))
        for bar, met in section["bars"].items():
            print(f"  bar: {bar:<28} {'met' if met else 'MISSED'}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
