"""``funnel notify simulate | train | decide | ope``: the notification stage after the funnel."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from funnel.cli.args import positive


def register(sub) -> None:
    notify = sub.add_parser("notify", help="push notifications: simulate policies, learn one from an "
                                           "exploration log, decide send/skip per user, evaluate off-policy")
    nsub = notify.add_subparsers(dest="action", metavar="ACTION")
    nsub.required = True
    p = nsub.add_parser("simulate", help="run always / threshold / cap / model in the simulator (ground truth)")
    p.add_argument("--users", type=positive, default=2000)
    p.add_argument("--days", type=positive, default=30)
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (means over seeds)")
    p.add_argument("--explore", type=float, default=0.5, help="push probability of the exploration log")
    p.add_argument("--log-users", type=positive, help="users in the exploration log (default: --users)")
    p.add_argument("--no-ope", dest="ope", action="store_false", help="skip the off-policy estimates")
    p.add_argument("--json", dest="json_path", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG of daily active users per policy")
    p.add_argument("--log", help="also write the first seed's exploration log here (decisions/ and "
                                 "outcomes.parquet, the format `notify decide` writes)")
    p.set_defaults(func=simulate)

    p = nsub.add_parser("train", help="learn response models and a planning policy from an exploration log")
    p.add_argument("log", help="decision log: a folder of decisions-*.parquet (or one file)")
    p.add_argument("--outcomes", required=True, help="events file (parquet/CSV): user_id, day, event "
                                                     "(open | disable | visit)")
    p.add_argument("--out", required=True, help="policy file to write (JSON)")
    p.add_argument("--kind", choices=("model", "threshold", "cap", "always"), default="model")
    p.add_argument("--threshold", type=float, help="threshold kind: push when P(open) > this "
                                                    "(default: the best by model rollouts on the log)")
    p.add_argument("--cap", type=int, default=3, help="cap kind: pushes per 7 days")
    p.add_argument("--horizon", type=positive, default=14, help="model kind: days planned ahead")
    p.add_argument("--rollouts", type=positive, default=32, help="model kind: simulations per action")
    p.set_defaults(func=train)

    p = nsub.add_parser("decide", help="send or skip for each user, with the funnel's top item")
    p.add_argument("policy", help="policy file from `funnel notify train`")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="gRPC HOST:PORT of a running funnel server")
    where.add_argument("--run", help="an exported repository (funnel export), answered in this process")
    p.add_argument("--users-file", required=True, help="user ids (one per line), or parquet/CSV with user_id and "
                                                       "the history columns (missing ones: no history yet)")
    p.add_argument("--explore", type=float, default=0.0, help="share of decisions made at random (0..1), "
                                                              "with propensities logged")
    p.add_argument("--seed", type=int, default=None, help="seed of the exploration coin")
    p.add_argument("--log", help="append the decisions to this decision-log folder")
    p.add_argument("--tls-ca", metavar="PEM", help="with --url: TLS, trusting this certificate")
    p.add_argument("--json", action="store_true", help="one JSON line per user")
    p.set_defaults(func=decide)

    p = nsub.add_parser("ope", help="estimate a policy's value from an exploration log (IPS, SNIPS, DR)")
    p.add_argument("log", help="decision log folder (or file)")
    p.add_argument("--outcomes", required=True, help="events file: user_id, day, event")
    p.add_argument("--policy", required=True, action="append", help="policy file (repeatable)")
    p.add_argument("--window-days", type=positive, default=7, help="reward: active days in this window")
    p.add_argument("--json", dest="json_path", help="write the estimates as JSON here")
    p.set_defaults(func=ope)


def simulate(args: argparse.Namespace) -> None:
    from funnel.core.errors import FunnelError
    from funnel.notify import experiment
    from funnel.notify.simulator import NotifyConfig
    from funnel.report import table

    if not 0 < args.explore < 1:
        raise FunnelError(f"--explore {args.explore}: must be in (0, 1)")
    cfg = NotifyConfig(users=args.users, days=args.days, seed=args.seed[0])
    if args.ope and args.days < 8:
        raise FunnelError("notify simulate: the off-policy estimates need --days >= 8 (or give --no-ope)")

    def note(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    result = experiment.compare(cfg, args.seed, args.explore, args.log_users, args.ope, note)
    rows = []
    for name, e in result["policies"].items():
        row = [name, f"{e['sends_per_user_day']:.3f}", f"{e['open_rate']:.3f}",
               f"{e['active_days_per_user']:.2f} ± {e['se']['active_days_per_user']:.2f}",
               f"{e['disable_rate']:.3f}", f"{e['churn_rate']:.3f}"]
        if args.ope:
            covered = e["ope_covered"]
            row.append(f"IPS {covered['ips']}/{len(args.seed)}, DR {covered['dr']}/{len(args.seed)}")
        rows.append(row)
    header = ["policy", "sends/user/day", "open rate", "active days/user", "disabled", "churned"]
    header += ["truth inside OPE interval"] if args.ope else []
    print(table(rows, header=header, title=f"funnel notify simulate: {args.users:,} users, {args.days} days, "
                                           f"seeds {', '.join(map(str, args.seed))}"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        experiment.plot(result, args.plot)
    if args.log:
        _write_simulated_log(cfg, args.explore, args.log_users, Path(args.log))


def _write_simulated_log(cfg, explore: float, users: int | None, folder: Path) -> None:
    from funnel.notify import decision_log
    from funnel.notify.experiment import exploration_log

    log = exploration_log(cfg, explore, users)
    decisions = log["log"].drop(columns=["opened", "disabled", "active"])
    decision_log.write_decisions(decisions, folder / "decisions", policy=f"random {explore:g}")
    decision_log.write_outcomes(decision_log.simulated_events(log["log"], log["activity"]), folder / "outcomes.parquet")
    print(f"exploration log: {len(decisions):,} decisions in {folder / 'decisions'}, outcomes in "
          f"{folder / 'outcomes.parquet'}")


def _joined(log: str, outcomes: str):
    from funnel.notify import decision_log

    return decision_log.join(decision_log.read_decisions(log), decision_log.read_outcomes(outcomes))


def train(args: argparse.Namespace) -> None:
    from funnel.notify import policies
    from funnel.notify.response import ResponseModels
    from funnel.report import table

    decisions, activity, days = _joined(args.log, args.outcomes)
    if args.kind == "model":
        from funnel.notify.evaluation import window_rewards

        policy = policies.train(decisions, horizon=args.horizon, rollouts=args.rollouts,
                                rewards=window_rewards(decisions, activity, days))
    elif args.kind == "threshold":
        models = ResponseModels.fit(decisions)
        t = args.threshold
        if t is None:
            from funnel.notify.history import FEATURES

            sample = decisions.sample(min(2000, len(decisions)), random_state=0)[list(FEATURES)].to_numpy(float)
            t, _ = policies.best_continuation(models, sample, args.horizon)
        policy = policies.Threshold(models, t)
    elif args.kind == "cap":
        policy = policies.Cap(args.cap)
    else:
        policy = policies.Always()
    policies.save(policy, args.out)
    sent = int(decisions["send"].sum())
    rows = [("decisions", f"{len(decisions):,} over {days} days ({sent:,} pushed, "
                          f"{int(decisions['opened'].sum()):,} opened)"),
            ("policy", f"{policy.kind} {json.dumps({k: v for k, v in policy.params().items() if k != 'check'})}")]
    check = getattr(policy, "check", None)
    if check:
        verdict = "planner kept" if check["use_plan"] else "no confident gain: the policy is its threshold"
        rows.append(("planner vs its threshold", f"{check['estimate']:+.4f} active days per decision (DR on the log), "
                                                 f"95% CI [{check['low']:+.4f}, {check['high']:+.4f}] over "
                                                 f"{check['differing']:,} differing decisions: {verdict}"))
    rows.append(("written to", args.out))
    print(table(rows, title="funnel notify train"))


def _read_users(path: str):
    import pandas as pd

    from funnel.core.errors import FunnelError
    from funnel.notify.history import HISTORY_FEATURES

    p = Path(path)
    if not p.is_file():
        raise FunnelError(f"{p}: users file not found")
    if p.suffix in (".parquet", ".csv"):
        frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
        if "user_id" not in frame.columns:
            raise FunnelError(f"{p}: no column 'user_id'")
    else:
        ids = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
        frame = pd.DataFrame({"user_id": [i for i in ids if i != "user_id"]})
    if frame.empty:
        raise FunnelError(f"{p}: no users")
    frame["user_id"] = frame["user_id"].astype(str)
    defaults = {"pushes_7d": 0, "opens_7d": 0, "ignored_7d": 0, "active_7d": 0, "days_since_push": 30,
                "days_since_active": 30, "open_rate": 0.25, "organic_rate": 0.25}
    for column in HISTORY_FEATURES:
        if column not in frame.columns:
            frame[column] = defaults[column]
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values < 0)
        if bad.any():
            raise FunnelError(f"{p}: column '{column}', user {frame['user_id'][bad].iloc[0]}: "
                              f"{frame[column][bad].iloc[0]!r} is not a number >= 0")
        frame[column] = values.astype(float)
    return frame


def _top_items(args: argparse.Namespace, users: list[str]) -> tuple[list[str], list[float]]:
    """The funnel's top item and its score per user ("" and NaN when nothing survives its filters)."""
    import numpy as np

    items, scores = [], []
    if args.url:
        from funnel.cli.serve import _client

        with _client(args.url, 256, args.tls_ca) as client:
            for rec in client.recommend(users, 1):
                items.append(rec.items[0] if rec.items else "")
                scores.append(rec.scores[0] if rec.items else float("nan"))
        return items, scores
    from ensemble.runtime import Recommender
    from funnel.core.artifacts import ensemble_dir, read_export_manifest

    read_export_manifest(args.run)
    recommender = Recommender(ensemble_dir(args.run))
    for start in range(0, len(users), recommender.max_batch):
        out = recommender.recommend(np.array(users[start : start + recommender.max_batch], dtype=object), k=1)
        for ids, sc in zip(out["item_ids"], out["scores"]):
            ok = len(ids) > 0 and bool(ids[0])
            items.append(ids[0].decode() if ok else "")
            scores.append(float(sc[0]) if ok else float("nan"))
    return items, scores


