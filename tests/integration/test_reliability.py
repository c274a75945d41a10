"""Operating `funnel serve` (a real Triton over gRPC): a dead backend process is replaced, the server
dies with its owner, a crash loses at most a second of the prediction log, the admin APIs need the
key, hostile ids are request errors, and a tampered export is refused with the reason on the console.
The full probe set (load, batches, export kills) is `bench/reliability.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ensemble.build import ExportConfig, export
from funnel.serving import ADMIN_HEADER, _children, free_port

FUNNEL = [sys.executable, "-m", "funnel"]


@pytest.fixture(scope="module")
def repo(ranked_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "triton_repo"
    export(ExportConfig(run=str(ranked_run), out=str(out), candidates=60, trending=20, max_batch=64))
    return out


class Serve:
    """`funnel serve` in a subprocess; stderr is collected line by line."""

    def __init__(self, repo: Path, *flags: str):
        self.port = free_port()
        self.proc = subprocess.Popen([*FUNNEL, "serve", str(repo), "--grpc-port", str(self.port), "--http-port", "0",
                                      *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()
        self.ready = self.proc.stdout.readline()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for(self, text: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if any(text in line for line in self.err):
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed within {timeout} s: {''.join(self.err)}")


def ask(url: str, users: list[str], k: int = 5):
    from funnel.client import Client

    with Client(url, batch_size=64) as c:
        return c.infer(users, k=k)


def test_stub_death_is_repaired_and_the_server_dies_with_its_owner(repo, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from ensemble.prediction_log import read_logs

    logs, key_file = tmp_path / "logs", tmp_path / "admin.key"
    serve = Serve(repo, "--prediction-log", str(logs), "--log-sample", "1.0", "--admin-key-file", str(key_file))
    try:
        assert serve.ready.startswith("ready: gRPC"), "".join(serve.err)
        triton = next(iter(_children(serve.proc.pid)))
        stub = next(iter(_children(triton)))
        assert ask(serve.url, ["u"])["item_ids"].shape == (1, 5)

        # admin APIs need the key; inference and health do not
        raw = grpcclient.InferenceServerClient(serve.url)
        for call in (lambda **h: raw.update_log_settings({"log_verbose_level": 1}, **h),
                     lambda **h: raw.get_model_repository_index(**h),
                     lambda **h: raw.get_system_shared_memory_status(**h),
                     lambda **h: raw.get_inference_statistics(**h)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        header = {f"triton-grpc-protocol-{ADMIN_HEADER}": key_file.read_text().strip()}
        assert [m.name for m in raw.get_model_repository_index(headers=header).models] == ["funnel"]
        assert raw.is_server_ready()

        # an id that is not UTF-8 is a request error naming the field, not an internal error
        bad = grpcclient.InferInput("user_id", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="user_id: entry 0 is not valid UTF-8"):
            raw.infer("funnel", [bad])

        # kill -9 of the python-backend stub: noticed, models reloaded, serving again
        os.kill(stub, signal.SIGKILL)
        noticed = serve.wait_for("unhealthy: backend process died", 5)
        restored = serve.wait_for("restored: serving again", 120)
        assert ask(serve.url, ["u", "v"])["item_ids"].shape == (2, 5)
        assert noticed <= 5
        print(f"stub kill: noticed after {noticed:.1f} s, restored after {restored:.1f} s")

        # a crash loses at most the last second of the prediction log: 1,950 records are not a multiple of
        # the 1,000-record batch, and 3 s is within the old 5 s period, so the old policy lost 950 here
        served = sum(len(ask(serve.url, [f"user-{i}-{j}" for j in range(50)])["item_ids"]) for i in range(39))
        time.sleep(3)
        os.kill(serve.proc.pid, signal.SIGKILL)  # the owner dies hard ...
        serve.proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{triton}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{triton}").exists(), "tritonserver outlived funnel serve"  # ... and takes Triton
        raw.close()
    finally:
        if serve.proc.poll() is None:
            os.killpg(serve.proc.pid, signal.SIGTERM)
            serve.proc.wait(60)
    frame = read_logs(logs)
    assert (frame["user_id"].str.startswith("user-")).sum() == served == 1950


def test_a_tampered_export_is_refused_with_the_reason_on_the_console(repo, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    pkl = copy / "funnel" / "1" / "ensemble" / "ensemble.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    result = subprocess.run([*FUNNEL, "serve", str(copy), "--grpc-port", str(free_port()), "--http-port", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "signature does not match" in result.stderr, result.stderr  # Triton's reason, without --log


def test_binding_beyond_loopback_warns_with_the_ports(repo):
    result = subprocess.run([*FUNNEL, "serve", str(repo), "--host", "0.0.0.0", "--grpc-port", "18001",
                             "--http-port", "18000", "--tritonserver", "/bin/false"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    warning = result.stderr.splitlines()[0]
    assert warning.startswith("warning: binding 0.0.0.0: gRPC port 18001 and HTTP port 18000 are open")
    assert "TLS OFF" in warning.replace("gRPC TLS OFF", "TLS OFF")
    assert "exited with code 1 while starting" in result.stderr


def test_tls_needs_a_certificate_and_a_key(repo, tmp_path, cli):
    code, _, err = cli("serve", repo, "--grpc-tls-cert", tmp_path / "missing.pem")
    assert code == 2 and "both --grpc-tls-cert and --grpc-tls-key" in err
    code, _, err = cli("serve", repo, "--grpc-tls-cert", tmp_path / "a.pem", "--grpc-tls-key", tmp_path / "b.pem")
    assert code == 2 and "no such TLS certificate/key file" in err


def test_export_killed_by_sigterm_leaves_nothing_and_stale_temporaries_go(ranked_run, tmp_path):
    out = tmp_path / "repo"
    proc = subprocess.Popen([*FUNNEL, "export", str(ranked_run), "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".repo.tmp-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, err = proc.wait(60), proc.stderr.read()
    assert code == 130, err[-3000:]
    assert "no partial output was kept" in err
    assert list(tmp_path.iterdir()) == []
    # what a kill -9 leaves behind (a dead writer's pid in the name) is removed by the next export
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".repo.tmp-{dead.pid}-abcd1234"
    (stale / "funnel").mkdir(parents=True)
    mine = tmp_path / f".repo.tmp-{os.getpid()}-live0001"  # a live writer's: kept
    mine.mkdir()
    export(ExportConfig(run=str(ranked_run), out=str(out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "repo"])
    assert json.loads((out / "funnel" / "1" / "ensemble" / "export.json").read_text())["ensemble_signature"]


def test_tls_server_answers_a_tls_client_only(repo, tmp_path):
    """`funnel serve --grpc-tls-cert/--grpc-tls-key` with a self-signed certificate (openssl);
    `funnel recommend --tls-ca` trusts it; a plaintext client gets no answer."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    serve = Serve(repo, "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key))
    try:
        assert serve.ready.startswith("ready: gRPC"), "".join(serve.err)
        ask_tls = [*FUNNEL, "recommend", "--url", serve.url, "--user", "someone", "--k", "3", "--json"]
        answered = subprocess.run([*ask_tls, "--tls-ca", str(cert)], capture_output=True, text=True, timeout=120)
        assert answered.returncode == 0, answered.stderr
        assert len(json.loads(answered.stdout)["items"]) == 3
        plain = subprocess.run(ask_tls, capture_output=True, text=True, timeout=120)
        assert plain.returncode == 2 and "needs --tls-ca" in plain.stderr and "Traceback" not in plain.stderr
    finally:
        os.killpg(serve.proc.pid, signal.SIGTERM)
        serve.proc.wait(60)
