"""README tables rendered from bench/results/*.json (what the benchmark scripts wrote).

    python bench/readme_tables.py          # rewrite the marked tables in README.md
    python bench/readme_tables.py --check  # exit 1 when README.md differs from the results

A table lives between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md and is
rendered from ``bench/results/NAME.json``; ``tests/unit/test_readme_figures.py`` runs the check,
so a README figure cannot drift from the file the benchmark wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COLUMNS = [("served", "served"), ("popularity", "popularity"), ("repurchase", "repurchase"),
           ("retrieval", "retrieval"), ("retrieval+ranking", "retrieval + ranking"), ("implicit-als", "implicit ALS"),
           ("ease", "EASE"), ("ease-recency", "EASE, recency-weighted"), ("item-knn", "item-kNN"), ("frequency", "own-purchase frequency"), ("oracle", "oracle")]


def _cells(values: dict, fmt) -> list[str]:
    return [fmt(values[key]) if key in values else "-" for key, _ in COLUMNS]


def _seeds(section: dict) -> str:
    seeds = section.get("seeds", [])
    if len(seeds) < 2:
        return ""
    return f", mean of seeds {seeds[0]}-{seeds[-1]}"


def _stage_lines(name: str, section: dict, metric: str) -> list[str]:
    """The served figure's standard error, the gate's decisions and the item-item source's tuning."""
    out = []
    if section.get(f"{metric}_se", {}).get("served"):
        out.append(f"{name}: served {metric} {section[metric]['served']:.4f} ± {section[f'{metric}_se']['served']:.4f} "
                   f"(standard error over {len(section['seeds'])} seeds)")
    used = section.get("ranker_used")
    if isinstance(used, list):
        out.append(f"{name}: ranker switched on by its gate in {sum(map(bool, used))} of {len(used)} runs")
    elif (section.get("ranker_on_test_candidates") or {}).get("ranker_used") is not None:
        out.append(f"{name}: ranker switched on by its gate: "
                   f"{'yes' if section['ranker_on_test_candidates']['ranker_used'] else 'no'}")
    stages = [st for st in section.get("ranking_stage", []) if st.get("item_item") and st.get("blend")]
    if stages:
        short = {"retrieval_score": "two-tower", "item_item_score": "item-item", "pair_purchases": "own count",
                 "pair_days_since": "own recency", "new_item": "freshness"}
        def tuned(ii: dict) -> str:
            extra = [f"{label} {ii[key]:g}" for key, label in (("recency", "recency"), ("sequence", "bought-next"))
                     if ii.get(key)]
            return f"{ii['lambda']:g}" + (f" ({', '.join(extra)})" if extra else "")

        lams = ", ".join(tuned(st["item_item"]) for st in stages)
        weights = "; ".join(" + ".join(f"{w:.2f} {short.get(n, n)}" for n, w in st["blend"]["weights"].items() if w)
                            for st in stages)
        out.append(f"{name}: item-item source EASE lambda {lams}; blend per run: {weights} "
                   "(tuned on the label period)")
        gate = [st["gate"] for st in stages]
        k = next(key for key in gate[0] if key.startswith("gate_recall@") and key.count("_") == 1)
        if all("gate_lift_latest_period" in g for g in gate):  # judged on several label periods
            out.append(f"{name}: gate lift per run, all label periods (95% interval) / the latest period alone: "
                       + "; ".join(f"{g['gate_lift']:+.3f} [{g['gate_lift_ci95'][0]:+.3f}, {g['gate_lift_ci95'][1]:+.3f}]"
                                   f" / {g['gate_lift_latest_period']:+.3f}" for g in gate))
        if all(k + "_ranker_alone" in g for g in gate):  # the ranker's logit joins the blend
            shares = [((st["blend"].get("with_ranker") or {}).get("weights") or {}).get("ranker_score", 0.0)
                      for st in stages]
            out.append(f"{name}: gate users' {k.split('_')[1]} per run, blend with ranker / without / ranker alone "
                       "(its share of the blend): " + "; ".join(
                           f"{g[k]:.3f} / {g[k + '_blend_order']:.3f} / {g[k + '_ranker_alone']:.3f} ({r:.1f})"
                           for g, r in zip(gate, shares)))
        else:
            out.append(f"{name}: gate users' {k.split('_')[1]}, ranker vs blend order per run: "
                       + "; ".join(f"{g[k]:.3f} vs {g[k + '_blend_order']:.3f}" for g in gate))
    timed = section.get("training_seconds") or []
    if timed and all(timed):  # wall clock of `funnel train retrieval` and `funnel train ranking` per run
        out.append(f"{name}: training per run, retrieval + ranking: " + "; ".join(
            f"{t['retrieval']:.0f} + {t['ranking']:.0f} s = {(t['retrieval'] + t['ranking']) / 60:.1f} min" for t in timed))
    return out