def decide(args: argparse.Namespace) -> None:
    from funnel.notify.decide import decide_users
    from funnel.notify import policies
    from funnel.report import table

    policy = policies.load(args.policy)
    frame = _read_users(args.users_file)
    frame["item_id"], frame["score"] = _top_items(args, frame["user_id"].tolist())
    decisions = decide_users(policy, frame, args.explore, args.seed)
    if args.log:
        from funnel.notify import decision_log

        decision_log.write_decisions(decisions, args.log, policy=policy.kind)
    if hasattr(policy, "models"):
        pool = policy.models.score_pool
        outside = ((frame["score"] < pool.min()) | (frame["score"] > pool.max())).mean()
        if outside > 0.1:
            print(f"funnel: warning: {outside:.0%} of today's scores lie outside the range the policy was trained "
                  f"on ({pool.min():.3g} .. {pool.max():.3g}): train it on decisions logged with this funnel",
                  file=sys.stderr)
    if args.json:
        for rec in decisions.to_dict("records"):
            doc = {k: rec[k] for k in ("user_id", "decision", "item_id", "score", "p_open", "gain", "p_send",
                                       "propensity")}
            print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in doc.items()}))
        return
    rows = [[r.user_id, r.decision, r.item_id or "-", f"{r.score:.4f}", f"{r.p_open:.3f}",
             "-" if r.gain != r.gain else f"{r.gain:+.3f}", f"{r.p_send:.2f}"] for r in decisions.itertuples()]
    print(table(rows, header=["user", "decision", "item", "score", "P(open)", "gain (active days)", "P(send)"],
                title=f"funnel notify decide: {policy.kind} policy, {int((decisions['decision'] == 'send').sum())} "
                      f"of {len(decisions)} users pushed"))


