"""Reliability probes of `funnel serve` (a real Triton over gRPC), as an operator would try them.

    python bench/reliability.py [--run demo/run] [--requests 10000] [--concurrency 16]

1. load: single-user requests at a concurrency (errors, p50/p99);
2. batches: 64-user requests (users/s against single-user requests);
3. hostile requests: malformed, oversized and non-UTF-8 inputs; each must get a clear error or
   an answer, and the server must stay up;
4. stub kill: `kill -9` of the python-backend stub under traffic; when `funnel serve` notices,
   when it serves again, failed requests meanwhile;
5. server kill with the prediction log at 100%: records answered but never written;
6. owner kill: `kill -9` of `funnel serve` must take tritonserver with it (ports free again);
7. export killed (SIGKILL and SIGTERM) at several points: the previous repository still loads,
   and after the next export no temporary directory is left.
Prints a table and one JSON document (also written to bench/results/reliability.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import throughput as load  # noqa: E402 - the same load generator as the serving benchmark

FUNNEL = [sys.executable, "-m", "funnel"]


class Serve:
    """`funnel serve` in a subprocess with its stderr collected (timestamped) line by line."""

    def __init__(self, repo: Path, *flags: str):
        from funnel.serving import free_port

        self.port = free_port()
        self.proc = subprocess.Popen([*FUNNEL, "serve", str(repo), "--grpc-port", str(self.port), "--http-port", "0",
                                      *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.err: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.proc.stdout.readline()
        if not self.ready.startswith("ready"):
            raise SystemExit(f"funnel serve did not start: {''.join(line for _, line in self.err)}")
        self.url = f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in iter(self.proc.stderr.readline, ""):
            self.err.append((time.monotonic(), line))

    def first(self, text: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in self.err:
                if text in line:
                    return when
            time.sleep(0.02)
        return None

    def triton_pid(self) -> int:
        from funnel.serving import _children

        return next(iter(_children(self.proc.pid)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)


def hostile(url: str, users: list[str]) -> list[dict]:
    """Each request: answered or a clear error (no Python exception names, no traceback)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def tensor(name, values, dtype):
        t = grpcclient.InferInput(name, list(values.shape), dtype)
        t.set_data_from_numpy(values)
        return t

    text = lambda values: np.array(values, dtype=np.object_).reshape(len(values), -1)  # noqa: E731 - rows
    one = lambda value, dtype: np.array([[value]], dtype)  # noqa: E731 - a request-level value, one user row
    u = text([users[0]])
    cases = {
        "user_id as INT64": [tensor("user_id", np.array([[1], [2]], np.int64), "INT64")],
        "no user_id": [tensor("k", one(3, np.int32), "INT32")],
        "k = 0": [tensor("user_id", u, "BYTES"), tensor("k", one(0, np.int32), "INT32")],
        "k = 2^31-1": [tensor("user_id", u, "BYTES"), tensor("k", one(2**31 - 1, np.int32), "INT32")],
        "two k values": [tensor("user_id", text(users[:2]), "BYTES"),
                         tensor("k", np.array([[3], [4]], np.int32), "INT32")],
        "too many users": [tensor("user_id", text(users[:1] * 5000), "BYTES")],
        "no users": [tensor("user_id", np.empty((0, 1), dtype=np.object_), "BYTES")],
        "temperature NaN": [tensor("user_id", u, "BYTES"), tensor("temperature", one(np.nan, np.float32), "FP32")],
        "temperature -1": [tensor("user_id", u, "BYTES"), tensor("temperature", one(-1, np.float32), "FP32")],
        "non-UTF-8 user id": [tensor("user_id", text([b"\xff\xfe\xfd"]), "BYTES")],
        "1 MB user id": [tensor("user_id", text(["x" * 1_000_000]), "BYTES")],
        "empty user id": [tensor("user_id", text([""]), "BYTES")],
        "NUL in user id": [tensor("user_id", text(["a\0b"]), "BYTES")],
        "10k excluded items": [tensor("user_id", u, "BYTES"),
                               tensor("exclude_items", np.array([[str(i) for i in range(10_000)]], np.object_),
                                      "BYTES")],
        "non-UTF-8 excluded item": [tensor("user_id", u, "BYTES"),
                                    tensor("exclude_items", np.array([[b"\xc3\x28"]], np.object_), "BYTES")],
        "unknown input": [tensor("user_id", u, "BYTES"), tensor("bogus", one(1, np.int32), "INT32")],
        "2-D user_id": [tensor("user_id", np.array([[users[0], users[1]]], np.object_), "BYTES")],
    }
    client = grpcclient.InferenceServerClient(url)
    out = []
    for name, inputs in cases.items():
        try:
            client.infer("funnel", inputs)
            result, message = "answered", ""
        except InferenceServerException as exc:
            result, message = "error", exc.message()
        unclear = any(word in message for word in ("Traceback", "Exception", "KeyError", "ValueError",
                                                   "TypeError", "IndexError", "UnicodeDecodeError"))
        out.append({"request": name, "result": "unclear error" if unclear else result, "message": message[:160]})
    client.close()
    return out