def quality(doc: dict) -> str:
    """The quality table: every method of bench/quality.py, per data set, and each bar met or missed."""
    lines = ["| data | metric | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    bars = []
    if "synthetic" in doc:
        s = doc["synthetic"]
        lines.append(f"| synthetic default (time split){_seeds(s)} | Recall@12 | "
                     + " | ".join(_cells(s["recall@12"], lambda v: f"{v:.4f}")) + " |")
        if "recall@12_per_seed" in s:
            lines.append("| synthetic default, per seed | Recall@12 | "
                         + " | ".join(_cells(s["recall@12_per_seed"], lambda v: " / ".join(f"{x:.3f}" for x in v)))
                         + " |")
        lines.append("| synthetic default | share of oracle@12 | "
                     + " | ".join(_cells(s["share_of_oracle@12"], lambda v: f"{v:.0%}")) + " |")
        lines.append("| synthetic default | MAP@12 | " + " | ".join(_cells(s["map@12"], lambda v: f"{v:.4f}")) + " |")
        if "cold_recall@12" in s:  # test purchases of items never bought in training
            lines.append("| synthetic default | cold-item Recall@12 | "
                         + " | ".join(_cells(s["cold_recall@12"], lambda v: f"{v:.4f}")) + " |")
        bars += _stage_lines("synthetic", s, "recall@12")
        reach = [v for v in s.get("cold_recall_of_candidates") or [] if v is not None]
        if reach:  # the new-item source: cold items' test purchases anywhere in the served candidate lists
            bars.append("synthetic: cold items' test purchases among the served graph's candidates, per run: "
                        + ", ".join(f"{v:.3f}" for v in reach))
        for n, v in (s.get("new_item_slots") or {}).items():  # the export rule, side by side with the default
            bars.append(f"synthetic: served with {n} of the 12 places kept for new items (`--new-item-slots {n}`): "
                        f"Recall@12 {v['recall@12']:.4f} ± {v['recall@12_se']:.4f} (default {s['recall@12']['served']:.4f}), "
                        f"cold-item Recall@12 {v['cold_recall@12']:.4f} (default {s['cold_recall@12']['served']:.4f})")
        bars += [f"synthetic: {bar}: {'met' if met else 'MISSED'}" for bar, met in s["bars"].items()]
    for key, name in (("movielens-100k", "MovieLens-100k"), ("movielens-latest-small", "MovieLens latest-small")):
        if key not in doc:
            continue
        m = doc[key]
        lines.append(f"| {name} (user-last){_seeds(m)} | Recall@10 | "
                     + " | ".join(_cells(m["recall@10"], lambda v: f"{v:.4f}")) + " |")
        if len(m.get("seeds", [])) > 1:
            lines.append(f"| {name}, per seed | Recall@10 | "
                         + " | ".join(_cells(m["recall@10_per_seed"], lambda v: " / ".join(f"{x:.3f}" for x in v)))
                         + " |")
        bars += _stage_lines(name, m, "recall@10")
        bars += [f"{name}: {bar}: {'met' if met else 'MISSED'}" for bar, met in m["bars"].items()]
    return "\n".join(lines + [""] + [f"- {b}" for b in bars])


def notify(doc: dict) -> str:
    """The notification table of bench/notify.py: every policy, its OPE check, each target met or missed."""
    seeds = len(doc["config"]["seeds"])
    lines = ["| policy | pushes per user-day | open rate | active days per user (± s.e.) | notifications disabled | "
             "churned | 7-day value: truth / DR estimate | truth inside the 95% interval: IPS, DR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in doc["policies"].items():
        truth = sum(s["policies"][name]["ope"]["truth"] for s in doc["seeds"]) / seeds
        dr = sum(s["policies"][name]["ope"]["dr"]["estimate"] for s in doc["seeds"]) / seeds
        lines.append(f"| {name} | {e['sends_per_user_day']:.3f} | {e['open_rate']:.3f} | "
                     f"{e['active_days_per_user']:.2f} ± {e['se']['active_days_per_user']:.2f} | "
                     f"{e['disable_rate']:.1%} | {e['churn_rate']:.1%} | {truth:.3f} / {dr:.3f} | "
                     f"{e['ope_covered']['ips']}/{seeds}, {e['ope_covered']['dr']}/{seeds} |")
    bars = [f"{bar}: {met if isinstance(met, str) else ('met' if met else 'MISSED')}"
            for bar, met in doc["targets"].items()]
    return "\n".join(lines + [""] + [f"- {b}" for b in bars])


def notify_oracle(doc: dict) -> str:
    """The table of bench/notify_oracle.py: policies that see the hidden state, against the oracle threshold."""
    base = doc["policies"]["oracle threshold"]["active_days_per_user"]
    lines = ["| policy (reads the hidden state, except the first) | active days per user (± s.e.) | "
             "vs the oracle threshold | per seed | tuned on validation, per seed |",
             "|---|---:|---:|---:|---|"]
    for name, e in doc["policies"].items():
        tuned = ", ".join(str(r["tuned"][name]) if name in r["tuned"] else "-" for r in doc["seeds"])
        lines.append(f"| {name} | {e['active_days_per_user']:.3f} ± {e['se']:.3f} | "
                     f"{e['active_days_per_user'] - base:+.3f} | "
                     + " / ".join(f"{v:.3f}" for v in e["per_seed"]) + f" | {tuned} |")
    return "\n".join(lines)


def batching_ranker(doc: dict) -> str:
    """bench/batching.py with the ranker on: each shortlist, the Python and (where it ran) the C++ load generator."""
    lines = ["| ranker scores | batcher | model instances | c=1 p50 / p99 ms | c=16 users/s | c=16 p99 ms | "
             "c=16 users/s, perf_analyzer | c=16 p99 ms, perf_analyzer | 64-user requests, c=4: users/s | "
             "same lists as alone |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        ranker = "off" if not r.get("ranker") else (f"top {r['ranker_shortlist']}" if r.get("ranker_shortlist")
                                                    else "every candidate")
        batcher = "off" if r["batch_delay_us"] < 0 else f"{r['batch_delay_us']} us"
        c1, c16, b64, pa = r["single_c1"], r["single_c16"], r["batch64_c4"], r.get("single_c16_pa")
        pa_cells = f"{pa['users_per_s']:,.0f} | {pa['p99_ms']:.1f}" if pa else "- | -"
        lines.append(f"| {ranker} | {batcher} | {r.get('instances', 1)} | {c1['p50_ms']:.1f} / {c1['p99_ms']:.1f} | {c16['users_per_s']:,.0f} | "
                     f"{c16['p99_ms']:.1f} | {pa_cells} | {b64['users_per_s']:,.0f} | "
                     f"{r['parity']['identical_item_lists']}/{r['parity']['users']} |")
    return "\n".join(lines)


def optimizer(doc: dict) -> str:
    """bench/optimizer.py: one training step of the two-tower model as the user table grows, per optimizer."""
    lines = ["| users | items | Adam: ms per step | LazyAdam: ms per step | Adam: rows/s | LazyAdam: rows/s | "
             "LazyAdam's speed-up |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['users']:,} | {r['items']:,} | {r['adam_ms_per_step']:,.1f} | {r['lazy_adam_ms_per_step']:,.1f} | "
                     f"{r['adam_samples_per_s']:,} | {r['lazy_adam_samples_per_s']:,} | {r['speedup']:.1f}x |")
    return "\n".join(lines)


def data(doc: dict) -> str:
    """bench/data.py: generation and preprocessing per size (wall seconds, rows/s, peak RSS)."""
    lines = ["| interactions | users | stage | seconds | rows/s | peak RSS MiB |", "|---:|---:|---|---:|---:|---:|"]
    for r in doc["results"]:
        label = f"{r['interactions']:,}" + (" (hm)" if r["target"] == "hm" else "")
        for stage in ("generate", "preprocess"):
            s = r[stage]
            lines.append(f"| {label} | {r['users']:,} | {stage} | {s['seconds']:,.1f} | {s['rows_per_s']:,} | "
                         f"{s['peak_rss_mib']:,} |")
    return "\n".join(lines)


def data_workers(doc: dict) -> str:
    """bench/data.py --workers 0 N: the same data preprocessed in one process and on a local cluster."""
    lines = ["| interactions | preprocess | seconds | split / features / transform s | driver peak MiB | "
             "workers' peak MiB |", "|---:|---|---:|---|---:|---|"]
    for r in doc["results"]:
        label = f"{r['interactions']:,}" + (" (hm)" if r["target"] == "hm" else "")
        for s in r.get("preprocess_by_workers", [r["preprocess"]]):
            steps = s["steps_s"]
            how = f"{s['workers']} Dask workers" if s["workers"] else "one process"
            workers = ", ".join(f"{m:,}" for m in s["worker_peak_rss_mb"]) if s["worker_peak_rss_mb"] else "-"
            lines.append(f"| {label} | {how} | {s['seconds']:,.1f} | {steps['split']:.1f} / {steps['features']:.1f} / "
                         f"{steps['transform_retrieval']:.1f} | {s['driver_peak_rss_mb']:,} | {workers} |")
    return "\n".join(lines)


RENDERERS = {"data": data, "data_fixed_users": data, "data_workers": data_workers, "quality": quality, "notify": notify,
             "notify_oracle": notify_oracle, "batching_ranker": batching_ranker, "optimizer": optimizer}


def render(readme: str) -> str:
    """README text with every marked table re-rendered from its results file."""
    for name, renderer in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        pattern = re.compile(rf"(<!-- bench:{name} -->)(.*?)(<!-- /bench:{name} -->)", re.S)
        if not path.exists() or not pattern.search(readme):
            continue
        table = renderer(json.loads(path.read_text()))
        readme = pattern.sub(lambda m: m.group(1) + "\n" + table + "\n" + m.group(3), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    readme_path = ROOT / "README.md"
    current = readme_path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md tables differ from bench/results (run: python bench/readme_tables.py)", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
