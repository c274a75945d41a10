"""An A/A test through a real server: two exports of one run, half the traffic each; sticky
assignment, ~50/50 shares, the variant in every answer and log record, no SRM, no difference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ensemble.build import ExportConfig, export
from funnel.serving import free_port

FUNNEL = [sys.executable, "-m", "funnel"]


@pytest.fixture(scope="module")
def repos(ranked_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    for name in ("a", "b"):
        export(ExportConfig(run=str(ranked_run), out=str(root / name), max_batch=256))
    return root / "a", root / "b"


def test_aa_through_a_real_server(repos, pre_dir, tmp_path, cli):
    a, b = repos
    port, logs = free_port(), tmp_path / "logs"
    proc = subprocess.Popen([*FUNNEL, "serve", str(a), "--grpc-port", str(port), "--http-port", "0",
                             "--variant", f"twin={b}", "--traffic", "control=0.5", "twin=0.5", "--experiment", "aa",
                             "--prediction-log", str(logs), "--log-sample", "1.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    users = [f"user-{i}" for i in range(1500)]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    try:
        assert proc.stdout.readline().startswith("ready"), proc.stderr.read()
        result = subprocess.run([*FUNNEL, "recommend", "--url", f"127.0.0.1:{port}", "--users-file",
                                 str(tmp_path / "users.txt"), "--json", "--k", "5", "--batch-size", "256"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        answers = [{row["user_id"]: row["variant"] for row in map(json.loads, result.stdout.splitlines())}]
        from funnel.client import Client

        with Client(f"127.0.0.1:{port}", batch_size=256) as client:  # a second pass, in another order
            answers.append({r.user_id: r.variant for r in client.recommend(users[::-1], k=5)})
            # an exploring pass (sampled lists): its log records carry Plackett-Luce propensities
            answers.append({r.user_id: r.variant for r in client.recommend(users, k=5, temperature=1.0, seed=3)})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert answers[0] == answers[1] == answers[2]  # sticky
    share = pd.Series(answers[0]).value_counts(normalize=True)
    assert set(share.index) == {"control", "twin"} and 0.46 <= share["twin"] <= 0.54

    from ensemble.prediction_log import read_logs

    frame = read_logs(logs)
    assert len(frame) == 3 * len(users) and set(frame["experiment"]) == {"aa"}
    assert dict(zip(frame["user_id"], frame["variant"])) == answers[0]
    sizes = frame["propensities"].map(len) == frame["items"].map(len)
    deterministic = frame["propensities"].map(lambda p: bool(np.all(np.asarray(p) == 1.0)))
    assert sizes.all() and deterministic.sum() >= 2 * len(users)  # temperature 0: probability 1
    assert (~deterministic).sum() > 0.9 * len(users)  # sampled lists: probabilities below 1
    # purchases after the exposure, the same for both variants (the twins answer identically)
    first = frame.groupby("user_id")["time"].min()
    shown = frame.groupby("user_id")["items"].first()
    buyers = [u for u, buys in zip(users, np.random.default_rng(1).random(len(users)) < 1 / 7) if buys]
    bought = pd.DataFrame({"user_id": buyers, "item_id": [shown[u][0] for u in buyers],
                           "timestamp": pd.to_datetime(first[buyers].to_numpy().round() + 3600, unit="s")})
    bought.to_parquet(tmp_path / "purchases.parquet")
    code, out, err = cli("ab", "report", logs, "--outcomes", tmp_path / "purchases.parquet", "--json",
                         tmp_path / "ab.json", "--plot", tmp_path / "ab.png")
    assert code == 0, err
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert doc["srm_p_value"] > 0.01 and doc["users_in_two_variants"] == 0
    conv = next(c for c in doc["comparisons"] if c["metric"] == "conversion")
    assert conv["p_value"] > 0.05 and conv["ci95"][0] < 0 < conv["ci95"][1]
    assert (tmp_path / "ab.png").stat().st_size > 1000 and "sample-ratio mismatch" in out
    # latency guardrail: each variant's own time per logged answer, compared with control's
    assert frame["latency_ms"].gt(0).all() and frame["temperature"].isin([0.0, 1.0]).all()
    twin = doc["guardrails"]["twin"]
    assert 0 < twin["latency_ms_p50"] <= twin["latency_ms_p99"] and twin["requests"] > 0
    assert twin["latency_vs_control"]["p_value"] is not None and "twin: guardrails" in out

    # off-policy evaluation of the twin export from the exploring answers
    code, out, err = cli("ope", logs, "--target", b, "--outcomes", tmp_path / "purchases.parquet", "--json",
                         tmp_path / "ope.json", "--bootstrap", "100")
    assert code == 0, err
    ope = json.loads((tmp_path / "ope.json").read_text())
    assert ope["matches"] > 0 and 0 <= ope["snips"]["value"] <= 1 and "top-slot conversion" in out
    # beyond the top slot: purchases from the first 5 slots, inclusion probabilities from the logged draw
    code, out, err = cli("ope", logs, "--target", b, "--outcomes", tmp_path / "purchases.parquet", "--json",
                         tmp_path / "ope5.json", "--bootstrap", "100", "--slots", "5", "--samples", "64")
    assert code == 0, err
    ope5 = json.loads((tmp_path / "ope5.json").read_text())
    assert ope5["slots"] == 5 and ope5["matches"] > ope["matches"] and "first 5 slots" in out
    assert ope5["logging_policy_value"] >= ope["logging_policy_value"]  # a list holds its first item


@pytest.mark.parametrize("flags, message", [
    (["--variant", "twin=REPO_B", "--traffic", "control=0.7", "twin=0.7"], "sum to 1.4"),
    (["--variant", "twin=REPO_B", "--traffic", "control=0.5", "other=0.5"], "unknown variant: other"),
    (["--variant", "twin=/no/such/repo", "--traffic", "control=0.5", "twin=0.5"], "not a funnel export"),
    (["--variant", "twin=REPO_B"], "needs both --variant"),
])
def test_bad_experiment_specs_fail_before_anything_starts(repos, flags, message, cli):
    a, b = repos
    code, out, err = cli("serve", a, *[f.replace("REPO_B", str(b)) for f in flags])
    assert code == 2 and message in err and "starting Triton" not in err
