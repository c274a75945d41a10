"""Operations helpers without a server: artifact signing, stale temporaries, Triton flags and log reasons."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from funnel.core.errors import FunnelError


def test_signing_key_is_created_private_and_verifies(tmp_path, monkeypatch):
    from funnel.core import signing

    monkeypatch.delenv("FUNNEL_SIGNING_KEY", raising=False)
    monkeypatch.delenv("FUNNEL_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    artifact = tmp_path / "graph.pkl"
    artifact.write_bytes(b"graph")
    with pytest.raises(FunnelError, match="no signing key"):
        signing.verify_files([artifact], "hmac-sha256:00", "graph.pkl")
    signature = signing.sign_files([artifact])
    key_file = tmp_path / "config" / "funnel" / "signing.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    signing.verify_files([artifact], signature, "graph.pkl")
    import hashlib
    import hmac

    expected = hmac.new(key_file.read_bytes().strip(), b"graph", hashlib.sha256).hexdigest()
    assert signature == "hmac-sha256:" + expected  # independent computation
    artifact.write_bytes(b"graph!")
    with pytest.raises(FunnelError, match="signature does not match"):
        signing.verify_files([artifact], signature, "graph.pkl")
    with pytest.raises(FunnelError, match="not signed"):
        signing.verify_files([artifact], None, "graph.pkl")
    monkeypatch.setenv("FUNNEL_SIGNING_KEY", "another-key-0123456789")
    artifact.write_bytes(b"graph")
    with pytest.raises(FunnelError, match="another key"):
        signing.verify_files([artifact], signature, "graph.pkl")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from funnel.core.fsutil import atomic_output_dir, remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".repo.tmp-{dead.pid}-x1", tmp_path / f".repo.old-{dead.pid}"]
    for path in stale:
        path.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f".repo.tmp-{sleeper.pid}-x2"
    other = tmp_path / f".other.tmp-{dead.pid}-x3"
    live.mkdir()
    other.mkdir()
    try:
        assert sorted(remove_stale_temporaries(tmp_path / "repo")) == sorted(stale)
        with atomic_output_dir(tmp_path / "repo") as tmp:
            assert tmp.name.startswith(f".repo.tmp-{os.getpid()}-")
            (tmp / "file").write_text("x")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["repo", live.name, other.name])
    finally:
        sleeper.kill()


def test_sigterm_unwinds_an_atomic_output_like_ctrl_c(tmp_path):
    script = textwrap.dedent(f"""
        import signal, sys, time
        from funnel.cli import _terminated
        from funnel.core.fsutil import atomic_output_dir
        signal.signal(signal.SIGTERM, _terminated)
        try:
            with atomic_output_dir({str(tmp_path / 'out')!r}) as tmp:
                (tmp / "half").write_text("x")
                print("writing", flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.terminate()
    assert proc.wait(30) == 130
    assert list(tmp_path.iterdir()) == []


def test_sigterm_swallowed_in_a_destructor_still_leaves_nothing(tmp_path):
    """The handler's KeyboardInterrupt can land inside a ``__del__`` (TensorFlow's, during an export),
    where Python prints "Exception ignored" and carries on; the recorded stop request still keeps
    the output from being renamed into place."""
    script = textwrap.dedent(f"""
        import signal, sys, time
        from funnel.cli import _terminated
        from funnel.core.fsutil import atomic_output_dir

        class Slow:
            def __del__(self):
                print("in destructor", flush=True)
                time.sleep(5)

        signal.signal(signal.SIGTERM, _terminated)
        try:
            with atomic_output_dir({str(tmp_path / 'out')!r}) as tmp:
                (tmp / "half").write_text("x")
                slow = Slow()
                del slow  # the signal lands in here and is swallowed
                (tmp / "rest").write_text("y")
                print("block finished", flush=True)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "in destructor\n"
    proc.terminate()
    assert proc.wait(30) == 130
    assert proc.stdout.read() == "block finished\n"  # the interrupt was swallowed: the block went on
    assert "Exception ignored" in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_triton_flags_restrict_admin_apis_and_pass_tls(tmp_path, monkeypatch):
    from funnel.serving import TritonServer

    repo = tmp_path / "repo"
    (repo / "funnel").mkdir(parents=True)
    (repo / "funnel" / "config.pbtxt").write_text("")
    monkeypatch.setenv("FUNNEL_ADMIN_KEY", "k" * 20)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    server = TritonServer(repo, host="0.0.0.0", grpc_port=1, http_port=2, binary="/bin/true", tls_cert=cert,
                          tls_key=key)
    flags = server.command()[0]
    restricted = "shared-memory,model-config,model-repository,statistics,trace,logging:funnel-admin-key=" + "k" * 20
    assert f"--grpc-restricted-protocol={restricted}" in flags and f"--http-restricted-api={restricted}" in flags
    assert "--model-control-mode=explicit" in flags and "--load-model=*" in flags
    assert ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"] == flags[-3:]
    assert server.exposed and not TritonServer(repo, binary="/bin/true").exposed
    monkeypatch.delenv("FUNNEL_ADMIN_KEY")
    a, b = TritonServer(repo, binary="/bin/true"), TritonServer(repo, binary="/bin/true")
    assert a.admin_key != b.admin_key and len(a.admin_key) >= 24  # generated per server


def test_start_failure_names_tritons_reason(tmp_path, monkeypatch):
    from funnel.serving import TritonServer

    repo = tmp_path / "repo"
    (repo / "funnel").mkdir(parents=True)
    (repo / "funnel" / "config.pbtxt").write_text("")
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\necho 'I1129 starting'\necho \"E1129 model.py:12] failed to load 'funnel': boom\"\n"
                    "exit 1\n")
    fake.chmod(0o755)
    import tempfile

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # other servers (test workers) log elsewhere
    with pytest.raises(FunnelError, match="exited with code 1 while starting: failed to load 'funnel': boom"):
        TritonServer(repo, binary=str(fake), grpc_port=0).start(timeout=30)
    assert list(private.iterdir()) == []  # its private log is not left behind


def test_a_dead_child_process_is_reported(tmp_path):
    from funnel.serving import _children

    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
                               "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert child in _children(parent.pid)
        os.kill(child, 9)
        time.sleep(0.3)
        assert child not in _children(parent.pid)  # a zombie is not alive
    finally:
        parent.kill()
