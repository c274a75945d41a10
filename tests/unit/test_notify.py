"""Notification gating: the simulator's mechanics against its own equations computed here, the
observable history against counts made with pandas, the response models against known
coefficients, off-policy estimates against the simulated truth, the decision log's errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from funnel.core.errors import FunnelError
from funnel.notify import decision_log, evaluation, policies
from funnel.notify.history import FEATURES, History
from funnel.notify.simulator import NotifyConfig, Population, Simulator, run, summary

SMALL = NotifyConfig(users=1500, days=16, seed=3)


@pytest.fixture(scope="module")
def population():
    return Population.generate(SMALL)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_open_rate_follows_relevance_and_falls_with_fatigue(population):
    """Realised opens on a day match the documented open equation, at zero and at high fatigue."""
    cfg = SMALL
    rates = {}
    for fatigue in (0.0, 4.0):
        sim = Simulator(cfg, population)
        sim.hidden.fatigue[:] = fatigue
        sim.hidden.churned[:] = False
        day = sim.draw(0)
        expected = _sigmoid(cfg.open_base + cfg.open_relevance * day.relevance
                            - cfg.open_fatigue * population.sensitivity * fatigue)
        out = sim.step(np.ones(cfg.users, bool), day)
        assert out.sent.all()
        assert out.opened.sum() == pytest.approx(expected.sum(), abs=4 * np.sqrt(expected.sum()))
        rates[fatigue] = out.opened.mean()
        relevant = day.relevance > 0.5
        assert out.opened[relevant].mean() > out.opened[~relevant].mean() + 0.2
        assert np.allclose(sim.hidden.fatigue, cfg.fatigue_decay * fatigue + 1)  # a push adds one
    assert rates[4.0] < rates[0.0] - 0.1


def test_disabled_users_get_nothing_and_churned_users_never_come_back(population):
    result = run(SMALL, policies.Always(), population, record=True)
    log, activity = result["log"], result["activity"]
    first_disable = log[log["disabled"]].groupby("user_id")["day"].min()
    later = log.merge(first_disable.rename("off"), left_on="user_id", right_index=True)
    assert len(first_disable) > 50
    assert (later["day"] <= later["off"]).all()  # no decision (and no push) after the disable
    sim = Simulator(SMALL, population)
    sim.history.enabled[:10] = False
    out = sim.step(np.ones(SMALL.users, bool), sim.draw(0))
    assert not out.sent[:10].any() and out.sent[10:].all()
    sim.hidden.churned[:] = True
    for d in range(1, 4):
        out = sim.step(np.ones(SMALL.users, bool), sim.draw(d))
        assert not out.active.any() and not out.opened.any()
    assert result["daily"]["churned"][-1] > 0 and set(activity.columns) == {"user_id", "day"}


def test_same_seed_same_result_and_every_policy_faces_the_same_days(population):
    a = summary(run(SMALL, policies.Always(), population))
    b = summary(run(SMALL, policies.Always(), Population.generate(SMALL)))
    assert a == b
    c = summary(run(NotifyConfig(users=1500, days=16, seed=4), policies.Always()))
    assert c != a
    one, two = Simulator(SMALL, population), Simulator(SMALL, population)
    one.step(np.ones(SMALL.users, bool), one.draw(0))  # different actions ...
    two.step(np.zeros(SMALL.users, bool), two.draw(0))
    d1, d2 = one.draw(1), two.draw(1)  # ... the same items and coin flips the next day
    assert all(np.array_equal(getattr(d1, k), getattr(d2, k)) for k in vars(d1))


def test_history_features_equal_counts_over_the_last_seven_days():
    rng = np.random.default_rng(0)
    n, days = 50, 12
    sent = rng.random((days, n)) < 0.5
    opened = sent & (rng.random((days, n)) < 0.4)
    active = opened | (rng.random((days, n)) < 0.3)
    h = History.empty(n)
    for d in range(days):
        h.update(sent[d], opened[d], active[d], np.zeros(n, bool))
    f = pd.DataFrame(h.features(np.full(n, 0.5)), columns=list(FEATURES))
    last = slice(days - 7, days)
    assert (f["pushes_7d"] == sent[last].sum(0)).all()
    assert (f["opens_7d"] == opened[last].sum(0)).all()
    assert (f["ignored_7d"] == (sent & ~opened)[last].sum(0)).all()
    assert (f["active_7d"] == active[last].sum(0)).all()
    for u in range(n):
        pushed_days = np.flatnonzero(sent[:, u])
        assert f["days_since_push"][u] == (days - 1 - pushed_days[-1] if len(pushed_days) else 30)
    assert np.allclose(f["open_rate"], (opened.sum(0) + 0.5) / (sent.sum(0) + 2))
    assert np.allclose(f["organic_rate"], ((active & ~opened).sum(0) + 0.5) / (days + 2))
    rebuilt = policies.from_features_matrix(f.to_numpy())  # what a policy rebuilds from logged features
    assert np.allclose(rebuilt.features(np.full(n, 0.5)), f.to_numpy())


def test_logistic_regression_recovers_known_coefficients():
    from funnel.notify.response import Logistic

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40_000, 3))
    truth = np.array([1.5, -0.7, 0.0])
    y = rng.random(len(x)) < _sigmoid(-0.4 + x @ truth)
    model = Logistic.fit(x, y, l2=1e-6)
    assert np.allclose(model.coef / model.scale, truth, atol=0.06)
    assert model.predict(x).mean() == pytest.approx(y.mean(), abs=0.005)


def test_window_rewards_count_active_days_in_the_window():
    log = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "day": [0, 3, 0, 9], "send": True, "propensity": 0.5})
    activity = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"], "day": [0, 2, 7, 6, 7]})
    rows = evaluation.window_rewards(log, activity, days=10, window=7)
    assert rows[["user_id", "day", "reward"]].values.tolist() == [["a", 0, 2.0], ["a", 3, 1.0], ["b", 0, 1.0]]


class ScoreAbove:
    """Push when the funnel's score exceeds ``t`` (a deterministic target without a fitted model)."""

    def __init__(self, t):
        self.t = t

    def decide(self, features, enabled, day=0):
        return (features[:, 0] > self.t).astype(float)


