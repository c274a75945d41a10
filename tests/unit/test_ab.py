"""Experiments: assignment, the statistics of `funnel ab` (against independent computations and
simulated A/A and A/B tests), the report from a prediction log, and the variant merge."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from funnel.core.errors import FunnelError


def test_assignment_is_sticky_balanced_and_independent_across_experiments():
    from funnel.core.assignment import assign

    users = [f"u{i}" for i in range(20_000)]
    traffic = {"control": 0.5, "new": 0.3, "other": 0.2}
    a = assign("exp-1", users, traffic)
    assert (a == assign("exp-1", list(reversed(users)), traffic)[::-1]).all()  # order does not matter
    shares = pd.Series(a).value_counts(normalize=True)
    for name, share in traffic.items():
        assert abs(shares[name] - share) < 0.015
    b = assign("exp-2", users, {"control": 0.5, "new": 0.5})
    table = pd.crosstab(a, b, normalize="index")  # exp-2's split is the same inside every exp-1 variant
    assert (table["new"].between(0.46, 0.54)).all()
    assert assign("exp-1", [b"u7"], traffic)[0] == a[7]  # bytes from gRPC and text agree


@pytest.mark.parametrize("spec, message", [
    (["a=0.6", "b=0.6"], "sum to 1.2"), (["a=1.5"], "outside"), (["a"], "NAME=FRACTION"),
    (["a=x"], "not a number"), (["a=0.5", "a=0.5"], "named twice"),
])
def test_bad_traffic_specs_are_clear_errors(spec, message):
    from funnel.core.assignment import parse_traffic

    with pytest.raises(FunnelError, match=message):
        parse_traffic(spec)


def test_sample_size_matches_the_textbook_formula():
    from funnel.ab import sample_size

    assert sample_size(0.10, 0.10) == 14751  # p 0.10 -> 0.11, alpha 0.05 two-sided, power 0.8 (G*Power, Evan Miller)
    assert sample_size(0.05, 0.20, power=0.9) > sample_size(0.05, 0.20, power=0.8)
    with pytest.raises(FunnelError):
        sample_size(1.2, 0.1)


def test_welch_and_lift_agree_with_scipy_and_a_simulation():
    from scipy import stats

    from funnel.ab import compare

    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 500), rng.normal(1.1, 2.0, 800)
    out = compare(a, b)
    assert out["p_value"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)
    # delta-method lift interval: covers the true lift (10%) in ~95% of simulated experiments
    covered = 0
    for seed in range(300):
        r = np.random.default_rng(seed)
        res = compare(r.binomial(1, 0.20, 4000), r.binomial(1, 0.22, 4000))
        covered += res["ci95"][0] <= 0.10 <= res["ci95"][1]
    assert 0.92 <= covered / 300 <= 0.98


def test_aa_false_positives_near_alpha_and_planned_lift_detected_with_power():
    from funnel.ab import compare, sample_size

    rng = np.random.default_rng(1)
    aa = [compare(rng.binomial(1, 0.1, 3000), rng.binomial(1, 0.1, 3000))["p_value"] < 0.05 for _ in range(400)]
    assert 0.03 <= np.mean(aa) <= 0.075
    n = sample_size(0.1, 0.2)
    ab = [compare(rng.binomial(1, 0.1, n), rng.binomial(1, 0.12, n))["p_value"] < 0.05 for _ in range(200)]
    assert np.mean(ab) >= 0.74  # 0.8 planned; 200 simulations leave about +-0.03


def test_peeking_inflates_false_positives_and_msprt_does_not():
    from funnel.ab import compare, msprt_p_values

    rng = np.random.default_rng(2)
    naive = sequential = 0
    runs, days, per_day = 200, 14, 300
    for _ in range(runs):
        a = [rng.binomial(1, 0.1, per_day).astype(float) for _ in range(days)]
        b = [rng.binomial(1, 0.1, per_day).astype(float) for _ in range(days)]
        naive += any(compare(np.concatenate(a[: d + 1]), np.concatenate(b[: d + 1]))["p_value"] < 0.05
                     for d in range(days))
        sequential += min(msprt_p_values(a, b, tau=0.02)) < 0.05
    assert naive / runs > 0.12  # looking every day and stopping at the first p < 0.05
    assert sequential / runs <= 0.06


def test_srm_and_cuped():
    from funnel.ab import cuped, srm_p_value

    assert srm_p_value({"a": 5000, "b": 5000}, {"a": 0.5, "b": 0.5}) == pytest.approx(1.0)
    assert srm_p_value({"a": 5200, "b": 4800}, {"a": 0.5, "b": 0.5}) < 0.001
    rng = np.random.default_rng(3)
    x = rng.poisson(2.0, 5000).astype(float)
    y = 0.5 * x + rng.normal(0, 1, 5000)
    adjusted = cuped(y, x)
    assert adjusted.mean() == pytest.approx(y.mean())
    assert adjusted.var() == pytest.approx(y.var() * (1 - np.corrcoef(x, y)[0, 1] ** 2))  # var(y)(1 - rho^2)
    assert adjusted.var() < 0.75 * y.var()


def test_report_from_a_prediction_log(tmp_path):
    from funnel.ab import report
    from funnel.core.assignment import assign

    rng = np.random.default_rng(4)
    users = np.array([f"u{i}" for i in range(6000)])
    variant = assign("exp", users, {"control": 0.5, "new": 0.5})
    start = pd.Timestamp("2024-03-01")
    logs = pd.DataFrame({"user_id": users, "experiment": "exp", "variant": variant,
                         "time": (start + pd.to_timedelta(rng.integers(0, 3 * 86400, len(users)), unit="s"))
                         .astype("int64") / 1e9,
                         "items": [["i1", "i2", "i3"]] * len(users)})
    converts = rng.random(len(users)) < np.where(variant == "new", 0.15, 0.10)
    bought = pd.DataFrame({"user_id": users[converts], "item_id": "i2",
                           "timestamp": pd.to_datetime(logs["time"][converts], unit="s") + pd.Timedelta(hours=5)})
    noise = pd.DataFrame({"user_id": users[:500], "item_id": "i9", "timestamp": start - pd.Timedelta(days=1)})
    doc = report(logs, pd.concat([bought, noise]), window_days=7)
    assert doc["variants"]["control"]["users"] + doc["variants"]["new"]["users"] == 6000
    conv = next(c for c in doc["comparisons"] if c["metric"] == "conversion")
    true_lift = converts[variant == "new"].mean() / converts[variant == "control"].mean() - 1
    assert conv["lift"] == pytest.approx(true_lift) and conv["p_value"] < 0.01
    assert conv["ci95"][0] < true_lift < conv["ci95"][1]
    assert doc["srm_p_value"] > 0.001 and doc["users_in_two_variants"] == 0
    assert json.dumps(doc, default=str)
    with pytest.raises(FunnelError, match="no variants"):
        report(logs.assign(variant=""), bought)


def test_variant_outputs_merge_back_in_request_order():
    from ensemble.experiment import merge

    a = {"item_ids": np.array([[b"x", b"y"]], dtype=object), "scores": np.array([[1.0, 0.5]], np.float32)}
    b = {"item_ids": np.array([[b"p", b"q", b"r"], [b"s", b"t", b"u"]], dtype=object),
         "scores": np.ones((2, 3), np.float32)}
    out = merge([(np.array([1]), a), (np.array([0, 2]), b)], 3)
    assert out["item_ids"].tolist() == [[b"p", b"q", b"r"], [b"x", b"y", b""], [b"s", b"t", b"u"]]
    assert np.isnan(out["scores"][1, 2]) and out["scores"][0, 0] == 1.0


def _logged(rng, n, true_rate, logging_scores, temperature):
    """Decisions of a Plackett-Luce logging policy (first slot) with Bernoulli rewards."""
    logits = logging_scores / temperature
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    items = rng.choice(len(probs), size=n, p=probs)
    return pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "item": [f"i{j}" for j in items],
                         "propensity": probs[items], "reward": (rng.random(n) < true_rate[items]).astype(float)})


def test_off_policy_estimates_cover_the_true_value_of_a_target():
    from funnel.ope import estimate

    true_rate = np.array([0.02, 0.05, 0.10, 0.04, 0.08])
    scores = np.array([1.0, 0.8, 0.2, 0.5, 0.1])  # the logger prefers items that convert less
    covered = {"ips": 0, "snips": 0, "dr": 0}
    runs = 40
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        frame = _logged(rng, 4000, true_rate, scores, temperature=0.5)
        target = np.where(np.arange(len(frame)) % 2 == 0, "i2", "i4")  # a per-user deterministic target
        truth = (true_rate[2] + true_rate[4]) / 2
        out = estimate(frame, target, bootstrap=200, seed=seed)
        for name in covered:
            lo, hi = out[name]["ci95"]
            covered[name] += lo <= truth <= hi
        assert out["logging_policy_value"] < truth  # the target is better than what was logged
    for name, hits in covered.items():
        assert hits / runs >= 0.85, (name, hits)


def test_off_policy_evaluation_refuses_deterministic_logs():
    from funnel.ope import decisions

    logs = pd.DataFrame({"user_id": ["a", "b"], "time": [1.7e9, 1.7e9], "items": [["x"], ["y"]],
                         "propensities": [[1.0], [1.0]]})
    bought = pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [pd.Timestamp(1.7e9 + 60, unit="s")]})
    with pytest.raises(FunnelError, match="deterministic"):
        decisions(logs, bought)
    frame = decisions(logs.assign(propensities=[[0.5], [0.25]]), bought)
    assert frame["reward"].tolist() == [1.0, 0.0]


def _exact_inclusion(scores, tiers, temperature, k):
    """P(item in the first k) by enumerating every prefix of the tiered Plackett-Luce draw."""
    alive = [i for i in range(len(scores)) if np.isfinite(scores[i])]
    probs = np.zeros(len(scores))

    def walk(prefix, p):
        rest = [a for a in alive if a not in prefix]
        if len(prefix) == k or not rest:
            probs[prefix] += p
            return
        pool = [a for a in rest if tiers[a] == min(tiers[b] for b in rest)]
        z = sum(np.exp(scores[a] / temperature) for a in pool)
        for a in pool:
            walk(prefix + [a], p * np.exp(scores[a] / temperature) / z)

    walk([], 1.0)
    return probs


def test_inclusion_probabilities_match_an_enumeration_of_the_draw():
    from funnel.ope import inclusion_probabilities

    scores = np.array([[1.0, 0.3, -0.5, 2.0, np.nan, 0.1, 0.7], [0.2, 0.2, 3.0, np.nan, np.nan, -1.0, 0.0]])
    tiers = np.array([[0, 0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0, 1]], float)
    for k in (1, 2, 4):
        got = inclusion_probabilities(scores, tiers, 0.7, k, samples=4000, seed=k)
        for row in range(2):
            want = _exact_inclusion(scores[row], tiers[row], 0.7, k)
            np.testing.assert_allclose(got[row], want, atol=0.02 if k > 1 else 1e-9)
            assert got[row, np.isnan(scores[row])].max() == 0.0  # dead candidates are never shown


def test_list_estimates_cover_the_true_purchases_of_a_target_list():
    from funnel.ope import estimate

    rate = np.array([0.02, 0.05, 0.30, 0.04, 0.20, 0.10])  # chance an item is bought once shown
    scores = np.array([1.5, 1.0, 0.2, 0.8, 0.1, 0.3])  # the logger prefers items that sell less
    k, n = 3, 3000
    inclusion = _exact_inclusion(scores, np.zeros(6), 0.6, k)
    target = ["i2", "i4", "i5"]
    truth = rate[[2, 4, 5]].sum()
    covered = {"ips": 0, "snips": 0, "dr": 0}
    runs = 30
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        slots = np.argsort(-(scores / 0.6 + rng.gumbel(size=(n, 6))), axis=1)[:, :k]
        frame = pd.DataFrame({"decision": np.repeat(np.arange(n), k), "item": [f"i{j}" for j in slots.reshape(-1)],
                              "propensity": inclusion[slots.reshape(-1)],
                              "reward": (rng.random(n * k) < rate[slots.reshape(-1)]).astype(float)})
        out = estimate(frame, [target] * n, bootstrap=200, seed=seed)
        assert out["logging_policy_value"] < truth
        for name in covered:
            lo, hi = out[name]["ci95"]
            covered[name] += lo <= truth <= hi
    for name, hits in covered.items():
        assert hits / runs >= 0.85, (name, hits)


def test_list_decisions_from_logged_candidates():
    from funnel.ope import decisions

    scores = [2.0, 1.0, float("nan"), 0.5]
    logs = pd.DataFrame({"request_id": ["r1", "r2"], "user_id": ["a", "b"], "time": [1.7e9, 1.7e9],
                         "items": [["x", "y"], ["x", "w"]], "propensities": [[0.6, 0.7], [1.0, 1.0]],
                         "candidates": [["x", "y", "z", "w"]] * 2, "candidate_scores": [scores] * 2,
                         "candidate_tiers": [[0.0, 0.0, 0.0, 0.0]] * 2, "temperature": [1.0, 0.0]})
    bought = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["y", "x"],
                           "timestamp": [pd.Timestamp(1.7e9 + 60, unit="s"), pd.Timestamp(1.7e9 - 60, unit="s")]})
    frame = decisions(logs, bought, slots=2, samples=2000)
    want = _exact_inclusion(np.array(scores), [0, 0, 0, 0], 1.0, 2)  # z cannot be drawn: x, y, w compete
    assert frame["item"].tolist() == ["x", "y", "x", "w"] and frame["reward"].tolist() == [0.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(frame["propensity"][:2], want[:2], atol=0.02)
    assert frame["propensity"][2:].tolist() == [1.0, 1.0]  # the deterministic answer's list was certain
    with pytest.raises(FunnelError, match="--slots 1"):
        decisions(logs.drop(columns=["candidate_tiers"]), bought, slots=2)
