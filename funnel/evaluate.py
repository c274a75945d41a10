"""``funnel evaluate RUN``: the served graph, its stages and honest baselines on the test split.

Methods (each a list of raw item ids per test user, best first):

- ``served``, the headline: the run exported exactly as ``funnel export`` does (to a temporary
  repository, with the inventory as of the training cutoff) and asked for every test user
  through the in-process ``Recommender``, the code Triton runs. ``funnel export RUN
  --inventory cutoff`` + ``funnel serve`` answer the same lists over gRPC.

Stage-wise diagnostics and peers:

- ``popularity``: the most bought items of the last ``popularity_days`` of training;
- ``repurchase``: the user's own items, most recent first, filled with popularity
  (only where the domain repurchases, per dataset.json);
- ``retrieval``: the two-tower query embedding against every item embedding (exact top-k);
- ``retrieval+ranking``: retriever + item-item top-N (+ own items) ordered as serving orders them
  (the tuned blend of the sources' scores, with the DLRM's logit where the ranker's gate let it
  in), without the served graph's trending and stock filter;
- ``oracle``: the generator's Bayes-optimal ranking (synthetic data only).

Besides Recall, NDCG, hit rate and coverage at each k, ``cold_recall@k`` is the Recall of the test
purchases of *cold* items (bought in the test period, never in training) over the users who made
one: what reaches users only through item features.

Where the domain does not repurchase, items seen in training are excluded for every method,
as serving does. Figures go to ``RUN/evaluation.json``, ``RUN/evaluation.md`` and a bar chart
``RUN/evaluation.png``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from merlin.io import Dataset
from merlin.schema import Tags

from ensemble.build import export, serving_blend, serving_shortlist
from ensemble.config import ExportConfig, Inventory
from ensemble.runtime import Recommender
from funnel.core import metrics
from funnel.core.artifacts import (ensemble_dir, read_preprocess_manifest, read_ranking_manifest, run_pre_dir,
                                   write_manifest)
from funnel.core.topk import dot_top_k
from funnel.data.synth import Oracle
from models.ranking import auc_logloss, score_pairs
from models.ranking_rows import assemble, candidates, rank_candidates, ranking_schema, with_z_scores
from models.sources import ItemItemSource, blend_order
from models.tf_helpers import encode_rows, load_tower
from workflows import TARGET
from workflows.candidates import NEW_ITEM, RANKER_SCORE, Z_SCORES, NewItems, logit
from workflows.history import recent_items
from workflows.item_item import ItemItem
from workflows.purchases import PurchaseHistory

USER_BATCH = 2048


class EvalData:
    """Everything evaluation needs from a preprocessing output, loaded once."""

    def __init__(self, pre: Path):
        self.pre = pre
        self.manifest = read_preprocess_manifest(pre)
        self.train = pd.read_parquet(pre / "splits" / "train.parquet")
        self.test = pd.read_parquet(pre / "splits" / "test.parquet")
        self.items = pd.read_parquet(pre / "catalogue" / "items.parquet")
        self.repurchase = bool(self.manifest["dataset"]["repurchase"])
        truth = self.test.groupby("user_id")["item_id"].apply(set)
        self.users = truth.index.to_numpy()
        self.truth = list(truth.to_numpy())
        self.history = recent_items(self.train)
        # cold items: bought in the test period, never in training; they can only reach users through
        # their features (and trending/stock), not through anyone's purchase history
        self.cold = set(self.test["item_id"]) - set(self.train["item_id"])
        self.cold_truth = [t & self.cold for t in self.truth]
        self.cutoff = pd.Timestamp(self.manifest["split"]["cutoff"])

    def seen(self, user: Any) -> list:
        return self.history.get(user, [])

    def excluded(self, user: Any) -> set:
        return set() if self.repurchase else set(self.seen(user))


def _fill(first: list, fallback: list, exclude: set, k: int) -> list:
    out, taken = [], set(exclude)
    for item in list(first) + list(fallback):
        if item not in taken:
            out.append(item)
            taken.add(item)
            if len(out) == k:
                break
    return out


def popularity(data: EvalData, k: int, days: int = 7) -> list[list]:
    recent = data.train[data.train["timestamp"] >= data.train["timestamp"].max() - pd.Timedelta(days=days)]
    ranked = recent["item_id"].value_counts().index.tolist()
    ranked += [i for i in data.train["item_id"].value_counts().index if i not in set(ranked)]
    return [_fill([], ranked, data.excluded(u), k) for u in data.users]


def repurchase(data: EvalData, k: int, days: int = 7) -> list[list]:
    popular = popularity(data, k, days)
    return [_fill(data.seen(u), pop, set(), k) for u, pop in zip(data.users, popular)]


def retrieval(data: EvalData, run: Path, k: int) -> list[list]:
    """Exact top-k by the saved query tower and item embeddings."""
    query = load_tower(run / "query_tower")
    schema = Dataset(str(data.pre / "retrieval" / "train"), engine="parquet", cpu=True).schema.select_by_tag(Tags.USER)
    users = pd.read_parquet(data.pre / "catalogue" / "users.parquet").set_index("user_id_raw")
    emb = pd.read_parquet(run / "item_embeddings.parquet")
    item_ids = emb["item_id"].to_numpy()
    vectors = emb.drop(columns=["item_id"]).to_numpy(np.float32)
    pos = pd.Index(item_ids)
    out: list[list] = []
    for start in range(0, len(data.users), USER_BATCH):
        batch = data.users[start : start + USER_BATCH]
        q = encode_rows(query, users.loc[batch].reset_index(), schema)
        exclude = None if data.repurchase else [pos.get_indexer(data.seen(u)) for u in batch]
        out.extend(item_ids[dot_top_k(q, vectors, k, exclude)].tolist())
    return out


def funnel_ranked(data: EvalData, run: Path, k: int, n_candidates: int) -> tuple[list[list], dict[str, float]]:
    """The offline funnel: retriever top-N + item-item top-N (+ own items where the domain repurchases)
    + new items -> DLRM -> top-k.

    Also returns the ranker's AUC and log loss on these test candidates (labels: test purchases).
    The candidates are ordered by the weights serving uses (``ensemble.build.serving_blend``): with
    the ranker's logit where its gate let it in (ranking.json), by the sources' blend otherwise.
    """
    schema = ranking_schema(data.pre)
    query, ranker = load_tower(run / "query_tower"), load_tower(run / "ranker")
    users = pd.read_parquet(data.pre / "catalogue" / "users.parquet")
    by_user = users.set_index("user_id_raw")
    items = pd.read_parquet(data.pre / "catalogue" / "items.parquet")
    emb = pd.read_parquet(run / "item_embeddings.parquet").set_index("item_id").loc[items["item_id_raw"]]
    vectors = emb.to_numpy(np.float32)
    item_ids = items["item_id_raw"].to_numpy()
    history = data.history.to_dict()
    test_pairs = set(zip(data.test["user_id"], data.test["item_id"]))
    manifest = read_ranking_manifest(run) or {}
    source = None
    if (run / "item_item.npz").exists() and manifest.get("item_item"):  # the served item-item source
        source = ItemItemSource(ItemItem.load(run / "item_item.npz"),
                                PurchaseHistory.build(data.train, pd.Index(users["user_id_raw"]), pd.Index(item_ids),
                                                      data.cutoff), pd.Index(users["user_id_raw"]),
                                manifest["config"]["item_item"])
    weights = serving_blend(manifest if manifest else None)
    first, shortlist = serving_shortlist(manifest if manifest else None)  # the cascade serving runs
    new = NewItems.as_of(data.manifest["dataset"]["path"], data.train, data.cutoff, item_ids)  # as the export does
    out: list[list] = []
    labels, scores = [], []
    for start in range(0, len(data.users), USER_BATCH):
        batch = data.users[start : start + USER_BATCH]
        q = encode_rows(query, by_user.loc[batch].reset_index(), schema.select_by_tag(Tags.USER))
        cands = candidates(q, batch, item_ids, vectors, n_candidates, history, data.repurchase, item_item=source,
                           new=new, n_new=int(manifest.get("config", {}).get("new_items", 0)))
        cands = with_z_scores(cands, cands)
        rows = assemble(cands[["user_id", "item_id", "retrieval_score", "item_item_score", *Z_SCORES, NEW_ITEM]], users,
                        items, data.train, data.cutoff, manifest.get("data", {}).get("affinity_columns"))
        rows[TARGET] = 0
        ranker_scores = score_pairs(ranker, rows, schema)
        labels.append(np.fromiter((p in test_pairs for p in zip(cands["user_id"], cands["item_id"])), bool, len(cands)))
        scores.append(ranker_scores)
        order = blend_order(cands.assign(pair_purchases=rows["pair_purchases"].to_numpy(),
                                         pair_days_since=rows["pair_days_since"].to_numpy(),
                                         **{RANKER_SCORE: logit(ranker_scores)}), weights, first, shortlist)
        ranked = rank_candidates(order, cands, k).reindex(batch)
        out.extend(r if isinstance(r, list) else [] for r in ranked)  # every candidate seen: nothing left
    return out, auc_logloss(np.concatenate(labels), np.concatenate(scores))


def served(data: EvalData, run: Path, k: int, batch: int = 1024,
           new_item_slots: int = 0) -> tuple[list[list], dict[str, Any]]:
    """The exported graph's answers for every test user (in-process, as Triton runs it), exported with
    ``new_item_slots`` (``ExportConfig``: the last places of a known user's list kept for new items).

    Returns the lists (raw item ids, typed like the test split's) and facts about the export.
    """
    raw = {str(i): i for i in data.items["item_id_raw"]}
    with tempfile.TemporaryDirectory(prefix="funnel-evaluate-") as tmp:
        repo = Path(tmp) / "repo"
        manifest = export(ExportConfig(run=str(run), out=str(repo), k=k, max_k=max(k, 100), max_batch=batch,
                                       inventory=Inventory.CUTOFF, new_item_slots=new_item_slots))
        recommender = Recommender(ensemble_dir(repo))
        out: list[list] = []
        candidates: list[list] = []  # every candidate that reached the ranker, for the cold items' reach
        for start in range(0, len(data.users), batch):
            users = [str(u) for u in data.users[start : start + batch]]
            answer = recommender.recommend(users, k=k, with_candidates=True)
            out.extend([raw[v.decode()] for v in row if v] for row in answer["item_ids"])
            candidates.extend([raw[v.decode()] for v in row if v] for row in answer["candidate_ids"])
    width = max((len(c) for c in candidates), default=0)
    facts = {"inventory": manifest["data"]["inventory"], "in_stock": manifest["data"]["in_stock"],
             "new_items": manifest["data"].get("new_items"),
             # the share of the cold items' test purchases that reached the ranker at all (Recall over the whole list)
             "cold_recall_of_candidates": metrics.recall_at_k(candidates, data.cold_truth, width) if width else 0.0,
             "ranker_used": bool(manifest["models"]["ranker"] and manifest["models"]["ranker"]["used"]),
             "index": manifest["index"]["kind"], "filters": manifest["filters"]}
    return out, facts


def oracle(data: EvalData, dataset_dir: Path, k: int) -> list[list]:
    end = data.test["timestamp"].max() + pd.Timedelta(seconds=1)
    model = Oracle.load(dataset_dir, data.cutoff, end)
    out: list[list] = []
    for start in range(0, len(data.users), USER_BATCH):
        batch = data.users[start : start + USER_BATCH]
        top = model.topk(batch, k + (0 if data.repurchase else 200))
        out.extend(_fill(row, [], data.excluded(u), k) for row, u in zip(top.tolist(), batch))
    return out


def score(method: str, recs: list[list], data: EvalData, ks: list[int]) -> dict[str, float]:
    n_items = len(data.items)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = metrics.recall_at_k(recs, data.truth, k)
        out[f"ndcg@{k}"] = metrics.ndcg_at_k(recs, data.truth, k)
        out[f"hit_rate@{k}"] = metrics.hit_rate_at_k(recs, data.truth, k)
        out[f"coverage@{k}"] = metrics.coverage_at_k(recs, n_items, k)
        out[f"cold_recall@{k}"] = metrics.recall_at_k(recs, data.cold_truth, k)  # users who bought a cold item
    out["map@12"] = metrics.map_at_k(recs, data.truth, 12)
    return out


def slots_method(n: int) -> str:
    """The method name of the served graph exported with ``n`` new-item slots."""
    return f"served, {n} new-item slot" + ("s" if n != 1 else "")


def evaluate(run: str | Path, ks: list[int] | None = None, progress: Callable[[str], None] | None = None,
             new_item_slots: list[int] | None = None) -> dict:
    """Evaluate every applicable method on the test split; write JSON, Markdown and PNG into RUN.
    ``new_item_slots``: the served graph is also exported and asked with each of these numbers of
    new-item slots (:func:`slots_method` names them), side by side with ``served`` (none)."""
    run = Path(run)
    pre = run_pre_dir(run)
    ks = sorted(set(ks or [10, 12]))
    kmax = max(ks + [12])
    data = EvalData(pre)
    dataset_dir = Path(data.manifest["dataset"]["path"])
    progress = progress or (lambda name: None)

    served_facts: dict[str, Any] = {}

    def served_lists() -> list[list]:
        recs, facts = served(data, run, kmax)
        served_facts.update(facts)
        return recs

    methods: dict[str, Callable[[], list[list]]] = {"served": served_lists}
    for n in sorted(set(new_item_slots or []) - {0}):
        methods[slots_method(n)] = lambda n=n: served(data, run, kmax, new_item_slots=n)[0]
    methods["popularity"] = lambda: popularity(data, kmax)
    if data.repurchase:
        methods["repurchase"] = lambda: repurchase(data, kmax)
    methods["retrieval"] = lambda: retrieval(data, run, kmax)
    ranker_figures: dict[str, float] = {}
    ranking_manifest = read_ranking_manifest(run)
    if ranking_manifest is not None:
        n_candidates = ranking_manifest["config"]["candidates"]
        use_ranker = bool(ranking_manifest.get("use_ranker", True))
        ranker_figures["ranker_used"] = use_ranker

        def ranked() -> list[list]:
            recs, figures = funnel_ranked(data, run, kmax, n_candidates)
            ranker_figures.update(figures)
            return recs

        methods["retrieval+ranking"] = ranked
    if (dataset_dir / "ground_truth" / "generator.json").exists():
        methods["oracle"] = lambda: oracle(data, dataset_dir, kmax)

    results: dict[str, dict[str, float]] = {}
    for name, make in methods.items():
        progress(name)
        results[name] = score(name, make(), data, ks)
    if "oracle" in results:
        for name, figures in results.items():
            for k in ks:
                best = results["oracle"][f"recall@{k}"]
                figures[f"share_of_oracle@{k}"] = figures[f"recall@{k}"] / best if best else 0.0
    report = {
        "run": str(run.resolve()),
        "dataset": data.manifest["dataset"]["name"],
        "split": data.manifest["split"],
        "test_users": int(len(data.users)),
        "test_rows": int(len(data.test)),
        "cold_items": {"items": len(data.cold), "test_rows": int(data.test["item_id"].isin(data.cold).sum()),
                       "test_users": int(sum(bool(t) for t in data.cold_truth))},
        "repurchase_domain": data.repurchase,
        "ks": ks,
        "methods": results,
        "served": served_facts,
        "ranker_on_test_candidates": ranker_figures or None,
    }
    write_manifest(run / "evaluation.json", report)
    write_markdown(report, run)
    return report


def write_markdown(report: dict, run: Path) -> None:
    """evaluation.md with a table per method and evaluation.png (recall@k side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["ks"]
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{ks[-1]}", "map@12", f"hit_rate@{ks[-1]}", f"coverage@{ks[-1]}",
                                          f"cold_recall@{ks[-1]}"]
    lines = [f"# Evaluation: {report['dataset']}", "",
             f"{report['test_users']:,} test users, {report['test_rows']:,} test interactions; split {report['split']['how']}.",
             "", "| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, figures in report["methods"].items():
        label = f"**{name}**" if name == "served" else name
        lines.append(f"| {label} | " + " | ".join(f"{figures[c]:.4f}" for c in cols) + " |")
    facts = report.get("served") or {}
    lines += ["", "`served` is the exported graph answering every test user (what Triton serves; inventory "
              f"{facts.get('inventory', '?')}); the other rows are its stages and peers.",
              "", "![methods](evaluation.png)", ""]
    (run / "evaluation.md").write_text("\n".join(lines))

    names = list(report["methods"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    width = 0.8 / len(ks)
    for i, k in enumerate(ks):
        values = [report["methods"][n][f"recall@{k}"] for n in names]
        bars = ax.bar(np.arange(len(names)) + i * width, values, width, label=f"Recall@{k}")
        for name, bar in zip(names, bars):
            if name == "served":  # the headline: what the exported graph answers
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
    ax.set_xticks(np.arange(len(names)) + width * (len(ks) - 1) / 2, names,
                  rotation=20 if max(map(len, names)) > 12 else 0, ha="right" if max(map(len, names)) > 12 else "center")
    ax.set_ylabel("Recall")
    ax.set_title(f"{report['dataset']}: methods side by side")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "evaluation.png", dpi=110)
    plt.close(fig)