def ope(args: argparse.Namespace) -> None:
    import numpy as np

    from funnel.notify import evaluation, policies
    from funnel.notify.history import FEATURES
    from funnel.report import table

    decisions, activity, days = _joined(args.log, args.outcomes)
    rows = evaluation.window_rewards(decisions, activity, days, args.window_days)
    feats = rows[list(FEATURES)].to_numpy(np.float64)
    doc = {"decisions": len(rows), "window_days": args.window_days,
           "logging_value": float(rows["reward"].mean()), "policies": {}}
    table_rows = [("logging policy (observed)", f"{doc['logging_value']:.3f} active days per decision window")]
    for path in args.policy:
        policy = policies.load(path)
        p_send = np.zeros(len(rows))
        day = rows["day"].to_numpy()
        for d in np.unique(day):
            sel = day == d
            p_send[sel] = policy.decide(feats[sel], np.ones(int(sel.sum()), bool), int(d))
        est = evaluation.estimate(rows, p_send)
        doc["policies"][path] = est
        for name in ("ips", "snips", "dr"):
            e = est[name]
            table_rows.append((f"{Path(path).name} ({policy.kind}), {name.upper()}",
                               f"{e['estimate']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"))
    print(table(table_rows, title=f"funnel notify ope: active days in the {args.window_days} days after a decision"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
