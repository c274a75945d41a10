"""A real Triton server (the bundled CPU build, python backend) serving a funnel export over gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.build import ExportConfig, export
from ensemble.runtime import Recommender
from funnel.client import Client
from funnel.core.errors import FunnelError
from funnel.serving import TritonServer

ENSEMBLE = Path("funnel") / "1" / "ensemble"


@pytest.fixture(scope="module")
def repo(ranker_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "triton_repo"
    export(ExportConfig(run=str(ranker_run), out=str(out), candidates=60, trending=20, exclude_seen="all",
                        max_batch=64))
    return out


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "triton.log"
    with TritonServer(repo, grpc_port=0, log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, batch_size=16) as c:
        yield c


@pytest.fixture(scope="module")
def users(pre_dir) -> list[str]:
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    return train["user_id"].astype(str).drop_duplicates().sample(60, random_state=1).tolist()


def test_grpc_equals_the_in_process_ensemble(client, repo, users):
    local = Recommender(repo / ENSEMBLE)
    asked = users[:25] + ["never-seen-user"]
    served = client.infer(asked, k=12)
    expected = local.recommend(asked, k=12)
    assert served["item_ids"].tolist() == expected["item_ids"].tolist()
    assert served["sources"].tolist() == expected["sources"].tolist()
    np.testing.assert_allclose(served["scores"], expected["scores"], rtol=0, atol=1e-5)


def test_filters_over_grpc(client, repo, users, pre_dir):
    train = pd.read_parquet(pre_dir / "splits" / "train.parquet")
    seen = train.assign(u=train["user_id"].astype(str), i=train["item_id"].astype(str)).groupby("u")["i"].apply(set)
    stock = pd.read_parquet(repo / ENSEMBLE / "inventory.parquet")
    gone = set(stock.loc[~stock["in_stock"], "item_id"])
    for rec in client.recommend(users, k=12):
        assert rec.items and not set(rec.items) & gone and not set(rec.items) & seen.get(rec.user_id, set())
    first = next(client.recommend(users[:1], k=12))
    excluded = first.items[:3]
    again = next(client.recommend(users[:1], k=12, exclude_items=excluded))
    assert not set(again.items) & set(excluded) and len(again.items) == 12


def test_stock_update_changes_the_next_answer_without_reexport(client, repo, users):
    from ensemble.inventory import read_inventory, update_inventory

    before = next(client.recommend(users[:1], k=12))
    top = before.items[0]
    cold_top = next(client.recommend(["never-seen-user"], k=5)).items[0]
    original = read_inventory(repo)
    try:
        update_inventory(repo, pd.DataFrame({"item_id": [top, cold_top], "in_stock": [False, False]}))
        after = next(client.recommend(users[:1], k=12))
        cold = next(client.recommend(["never-seen-user"], k=5))
        assert top not in after.items and after.items[:1] != [top] and len(after.items) == 12
        assert cold_top not in cold.items and set(cold.sources) == {"trending"}
    finally:
        update_inventory(repo, original)
    assert next(client.recommend(users[:1], k=12)).items == before.items


def test_cold_start_user_gets_trending_items(client):
    rec = next(client.recommend(["never-seen-user"], k=8))
    assert len(rec.items) == 8 and set(rec.sources) == {"trending"}
    assert rec.scores == sorted(rec.scores, reverse=True)


def test_many_users_in_batches_equal_single_requests(client, users):
    batched = list(client.recommend(users, k=10))  # 60 users, 16 per request
    assert [r.user_id for r in batched] == users
    for rec in batched[::7]:
        single = next(client.recommend([rec.user_id], k=10))
        assert single.items == rec.items


def test_malformed_requests_get_clear_errors_and_the_server_stays_up(server, client, users):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    raw = grpcclient.InferenceServerClient(server.url)

    def call(inputs):
        with pytest.raises(InferenceServerException) as err:
            raw.infer("funnel", inputs)
        return err.value.message()

    wrong = grpcclient.InferInput("user_id", [2], "INT64")
    wrong.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    message = call([wrong])
    assert "user_id" in message and "expects 'BYTES'" in message
    k = grpcclient.InferInput("k", [1, 1], "INT32")
    k.set_data_from_numpy(np.array([[3]], dtype=np.int32))
    assert "missing input 'user_id'" in call([k])
    with pytest.raises(FunnelError, match="k must be between 1 and 100"):
        client.infer(users[:1], k=0)
    with pytest.raises(FunnelError, match="batch-size must be <= 64"):  # Triton: users are its batch dimension
        client.infer(users[:1] * 65)
    with pytest.raises(FunnelError, match="temperature must be finite"):
        client.infer(users[:1], temperature=float("nan"))
    assert server.process.poll() is None
    assert len(next(client.recommend(users[:1], k=5)).items) == 5
    raw.close()


def test_restart_serves_a_reexported_repository(repo, ranker_run, tmp_path, users):
    export(ExportConfig(run=str(ranker_run), out=str(repo), candidates=60, trending=20, exclude_seen="all",
                        k=5, max_batch=64))
    with TritonServer(repo, grpc_port=0, log_path=tmp_path / "triton.log") as srv, Client(srv.url) as c:
        rec = next(c.recommend(users[:1]))
        assert len(rec.items) == 5  # the new export's default k


def test_cli_export_serve_recommend(ranker_run, tmp_path, users, cli):
    repo = tmp_path / "repo"
    code, out, err = cli("export", ranker_run, "--out", repo, "--candidates", "50", "--k", "6")
    assert code == 0, err
    assert "funnel export: done" in out and "flat" in out
    port = str(__import__("funnel.serving", fromlist=["free_port"]).free_port())
    funnel = [sys.executable, "-m", "funnel"]
    proc = subprocess.Popen([*funnel, "serve", str(repo), "--grpc-port", port, "--http-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # blocks until ready (or exit)
        assert line.startswith(f"ready: gRPC 127.0.0.1:{port}"), proc.stderr.read() if proc.poll() is not None else line
        users_file = tmp_path / "users.txt"
        users_file.write_text("\n".join(users[:5] + ["never-seen-user"]) + "\n")
        result = subprocess.run([*funnel, "recommend", "--url", f"127.0.0.1:{port}", "--users-file", str(users_file),
                                 "--json", "--batch-size", "4"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = [__import__("json").loads(x) for x in result.stdout.splitlines()]
        assert [x["user_id"] for x in lines] == users[:5] + ["never-seen-user"]
        assert all(len(x["items"]) == 6 == len(x["scores"]) == len(x["sources"]) for x in lines)
        bad = subprocess.run([*funnel, "recommend", "--url", f"127.0.0.1:{port}", "--user", users[0], "--k", "500"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "k must be between 1 and 100" in bad.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0 and "stopped" in proc.stderr.read()
    start = time.monotonic()
    down = subprocess.run([*funnel, "recommend", "--url", f"127.0.0.1:{port}", "--user", "x"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 2 and "no ready 'funnel' model" in down.stderr and time.monotonic() - start < 30


def test_prediction_log_counts_every_served_user_under_load(repo, users, tmp_path):
    import threading

    from ensemble.prediction_log import read_logs

    logs = tmp_path / "prediction_logs"
    server = TritonServer(repo, grpc_port=0, log_path=tmp_path / "triton.log", prediction_log=logs, log_sample=1.0)
    served = []

    def load(offset: int) -> None:
        with Client(server.url, batch_size=4) as c:
            asked = [users[(offset + i) % len(users)] for i in range(500)] + ["never-seen-user"] * 4
            served.append(len(list(c.recommend(asked, k=5))))

    with server:
        threads = [threading.Thread(target=load, args=(i * 7,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # the server is stopped: a clean shutdown flushed the log
    frame = read_logs(logs)
    assert sum(served) == 4 * 504 == len(frame)
    assert frame["request_id"].nunique() == 4 * 126  # 4 users per request
    cold = frame[frame["user_id"] == "never-seen-user"]
    assert len(cold) == 16 and all(set(s) == {"trending"} for s in cold["sources"])
    assert all(len(i) == 5 and len(c) >= 5 for i, c in zip(frame["items"], frame["candidates"]))


def test_cache_misses_go_to_the_live_server(ranker_run, server, users, tmp_path, cli):
    import json

    from funnel.cache import build

    build(ranker_run, str(tmp_path / "recs.sqlite"), None, k=4)
    code, out, err = cli("recommend", "--from-cache", tmp_path / "recs.sqlite", "--url", server.url,
                         "--user", users[0], "--user", "never-seen-user", "--json")
    assert code == 0, err
    cached, live = (json.loads(line) for line in out.splitlines())
    assert cached["served_from"] == "cache" and live["served_from"] == "live" and len(live["items"]) == 4


def test_models_split_out_and_called_through_bls_answer_the_same(ranker_run, server, client, users, tmp_path):
    """--tf-runtime python-bls: query tower and ranker as their own Triton models (the tensorflow layout)."""
    repo = tmp_path / "bls_repo"
    export(ExportConfig(run=str(ranker_run), out=str(repo), candidates=60, trending=20, exclude_seen="all",
                        max_batch=64, tf_runtime="python-bls"))
    asked = users[:10] + ["never-seen-user"]
    expected = client.infer(asked, k=12)  # the single-process export of the module's server
    with TritonServer(repo, grpc_port=0, log_path=tmp_path / "triton.log") as srv, Client(srv.url) as c:
        import tritonclient.grpc as grpcclient

        raw = grpcclient.InferenceServerClient(srv.url)
        assert raw.is_model_ready("funnel_query_tower") and raw.is_model_ready("funnel_ranker")
        raw.close()
        got = c.infer(asked, k=12)
    assert got["item_ids"].tolist() == expected["item_ids"].tolist()
    np.testing.assert_allclose(got["scores"], expected["scores"], rtol=0, atol=1e-5)


def test_concurrent_single_user_requests_are_batched_and_answered_as_alone(server, client, users):
    """Triton's dynamic batcher hands the model several queued requests at once; the model runs the
    graph once for all of them (same k, no sampling) and each answer equals the one it gets alone."""
    import threading

    import tritonclient.grpc as grpcclient

    alone = {u: client.infer([u], k=7) for u in users[:40]}
    stats = grpcclient.InferenceServerClient(server.url)

    def counts():
        model = stats.get_inference_statistics("funnel", headers=server.admin_headers).model_stats[0]
        return model.inference_count, model.execution_count

    before = counts()
    together: dict[str, dict] = {}
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with Client(server.url, batch_size=1) as own:
                for round_ in range(5):
                    for u in users[offset::8][:5]:
                        together[f"{u}/{round_}"] = own.infer([u], k=7)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    deadline = time.monotonic() + 10  # Triton updates its statistics after the responses are sent
    while counts()[0] - before[0] < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    inferences, executions = (a - b for a, b in zip(counts(), before))
    assert inferences == len(together) == 200
    assert executions < inferences  # several requests answered by one execution
    for key, out in together.items():
        want = alone[key.split("/")[0]]
        assert out["item_ids"].tolist() == want["item_ids"].tolist()
        np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-5, atol=1e-5)  # float32 matmul rounding
    stats.close()


def test_notify_decide_over_grpc_equals_in_process(server, repo, users, tmp_path, cli):
    """`funnel notify decide`: the served funnel's top item per user, a send/skip decision, the
    decisions logged with propensities; the same from the export answered in process."""
    import json

    from funnel.notify import decision_log, policies
    from funnel.notify.simulator import NotifyConfig, run

    log = run(NotifyConfig(users=300, days=10, seed=0), policies.RandomSend(0.5), record=True)["log"]
    policies.save(policies.Threshold(policies.ResponseModels.fit(log), 0.3), tmp_path / "policy.json")
    users_file = tmp_path / "users.csv"
    pd.DataFrame({"user_id": users[:8] + ["never-seen-user"], "pushes_7d": [0, 1, 2, 3, 4, 5, 6, 7, 0],
                  "opens_7d": 0}).to_csv(users_file, index=False)
    answers = {}
    for where in (("--url", server.url), ("--run", str(repo))):
        code, out, err = cli("notify", "decide", tmp_path / "policy.json", *where, "--users-file", users_file,
                             "--json", "--explore", "0.5", "--seed", "3", "--log", tmp_path / "decisions")
        assert code == 0, err
        answers[where[0]] = [json.loads(line) for line in out.splitlines()]
    assert answers["--url"] == answers["--run"]
    top = Recommender(repo / ENSEMBLE).recommend(users[:8] + ["never-seen-user"], k=1)
    assert [a["item_id"] for a in answers["--url"]] == [row[0].decode() for row in top["item_ids"]]
    for a in answers["--url"]:
        assert a["decision"] in ("send", "skip") and a["p_send"] in (0.25, 0.75)  # half the decisions explore
        assert a["propensity"] == (a["p_send"] if a["decision"] == "send" else 1 - a["p_send"])
    logged = decision_log.read_decisions(tmp_path / "decisions")
    assert len(logged) == 18 and set(logged["policy"]) == {"threshold"}
    assert logged["pushes_7d"].tolist()[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user_id": ["a"], "pushes_7d": ["many"]}).to_csv(bad, index=False)
    code, _, err = cli("notify", "decide", tmp_path / "policy.json", "--url", server.url, "--users-file", bad)
    assert code == 2 and "column 'pushes_7d', user a" in err