def stub_kill(serve: Serve, users: list[str]) -> dict:
    """kill -9 of the stub while a client keeps asking; failures counted until service is back."""
    from funnel.client import Client
    from funnel.serving import _children

    stub = next(iter(_children(serve.triton_pid())))
    failures, done = [], threading.Event()

    def traffic() -> None:
        with Client(serve.url) as client:
            i = 0
            while not done.is_set():
                try:
                    client.infer([users[i % len(users)]], k=12)
                except Exception:  # noqa: BLE001 - counted
                    failures.append(time.monotonic())
                i += 1
                time.sleep(0.01)

    thread = threading.Thread(target=traffic)
    thread.start()
    time.sleep(1)
    killed = time.monotonic()
    os.kill(stub, signal.SIGKILL)
    noticed = serve.first("unhealthy:", 30)
    restored = serve.first("restored:", 120)
    time.sleep(2)
    done.set()
    thread.join()
    after = [t for t in failures if restored and t > restored + 0.5]
    return {"noticed_s": round(noticed - killed, 2) if noticed else None,
            "restored_s": round(restored - killed, 2) if restored else None,
            "failed_requests": len(failures), "failures_after_restore": len(after),
            "served_after": bool(restored) and not after}


def server_kill(repo: Path, work: Path, users: list[str]) -> dict:
    """Prediction log at 100%; traffic; kill -9 tritonserver; count answered-but-unwritten records."""
    from ensemble.prediction_log import read_logs
    from funnel.client import Client

    logs = work / "crash_logs"
    serve = Serve(repo, "--prediction-log", str(logs), "--log-sample", "1.0")
    answered: list[float] = []
    try:
        triton = serve.triton_pid()
        with Client(serve.url) as client:
            end = time.monotonic() + 5
            i = 0
            while time.monotonic() < end:
                client.infer([f"crash-{i}"], k=5)
                answered.append(time.time())
                i += 1
        killed = time.time()
        os.kill(triton, signal.SIGKILL)
        code = serve.proc.wait(30)
    finally:
        serve.stop()
    frame = read_logs(logs)
    written = int(frame["user_id"].str.startswith("crash-").sum())
    lost = len(answered) - written
    lost_span = killed - answered[written] if lost else 0.0
    message = next((line.strip() for _, line in serve.err if "error" in line), "")
    return {"answered": len(answered), "written": written, "lost": lost, "lost_seconds": round(lost_span, 2),
            "funnel_serve_exit": code, "message": message[:160]}


def owner_kill(repo: Path) -> dict:
    serve = Serve(repo)
    triton = serve.triton_pid()
    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{triton}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan = Path(f"/proc/{triton}").exists()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", serve.port))
            port_free = True
        except OSError:
            port_free = False
    if orphan:
        os.kill(triton, signal.SIGKILL)
    return {"tritonserver_survived": orphan, "port_free": port_free}