def test_off_policy_estimates_cover_the_simulated_truth():
    """Ten random logs; for each, three targets estimated from the log and their truth on the log's
    users by simulating both actions at every decision: the 95% intervals cover it (>= 8 of 10),
    and the estimates are unbiased on average."""
    targets = {"always": policies.Always(), "cap": policies.Cap(2), "score": ScoreAbove(0.3)}
    covered = {(name, kind): 0 for name in targets for kind in ("ips", "dr")}
    errors = {name: [] for name in targets}
    for seed in range(10):
        cfg = NotifyConfig(users=500, days=14, seed=seed)
        population = Population.generate(cfg)
        log = run(cfg, policies.RandomSend(0.5), population, record=True)
        rows = evaluation.window_rewards(log["log"], log["activity"], cfg.days)
        feats = rows[list(FEATURES)].to_numpy()
        truth = evaluation.simulated_truth(cfg, policies.RandomSend(0.5), targets, reps=4, population=population)
        for name, policy in targets.items():
            est = evaluation.estimate(rows, policy.decide(feats, None, 0), bootstrap=200, seed=seed)
            for kind in ("ips", "dr"):
                covered[name, kind] += est[kind]["low"] <= truth[name] <= est[kind]["high"]
            errors[name].append(est["dr"]["estimate"] - truth[name])
            if name == "always":  # IPS by hand: weight 1 / 0.5 on pushed decisions, 0 on skipped ones
                by_hand = np.mean(np.where(rows["send"], rows["reward"] / 0.5, 0.0))
                assert est["ips"]["estimate"] == pytest.approx(by_hand)
        assert truth["score"] > truth["always"]  # pushing only likely opens beats pushing everyone
    assert all(n >= 8 for n in covered.values()), covered
    for name, e in errors.items():
        assert abs(np.mean(e)) < 3 * np.std(e) / np.sqrt(len(e)) + 1e-3, (name, e)


def test_decision_log_round_trip_and_clear_errors(tmp_path, population):
    log = run(NotifyConfig(users=200, days=10, seed=5), policies.RandomSend(0.5), record=True)
    decisions = log["log"].drop(columns=["opened", "disabled", "active"])
    decision_log.write_decisions(decisions, tmp_path / "d", policy="random")
    events = decision_log.simulated_events(log["log"], log["activity"])
    decision_log.write_outcomes(events, tmp_path / "o.parquet")
    joined, activity, days = decision_log.join(decision_log.read_decisions(tmp_path / "d"),
                                               decision_log.read_outcomes(tmp_path / "o.parquet"))
    assert days == 10 and len(joined) == len(log["log"])
    key = ["user_id", "day"]
    original = log["log"].sort_values(key).reset_index(drop=True)
    back = joined.sort_values(key).reset_index(drop=True)
    for column in ("opened", "disabled", "active", "send"):
        assert (back[column] == original[column]).all(), column
    assert [p.name for p in (tmp_path / "d").iterdir() if p.name.startswith(".")] == []

    bad = events.copy()
    bad.loc[0, "event"] = "clicked"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(FunnelError, match="column 'event': unknown value"):
        decision_log.read_outcomes(tmp_path / "bad.csv")
    skipped = decisions[~decisions["send"]].iloc[0]
    opened_unsent = pd.DataFrame({"user_id": [skipped["user_id"]], "day": [skipped["day"]], "event": ["open"]})
    with pytest.raises(FunnelError, match=f"user {skipped['user_id']} opened a push"):
        decision_log.join(decision_log.read_decisions(tmp_path / "d"), opened_unsent)
    with pytest.raises(FunnelError, match="no decision log here"):
        decision_log.read_decisions(tmp_path / "nothing")
    dated = decision_log.day_numbers(pd.Series(pd.to_datetime(["2026-01-02", "2026-01-04"])),
                                     pd.Series(pd.to_datetime(["2026-01-01 13:00"])))
    assert [d.tolist() for d in dated] == [[1, 3], [0]]


