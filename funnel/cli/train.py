"""``funnel train retrieval|ranking``: thin wrappers over ``models.retrieval.train`` and ``models.ranking.train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from funnel.cli.args import add_config_arguments, config_from_args
from models.config import RankingConfig, RetrievalConfig


def register(sub) -> None:
    train = sub.add_parser("train", help="train the retriever or the ranker")
    tsub = train.add_subparsers(dest="model", metavar="MODEL")
    tsub.required = True

    p = tsub.add_parser("retrieval", help="two-tower retriever (in-batch negatives, logQ correction)")
    p.add_argument("pre_dir", metavar="PRE", help="preprocessing output directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--config", help="YAML file with RetrievalConfig fields; flags override it")
    add_config_arguments(p, RetrievalConfig, skip=("pre", "out"), title="RetrievalConfig fields (override --config)")
    p.set_defaults(func=retrieval)

    p = tsub.add_parser("ranking", help="DLRM ranker on retriever candidates (hard + random negatives)")
    p.add_argument("pre_dir", metavar="PRE", help="preprocessing output directory")
    p.add_argument("--run", required=True, help="run directory with the trained retriever")
    p.add_argument("--config", help="YAML file with RankingConfig fields; flags override it")
    add_config_arguments(p, RankingConfig, skip=("pre", "run"), title="RankingConfig fields (override --config)")
    p.set_defaults(func=ranking)


class EpochBars:
    """``on_rows(epoch, done, rows)`` for the trainers: a progress bar per epoch (tqdm on stderr) where
    stderr is a terminal; elsewhere (a log file, a supervisor) a plain line every ``LOG_SECONDS``
    with the rows done, the rate and the time left, so a long epoch is never silent."""

    LOG_SECONDS = 60.0

    def __init__(self, name: str, clock=None):
        import time

        self.name, self.bar, self.epoch = name, None, 0
        self.clock = clock or time.monotonic
        self.terminal = sys.stderr.isatty()
        self.started = self.logged = 0.0

    def __call__(self, epoch: int, done: int, rows: int) -> None:
        if epoch != self.epoch:
            self.close()
            self.epoch, self.started = epoch, self.clock()
            self.logged = self.started
        if not self.terminal:
            self._log(done, rows)
            return
        from funnel.report import progress

        if self.bar is None:
            self.bar = progress(rows, f"{self.name} epoch {epoch}")
        self.bar.update(done - self.bar.n)

    def _log(self, done: int, rows: int) -> None:
        now = self.clock()
        if now - self.logged < self.LOG_SECONDS or done <= 0:
            return
        self.logged = now
        rate = done / max(now - self.started, 1e-9)
        left = (rows - done) / rate if rate > 0 else float("inf")
        print(f"{self.name} epoch {self.epoch}: {done:,} / {rows:,} rows ({100 * done / max(rows, 1):.1f}%)  "
              f"{rate:,.0f} rows/s  about {left / 60:.0f} min left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def device_text(manifest: dict) -> str:
    n = manifest.get("replicas", 1)
    return manifest["device"] + (f" x {n} replicas (MirroredStrategy)" if n > 1 else "")


def retrieval(args: argparse.Namespace) -> None:
    from funnel.report import table
    from models.retrieval import train

    cfg = config_from_args(RetrievalConfig, args, pre=args.pre_dir, out=args.out)
    key = f"valid_recall@{cfg.valid_k}"

    bars = EpochBars("two-tower")

    def on_epoch(rec: dict) -> None:
        bars.close()
        figure = "(refit: every training row)" if rec.get("refit") else f"{key} {rec[key]:.4f}"
        print(f"epoch {rec['epoch']:>3}  loss {rec['loss']:.4f}  {figure}  "
              f"{rec['seconds']:.1f} s  {rec['samples_per_s']:,} samples/s", file=sys.stderr, flush=True)

    try:
        m = train(cfg, on_epoch=on_epoch, on_rows=bars)
    finally:
        bars.close()
    rows = [
        ("device", device_text(m)),
        ("epochs run (best)", f"{m['epochs_run']} ({m['best_epoch']})"),
        (key, f"{m['metrics'][key]:.4f}"),
        ("train rows / valid users", f"{m['data']['fit_rows']:,} / {m['data']['valid_users']:,}"),
        ("time", f"{m['train_seconds']:.1f} s ({m['samples_per_s']:,} samples/s, batch {cfg.batch_size})"),
    ]
    if m.get("refit"):
        refit = m["refit"]
        rows.append(("served towers: refit", f"{refit['epochs']} epochs on {refit['fit_rows']:,} rows (the validation "
                                             f"period too), {refit['train_seconds']:.1f} s"))
    rows.append(("written to", cfg.out))
    print(table(rows, title="funnel train retrieval: done"))


def ranking(args: argparse.Namespace) -> None:
    from funnel.report import table
    from models.ranking import train

    cfg = config_from_args(RankingConfig, args, pre=args.pre_dir, run=args.run)
    key, gate = f"valid_recall@{cfg.valid_k}", f"gate_recall@{cfg.valid_k}"

    bars = EpochBars("DLRM")

    def on_epoch(rec: dict) -> None:
        bars.close()
        print(f"epoch {rec['epoch']:>3}  loss {rec['loss']:.4f}  valid AUC {rec['valid_auc']:.4f}  "
              f"log loss {rec['valid_logloss']:.4f}  recall@{cfg.valid_k} {rec[key]:.4f}  "
              f"{rec['seconds']:.1f} s  {rec['samples_per_s']:,} samples/s", file=sys.stderr, flush=True)

    try:
        m = train(cfg, on_epoch=on_epoch, on_step=lambda text: print(text, file=sys.stderr, flush=True), on_rows=bars)
    finally:
        bars.close()
    d = m["data"]
    rows = [
        ("device", device_text(m)),
        ("label period from", d["label_period_start"][:19] + (
            f" (+ {len(d['label_windows']) - 1} earlier: {sum(w['positives'] for w in d['label_windows'][1:]):,} positives)"
            if len(d.get("label_windows", [])) > 1 else "")),
        ("rows: positives / hard / random", f"{d['positives']:,} / {d['hard_negatives']:,} / {d['random_negatives']:,}"),
        ("label items among candidates", f"{d['label_recall_of_candidates']:.1%}"),
        ("valid AUC / log loss", f"{m['metrics']['valid_auc']:.4f} / {m['metrics']['valid_logloss']:.4f}"),
        (f"gate recall@{cfg.valid_k}: blend with / without ranker",
         f"{m['metrics'][gate]:.4f} / {m['metrics'][f'{gate}_blend_order']:.4f} on {d['gate_users']:,} users "
         f"({d.get('gate_lists', d['gate_users']):,} lists), "
         f"lift 95% CI [{m['metrics']['gate_lift_ci95'][0]:+.4f}, {m['metrics']['gate_lift_ci95'][1]:+.4f}]"
         + ("" if m["use_ranker"] else f"  (ranker not used: {m.get('gate_reason', 'no confident gain over the blend order')})")),
        *([("item-item source", f"EASE lambda {m['item_item']['lambda']:g}, recency {m['item_item'].get('recency', 0):g}, "
                                   f"bought-next weight {m['item_item'].get('sequence', 0):g}")] if m["item_item"] else []),
        ("blend without ranker", ", ".join(f"{w:.2f} {n}" for n, w in m["blend"]["weights"].items() if w)),
        ("blend with ranker", ", ".join(f"{w:.2f} {n}" for n, w in m["blend"]["with_ranker"]["weights"].items() if w)),
        (f"gate recall@{cfg.valid_k} by ranker shortlist", ", ".join(
            f"{n} {v:.4f}" for n, v in m["blend"].get(f"gate_recall@{cfg.valid_k}_by_shortlist", {}).items())
         + f"  (serving ranks {cfg.shortlist or 'all'})"),
        (f"gate recall@{cfg.valid_k} by one score", ", ".join(
            f"{n} {v:.4f}" for n, v in m["blend"][f"gate_recall@{cfg.valid_k}_by_score"].items())),
        ("time", f"{m['train_seconds']:.1f} s training ({m['samples_per_s']:,} samples/s, batch {cfg.batch_size}), "
                 f"{d['build_seconds']:.1f} s building data"),
        ("written to", str(Path(cfg.run) / "ranker")),
    ]
    print(table(rows, title="funnel train ranking: done"))
