"""The ranker's data and figures without training: AUC maths, pair features, candidate merging."""

import numpy as np
import pandas as pd
import pytest

from models.ranking import auc_logloss
from models.ranking_rows import candidates, pair_history


def test_auc_and_logloss_hand_computed():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    # pairs (pos, neg): (0.9>0.8) (0.9>0.1) (0.3<0.8) (0.3>0.1) -> 3/4
    figures = auc_logloss(labels, scores)
    assert figures["auc"] == pytest.approx(0.75)
    expected = -np.mean([np.log(0.9), np.log(0.2), np.log(0.3), np.log(0.9)])
    assert figures["logloss"] == pytest.approx(expected)


def test_pair_history_counts_and_recency():
    ts = pd.to_datetime(["2020-01-01", "2020-01-05", "2020-01-03", "2020-01-09"])
    history = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": [1, 1, 2, 1], "timestamp": ts})
    pairs = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": [1, 3, 1, 1]})
    bought, since = pair_history(pairs, history, pd.Timestamp("2020-01-10"))
    np.testing.assert_allclose(bought, np.log1p([2, 0, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(since, np.log1p([5, 365, 1, 365]), rtol=1e-6)


def test_candidates_merge_sources_and_respect_domain():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    vectors = np.array([[1, 0], [0.9, 0], [0, 1], [0, 0.8]], dtype=np.float32)
    items = np.array([10, 11, 12, 13])
    users = np.array(["u", "v"])
    history = {"u": [13, 10], "v": [12]}
    rep = candidates(q, users, items, vectors, 2, history, repurchase=True, recent=1)
    assert rep[rep["user_id"] == "u"]["item_id"].tolist() == [10, 11, 13]  # top-2 + own latest (13)
    assert rep.set_index(["user_id", "item_id"]).loc[("u", 13), "source"] == "repurchase"
    assert rep.set_index(["user_id", "item_id"]).loc[("u", 10), "retrieval_score"] == pytest.approx(1.0)
    no_rep = candidates(q, users, items, vectors, 2, history, repurchase=False)
    assert 10 not in no_rep[no_rep["user_id"] == "u"]["item_id"].tolist()  # seen items excluded
    assert 12 not in no_rep[no_rep["user_id"] == "v"]["item_id"].tolist()


def test_the_gate_needs_a_confident_gain():
    from models.ranking import gate_decision

    rng = np.random.default_rng(0)
    retrieval = rng.random(50)
    noisy = retrieval + rng.normal(0.01, 0.3, size=50)  # a small mean gain buried in noise: not used
    assert gate_decision(noisy, retrieval, seed=0)["use"] is False
    clear = retrieval + 0.1 + rng.normal(0, 0.05, size=2000)[:50]  # a clear gain: used
    decision = gate_decision(clear, retrieval, seed=0)
    assert decision["use"] is True and decision["ci95"][0] > 0 and abs(decision["lift"] - 0.1) < 0.03
    assert gate_decision(retrieval, retrieval, seed=0)["use"] is False  # no gain, no ranker


def test_the_gate_also_needs_a_gain_in_the_latest_label_period():
    """A confident gain over every label period is not enough when the latest period, the one whose
    candidates come from the served retriever, shows none; nor is a ranker the blend gives no share."""
    from models.ranking import gate_decision, gate_verdict

    rng = np.random.default_rng(0)
    blend = rng.random(400)
    earlier = blend[100:] + 0.1 + rng.normal(0, 0.05, size=300)  # the ranker wins the earlier periods
    latest = blend[:100] - 0.02 + rng.normal(0, 0.05, size=100)  # and loses the latest one
    overall = gate_decision(np.concatenate([latest, earlier]), blend, seed=0)
    assert overall["use"] is True  # the pooled lists alone would switch it on
    alone = gate_decision(latest, blend[:100], seed=0)
    assert alone["lift"] < 0
    use, reason = gate_verdict(overall, alone, ranker_share=0.5)
    assert use is False and "latest label period" in reason
    wins = gate_decision(blend[:100] + 0.05, blend[:100], seed=0)
    assert gate_verdict(overall, wins, ranker_share=0.5) == (True, "confident gain over the blend order")
    assert gate_verdict(overall, wins, ranker_share=0.0)[0] is False
    assert gate_verdict(gate_decision(blend, blend, seed=0), wins, ranker_share=0.5)[0] is False


def test_affinity_is_the_share_of_the_users_items_with_the_items_values():
    """workflows.purchases.affinity (training and serving) against a Python loop over raw rows:
    distinct items bought before `now`, a single-valued feature and a multi-hot one; the same
    whether the pairs go through in one piece or in chunks (smaller than one user's pairs too)."""
    from models.ranking_rows import affinity_history

    ts = pd.Timestamp("2020-01-01")
    history = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b", "b", "c"], "item_id": [1, 1, 2, 3, 3, 4, 9],
                            "timestamp": [ts] * 7})
    items = pd.DataFrame({"item_id_raw": [1, 2, 3, 4, 5],
                          "kind": np.array([2, 2, 3, 4, 3], dtype=np.int32),  # codes < 2: null / OOV
                          "genres": [np.array([2, 3]), np.array([3]), np.array([], dtype=np.int64), np.array([4, 1]),
                                     np.array([2, 4])]})
    pairs = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c", "z"], "item_id": [1, 3, 5, 5, 2, 1, 1]})
    table = items.set_index("item_id_raw")
    for chunk in (1, 2, 3, 100):
        got = affinity_history(pairs, items, history, ts, ["kind", "genres"], chunk=chunk)
        assert [len(v) for v in got.values()] == [len(pairs)] * 2
        check_affinity(got, pairs, history, table)
    assert got["user_share_kind"][0] == pytest.approx(2 / 3)  # a: items 1, 2 of kind 2 out of 1, 2, 3


def check_affinity(got, pairs, history, table):
    for r, (user, item) in enumerate(zip(pairs["user_id"], pairs["item_id"])):
        mine = [i for i in history.loc[history["user_id"] == user, "item_id"].unique() if i in table.index]
        for col in ("kind", "genres"):
            values = [v for v in np.atleast_1d(table.loc[item, col]) if v >= 2]
            shares = [sum(v in np.atleast_1d(table.loc[i, col]) for i in mine) / max(len(mine), 1) for v in values]
            expected = float(np.mean(shares)) if shares else 0.0
            assert got["user_share_" + col][r] == pytest.approx(expected), (user, item, col)


def test_label_periods_each_see_only_what_came_before():
    from models.label_periods import label_periods

    ts = pd.to_datetime(["2020-01-01", "2020-01-10", "2020-01-20", "2020-01-29", "2020-01-30"])
    raw = pd.DataFrame({"user_id": ["a", "a", "b", "a", "b"], "item_id": [1, 2, 3, 4, 5], "timestamp": ts})
    periods = label_periods(raw, "time", 7, 5)
    assert [p.label["item_id"].tolist() for p in periods] == [[4, 5], [3], [2]]  # 01-01 leaves no history: stop
    for p in periods:
        assert p.before["timestamp"].max() < p.label["timestamp"].min() and p.cutoff > p.before["timestamp"].max()
        assert len(p.before) + len(p.label) + sum(len(q.label) for q in periods if q.cutoff > p.cutoff) == len(raw)
    assert sorted(periods[1].before["item_id"]) == [1, 2] and sorted(periods[0].before["item_id"]) == [1, 2, 3]


def test_label_periods_share_one_frame_each_history_a_leading_slice():
    """Every period's history is a view of one shared frame (no copy per period: 1 GB each at H&M
    size) holding exactly the rows before its window, in the split's order within each window."""
    from models.label_periods import label_periods

    rng = np.random.default_rng(3)
    n = 400
    days = rng.integers(0, 60, n)
    raw = pd.DataFrame({"user_id": rng.integers(0, 30, n).astype(str), "item_id": np.arange(n),
                        "timestamp": pd.Timestamp("2020-01-01") + pd.to_timedelta(days, unit="D")})
    periods = label_periods(raw, "time", 7, 4)
    assert len(periods) == 4
    latest = raw["timestamp"].max()
    for k, p in enumerate(periods):
        start = latest - pd.Timedelta(days=7 * (k + 1))
        expected = raw[raw["timestamp"] <= start]
        assert sorted(p.before["item_id"]) == sorted(expected["item_id"])
        assert sorted(p.label["item_id"]) == sorted(raw[(raw["timestamp"] > start)
                                                        & (raw["timestamp"] <= start + pd.Timedelta(days=7))]["item_id"])
        ago = (latest - expected["timestamp"]).dt.days.to_numpy()
        for _, window in expected.groupby(np.where(ago < 28, ago // 7, -1)):  # each window, and the rows before them all
            mine = p.before[p.before["item_id"].isin(window["item_id"])]
            assert mine["item_id"].tolist() == window["item_id"].tolist()  # raw order kept within a group
        assert np.shares_memory(p.before["item_id"].to_numpy(), periods[0].before["item_id"].to_numpy())


def test_gate_bootstrap_resamples_users_not_their_lists():
    """One user's lists in several label periods move together: copying every list three times
    (three periods with the same outcome) must not narrow the interval when users are resampled,
    while treating the copies as independent lists would."""
    from models.ranking import gate_decision

    rng = np.random.default_rng(0)
    ranker, blend = rng.random(60), rng.random(60) - 0.05
    once = gate_decision(ranker, blend, seed=1)
    users = np.repeat(np.arange(60), 3)
    thrice = gate_decision(np.repeat(ranker, 3), np.repeat(blend, 3), seed=1, clusters=users)
    naive = gate_decision(np.repeat(ranker, 3), np.repeat(blend, 3), seed=1)
    assert thrice["lift"] == pytest.approx(once["lift"]) and thrice["ci95"] == pytest.approx(once["ci95"])
    assert naive["ci95"][1] - naive["ci95"][0] < 0.7 * (once["ci95"][1] - once["ci95"][0])
    # the interval is the bootstrap's: a hand-rolled resampling of the 60 gains with the same draws
    draws = np.random.default_rng(1).integers(0, 60, size=(2000, 60))
    assert once["ci95"] == pytest.approx(list(np.quantile((ranker - blend)[draws].mean(axis=1), [0.025, 0.975])))


def test_hard_negatives_are_pandas_sample_cut_per_user():
    """The selection equals the frame expression it replaced (shuffle every unbought candidate with
    ``sample``, keep each user's first ``per_positive x positives``), rows and order."""
    from models.ranking_rows import hard_negatives

    rng = np.random.default_rng(3)
    cands = pd.DataFrame({"user_id": rng.choice(["u1", "u2", "u3", "u4", "u5"], 400),
                          "item_id": rng.integers(0, 50, 400), "score": rng.random(400)},
                         index=pd.RangeIndex(1000, 1400))
    is_pos = rng.random(400) < 0.1
    positives = pd.Series({"u1": 3, "u2": 1, "u3": 0, "u4": 2})  # u5 has none listed: counts as 1
    for per_positive, seed in ((8, 0), (2, 5), (50, 1)):
        expected = cands[~is_pos].sample(frac=1.0, random_state=seed)
        expected = expected[expected.groupby("user_id").cumcount().to_numpy()
                            < per_positive * positives.reindex(expected["user_id"]).fillna(1).to_numpy()]
        pd.testing.assert_frame_equal(hard_negatives(cands, is_pos, positives, per_positive, seed), expected)


def _spawned_children(parent: int) -> list[int]:
    """The pids of ``parent``'s children started by multiprocessing's spawn (read from /proc)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: it runs no more)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _signal_the_child(sig: int, found: list[int], to_parent: bool = False) -> None:
    """Once this process has a spawned child: send ``sig`` to it (or to this process), noting its pid."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        children = _spawned_children(os.getpid())
        if children:
            found.extend(children)
            os.kill(os.getpid() if to_parent else children[0], sig)
        time.sleep(0.05)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc (Linux)")
def test_a_killed_earlier_retriever_process_is_a_clear_error(tmp_path):
    """The earlier label periods' retriever trains in a child process; killed there (the kernel's
    out-of-memory killer would), the build stops with an error that says so, and its scratch is gone."""
    import signal
    import threading

    from funnel.core.errors import FunnelError
    from models.label_periods import train_earlier_retrievers

    scratch = tmp_path / "earlier"
    scratch.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=_signal_the_child, args=(signal.SIGKILL, killed))
    killer.start()
    try:
        with pytest.raises(FunnelError, match="died before it finished"):
            train_earlier_retrievers(tmp_path / "no-such-pre", {"config": {}}, [3], scratch)
    finally:
        killer.join()
    assert killed and not scratch.exists()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc (Linux)")
def test_a_stopped_build_stops_its_earlier_retriever_process(tmp_path):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same stop) while the child trains: the stop
    reaches the caller, the child is stopped with it (it does not train on for nobody) and the
    scratch is gone."""
    import signal
    import threading
    import time

    from models.label_periods import train_earlier_retrievers

    scratch = tmp_path / "earlier"
    scratch.mkdir()
    children: list[int] = []
    asked: list[float] = []
    stopper = threading.Thread(target=lambda: (_signal_the_child(signal.SIGINT, children, True),
                                               asked.append(time.monotonic())))
    stopper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            train_earlier_retrievers(tmp_path / "no-such-pre", {"config": {}}, [3], scratch)
        stopped = time.monotonic()
    finally:
        stopper.join()
    assert children and all(_gone(pid) for pid in children) and not scratch.exists()
    # stopped, not waited for: the child (still importing TensorFlow here, seconds more) was ended
    assert stopped - asked[0] < 3.0


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_earlier_retriever_process_dies_with_its_parent(tmp_path):
    """A parent killed outright (SIGKILL: no handler runs) takes the training child with it: the
    kernel kills the child, which would otherwise train on, orphaned, for many minutes."""
    import subprocess
    import sys
    import time

    code = ("import sys; from pathlib import Path; from models.label_periods import train_earlier_retrievers; "
            "train_earlier_retrievers(Path(sys.argv[1]) / 'no-such-pre', {'config': {}}, [3], Path(sys.argv[1]))")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        deadline, children = time.monotonic() + 60, []
        while not children and time.monotonic() < deadline and parent.poll() is None:
            children = _spawned_children(parent.pid)
            time.sleep(0.05)
        assert children, "the child process never started"
        parent.kill()
        parent.wait()
        # within seconds: the child (still importing TensorFlow, seconds more) does not finish first
        deadline = time.monotonic() + 3
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in children)
    finally:
        if parent.poll() is None:
            parent.kill()