def test_decide_explores_with_recorded_propensities_and_skips_users_without_an_item(tmp_path):
    from funnel.notify.decide import decide_users

    log = run(NotifyConfig(users=400, days=10, seed=6), policies.RandomSend(0.5), record=True)
    policy = policies.Threshold(policies.ResponseModels.fit(log["log"]), 0.3)
    policies.save(policy, tmp_path / "p.json")
    loaded = policies.load(tmp_path / "p.json")
    users = log["log"][log["log"]["day"] == 9].reset_index(drop=True)
    users.loc[0, "item_id"] = ""
    plain = decide_users(loaded, users)
    expected = policy.models.p_open(policies.design(users[list(FEATURES)].to_numpy())) > 0.3
    expected[0] = False
    assert (plain["send"].to_numpy() == expected).all() and (plain["propensity"] == 1.0).all()
    explored = decide_users(loaded, users, explore=0.4, seed=0)
    p_send = np.where(expected, 0.8, 0.2)
    p_send[0] = 0.0
    assert np.allclose(explored["p_send"], p_send)
    assert np.allclose(explored["propensity"], np.where(explored["send"], p_send, 1 - p_send))
    with pytest.raises(FunnelError, match="no policy file"):
        policies.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text(json.dumps({"kind": "model", "version": 99, "params": {}}))
    with pytest.raises(FunnelError, match="unsupported policy"):
        policies.load(tmp_path / "junk.json")


def _rows_with_known_effect(seed: int = 0, users: int = 2000, per_user: int = 5) -> pd.DataFrame:
    """A random log (push with probability 0.5) whose reward is 3 + 2 (score - 0.4) when pushed,
    3 when not, plus noise: pushing helps exactly where the score is above 0.4."""
    rng = np.random.default_rng(seed)
    n = users * per_user
    rows = pd.DataFrame({name: rng.uniform(0, 5, n) for name in FEATURES})
    rows["score"] = rng.uniform(0, 1, n)
    rows["open_rate"], rows["organic_rate"] = rng.uniform(0.05, 0.5, n), rng.uniform(0.05, 0.5, n)
    rows["user_id"] = np.repeat([f"u{i}" for i in range(users)], per_user)
    rows["day"] = np.tile(np.arange(per_user), users)
    rows["send"] = rng.random(n) < 0.5
    rows["propensity"] = 0.5
    rows["reward"] = 3 + np.where(rows["send"], 2 * (rows["score"] - 0.4), 0.0) + rng.normal(0, 1, n)
    return rows


def test_paired_difference_finds_a_known_gain_and_a_known_loss():
    """DR estimate of (target - base) against the difference computed from the reward's formula:
    pushing where the score is above 0.4 instead of never gains E[2 (s - 0.4)+] = 0.36 per decision,
    pushing below it loses E[2 (0.4 - s)+] = 0.16; a policy compared with itself differs by 0."""
    rows = _rows_with_known_effect()
    score = rows["score"].to_numpy()
    never = np.zeros(len(rows))
    gain = evaluation.difference(rows, (score > 0.4).astype(float), never, seed=0)
    assert gain["low"] <= 0.36 <= gain["high"] and gain["low"] > 0
    assert gain["differing"] == int((score > 0.4).sum())
    loss = evaluation.difference(rows, (score < 0.4).astype(float), never, seed=0)
    assert loss["low"] <= -0.16 <= loss["high"] and loss["high"] < 0
    same = evaluation.difference(rows, never, never, seed=0)
    assert same["estimate"] == 0 and same["low"] == 0 and same["high"] == 0 and same["differing"] == 0


def test_model_policy_ships_its_planner_only_after_the_log_confirms_it(tmp_path):
    """Trained with the log's rewards, the model policy records the planner-vs-threshold check and
    plans only when the check's interval is above 0; without the plan it decides exactly as its
    continuation threshold; the choice and the check survive a save and load."""
    cfg = NotifyConfig(users=400, days=12, seed=7)
    log = run(cfg, policies.RandomSend(0.5), record=True)
    rows = evaluation.window_rewards(log["log"], log["activity"], cfg.days)
    policy = policies.train(log["log"], rollouts=8, seed=1, rewards=rows)
    check = policy.check
    assert set(check) >= {"estimate", "low", "high", "differing", "use_plan"}
    assert check["low"] <= check["estimate"] <= check["high"]
    assert policy.plan == check["use_plan"] == (check["low"] > 0)
    feats = rows[list(FEATURES)].to_numpy()
    threshold = policies.Threshold(policy.models, policy.continuation).decide(feats, None)
    policy.plan = False
    assert np.array_equal(policy.decide(feats, None, 3), threshold)
    assert np.array_equal(policy.explain(feats, 3)[0], threshold)
    policy.plan = True
    planned = policy.decide(feats, None, 3)
    assert set(np.unique(planned)) <= {0.0, 1.0}
    policies.save(policy, tmp_path / "model.json")
    loaded = policies.load(tmp_path / "model.json")
    assert loaded.plan and loaded.check == check
    assert np.array_equal(loaded.decide(feats, None, 3), planned)
