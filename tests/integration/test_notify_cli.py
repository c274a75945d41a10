"""`funnel notify`: simulate every policy, learn a policy from the simulated exploration log in
production format, evaluate it off-policy and decide for users of a real served funnel."""

from __future__ import annotations

import json
import pytest

from funnel.notify import policies
from funnel.notify.simulator import NotifyConfig, run, summary


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from funnel.cli import main

    out = tmp_path_factory.mktemp("notify")
    code = main(["notify", "simulate", "--users", "300", "--days", "12", "--seed", "0", "1", "--json",
                 str(out / "result.json"), "--plot", str(out / "dau.png"), "--log", str(out / "log")])
    assert code == 0
    return out


def test_simulate_reports_every_policy_over_seeds(simulated):
    result = json.loads((simulated / "result.json").read_text())
    assert set(result["policies"]) == {"always", "threshold", "cap", "model"}
    for name, entry in result["policies"].items():
        for key in ("sends_per_user_day", "open_rate", "active_days_per_user", "disable_rate"):
            assert 0 <= entry[key] <= (12 if key == "active_days_per_user" else 1), (name, key)
        assert len(entry["daily_active_users"]) == 12
        assert [s["policies"][name]["ope"]["truth"] > 0 for s in result["seeds"]] == [True, True]
    model, always = result["policies"]["model"], result["policies"]["always"]
    assert model["sends_per_user_day"] < always["sends_per_user_day"]
    assert model["open_rate"] > always["open_rate"]
    assert model["active_days_per_user"] > always["active_days_per_user"]
    assert (simulated / "dau.png").read_bytes()[:4] == b"\x89PNG"
    assert result["config"]["seeds"] == [0, 1]


def test_train_and_ope_from_the_written_log(simulated, tmp_path, cli):
    log, outcomes = simulated / "log" / "decisions", simulated / "log" / "outcomes.parquet"
    code, out, err = cli("notify", "train", log, "--outcomes", outcomes, "--out", tmp_path / "model.json",
                         "--rollouts", "8")
    assert code == 0, err
    assert "model" in out and (tmp_path / "model.json").exists()
    code, out, err = cli("notify", "train", log, "--outcomes", outcomes, "--out", tmp_path / "cap.json",
                         "--kind", "cap", "--cap", "2")
    assert code == 0, err
    code, out, err = cli("notify", "ope", log, "--outcomes", outcomes, "--policy", tmp_path / "model.json",
                         "--policy", tmp_path / "cap.json", "--json", tmp_path / "ope.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "ope.json").read_text())
    assert len(doc["policies"]) == 2
    for est in doc["policies"].values():
        assert est["dr"]["low"] <= est["dr"]["estimate"] <= est["dr"]["high"]
    # the policy learned from the log behaves like one: fewer pushes than `always`, better opened
    cfg = NotifyConfig(users=300, days=12, seed=7)
    learned = summary(run(cfg, policies.load(tmp_path / "model.json")))
    always = summary(run(cfg, policies.Always()))
    assert learned["sends_per_user_day"] < always["sends_per_user_day"]
    assert learned["open_rate"] > always["open_rate"]
    code, _, err = cli("notify", "train", log, "--outcomes", simulated / "missing.parquet", "--out", tmp_path / "x")
    assert code == 2 and "outcomes file not found" in err