def export_kills(run: str, work: Path, points: list[float]) -> list[dict]:
    from ensemble.runtime import Recommender

    repo = work / "kill_repo"
    subprocess.run([*FUNNEL, "export", run, "--out", str(repo)], check=True, capture_output=True)
    before = (repo / "funnel" / "1" / "ensemble" / "export.json").read_bytes()
    out = []
    for how in (signal.SIGKILL, signal.SIGTERM):
        for at in points:
            proc = subprocess.Popen([*FUNNEL, "export", run, "--out", str(repo)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(at)
            finished = proc.poll() is not None
            proc.send_signal(how)
            proc.wait(60)
            intact = (repo / "funnel" / "1" / "ensemble" / "export.json").exists()
            loads = True
            try:
                Recommender(repo / "funnel" / "1" / "ensemble")
            except Exception:  # noqa: BLE001 - reported
                loads = False
            own = [p.name for p in work.iterdir() if p.name.startswith((f".kill_repo.tmp-{proc.pid}-",
                                                                         f".kill_repo.old-{proc.pid}"))]
            out.append({"signal": how.name, "after_s": at, "finished_first": finished, "repo_loads": intact and loads,
                        "own_temporary_left": bool(own)})
    subprocess.run([*FUNNEL, "export", run, "--out", str(repo)], check=True, capture_output=True)
    out.append({"signal": "next export", "after_s": None, "finished_first": True,
                "repo_loads": (repo / "funnel" / "1" / "ensemble" / "export.json").read_bytes() != before,
                "temporaries_left": len([p for p in work.iterdir() if p.name.startswith(".kill_repo.")])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="demo/run")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-points", type=float, nargs="+", default=[0.5, 2.0, 5.0, 10.0])
    parser.add_argument("--out", default="bench/results/reliability.json")
    args = parser.parse_args()

    import pandas as pd

    from ensemble.build import ExportConfig, export
    from funnel.report import table

    work = Path(tempfile.mkdtemp(prefix="funnel-reliability-"))
    export(ExportConfig(run=args.run, out=str(work / "repo")))
    users = pd.read_parquet(work / "repo" / "funnel" / "1" / "ensemble" / "users.parquet")["user_id_raw"]
    users = users.astype(str).sample(min(len(users), 5000), random_state=0).tolist()

    serve = Serve(work / "repo")
    try:
        single = load(serve.url, users, 1, args.concurrency, args.requests)
        batches = load(serve.url, users, 64, 4, 200)
        probes = hostile(serve.url, users)
        up_after_hostile = serve.proc.poll() is None
        stub = stub_kill(serve, users)
    finally:
        serve.stop()
    crash = server_kill(work / "repo", work, users)
    owner = owner_kill(work / "repo")
    exports = export_kills(args.run, work, args.kill_points)
    shutil.rmtree(work, ignore_errors=True)

    doc = {"single_user": single, "batches_64": batches,
           "batch_speedup_users_per_s": round(batches["users_per_s"] / max(single["users_per_s"], 1e-9), 1),
           "hostile": probes, "server_up_after_hostile": up_after_hostile,
           "stub_kill": stub, "server_kill": crash, "owner_kill": owner, "export_kills": exports}
    unclear = sum(p["result"] == "unclear error" for p in probes)
    rows = [
        ("load", f"{single['requests']:,} x 1 user @ {single['concurrency']}: {single['errors']} errors, "
                 f"p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms"),
        ("64-user batches", f"{batches['errors']} errors, {batches['users_per_s']:,.0f} users/s "
                            f"({doc['batch_speedup_users_per_s']}x single-user)"),
        ("hostile requests", f"{len(probes)} sent: {sum(p['result'] == 'error' for p in probes)} clear errors, "
                             f"{sum(p['result'] == 'answered' for p in probes)} answered, {unclear} unclear; "
                             f"server up: {up_after_hostile}"),
        ("stub kill -9", f"noticed after {stub['noticed_s']} s, serving again after {stub['restored_s']} s, "
                         f"{stub['failed_requests']} failed requests meanwhile"),
        ("server kill -9 (log 100%)", f"{crash['lost']} of {crash['answered']} logged records lost "
                                      f"({crash['lost_seconds']} s of traffic); funnel serve exit "
                                      f"{crash['funnel_serve_exit']}"),
        ("funnel serve kill -9", f"tritonserver survived: {owner['tritonserver_survived']}, "
                                 f"port free: {owner['port_free']}"),
        ("export killed", f"{len(exports) - 1} kills: repository loads after each: "
                          f"{all(e['repo_loads'] for e in exports[:-1])}; SIGTERM left its temporary: "
                          f"{sum(e['own_temporary_left'] for e in exports[:-1] if e['signal'] == 'SIGTERM')} of "
                          f"{sum(e['signal'] == 'SIGTERM' for e in exports)}, SIGKILL: "
                          f"{sum(e['own_temporary_left'] for e in exports[:-1] if e['signal'] == 'SIGKILL')}; "
                          f"temporaries after the next export: {exports[-1]['temporaries_left']}"),
    ]
    print(table(rows, title="funnel serve: reliability probes"))
    text = json.dumps(doc, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
