"""Start and stop a real Triton Inference Server on a funnel export.

On CPU hosts the server is the Triton 2.51 build bundled in the ``nvidia-pytriton`` wheel
(python backend only): its backend and the python-backend stub for the running Python are
copied once into a private cache directory, and the environment is set so the stub loads
this interpreter's libpython and sees this environment's packages. Elsewhere ``tritonserver``
from PATH (NVIDIA's full build) or an explicit binary is used.

Operations:

- the server dies with its owner (``PR_SET_PDEATHSIG``): a ``kill -9`` of ``funnel serve``
  leaves no orphan holding the ports;
- models are loaded in explicit model-control mode, so a dead python-backend stub (which
  Triton itself neither reports nor replaces) is found by ``check()`` and replaced by
  reloading the models (``restore()``);
- the administrative APIs (model repository, model configuration, shared memory, statistics,
  trace, logging) need the ``funnel-admin-key`` header; health, metadata and inference stay
  open. The key comes from ``FUNNEL_ADMIN_KEY`` or is generated per server.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

from funnel.core.child import die_with_parent
from funnel.core.errors import FunnelError


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def _bundled_backends(root: Path) -> Path:
    """A backend directory with the python backend and the stub for this Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FunnelError(f"{root}: the bundled Triton has no python-backend stub for Python {version}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "funnel" / f"triton-backends-py{version}"
    target = cache / "python"
    wanted = [root / "backends" / "python" / "libtriton_python.so",
              root / "backends" / "python" / "triton_python_backend_utils.py", stub]
    def complete() -> bool:
        return all((target / f.name).exists() and (target / f.name).stat().st_size == f.stat().st_size
                   for f in wanted)

    if complete():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent starts (test workers, several servers) copy once
        if not complete():
            tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "python").mkdir(parents=True)
            for f in wanted:
                shutil.copy2(f, tmp / "python" / f.name)
            shutil.rmtree(cache, ignore_errors=True)
            tmp.rename(cache)
    return cache


ADMIN_HEADER = "funnel-admin-key"
RESTRICTED = "shared-memory,model-config,model-repository,statistics,trace,logging"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` (pid -> command name); zombies (dead, not reaped) excluded."""
    out: dict[int, str] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                stat = Path(f"/proc/{kid}/stat").read_text()
            except OSError:
                continue
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            if state not in "ZX":
                out[kid] = name
    return out


def error_lines(log: str, limit: int = 3) -> list[str]:
    """Why a Triton run failed, from its log: the distinct error messages (without the Python
    stack the backend appends), else the last lines."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E") or "error:" in line.lower()]
    out: list[str] = []
    for line in errors or lines[-limit:]:
        line = line.split("\\n\\nAt:")[0].split("\\n")[0]  # the backend's escaped traceback
        if "] " in line and line[:1] in "EIW" and line[1:5].isdigit():
            line = line.split("] ", 1)[1]  # drop Triton's "E1129 10:22:36.49 1167 file.cc:692]" prefix
        line = line.strip('"')
        if line not in out:
            out.append(line[:400])
    return out[-limit:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process serving ``repo``; ``start()`` waits until it is ready.

    Usable as a context manager. The process runs in its own process group and is stopped
    with SIGTERM (then SIGKILL after ``stop_timeout``), so no python-backend stub survives;
    it is also killed by the kernel when the process that started it dies.
    """

    def __init__(self, repo: str | Path, host: str = "127.0.0.1", grpc_port: int = 8001,
                 http_port: int | None = None, binary: str | None = None, log_path: str | Path | None = None,
                 stop_timeout: float = 60.0, prediction_log: str | Path | None = None, log_sample: float = 0.05,
                 admin_key: str | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, experiment: str | None = None):
        self.repo = Path(repo).resolve()
        if not (self.repo / "funnel" / "config.pbtxt").exists():
            raise FunnelError(f"{repo}: not a funnel Triton repository (run `funnel export` first)")
        self.host, self.grpc_port = host, grpc_port or free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.binary, self.log_path, self.stop_timeout = binary, log_path, stop_timeout
        if not 0.0 <= log_sample <= 1.0:
            raise FunnelError(f"--log-sample must be within [0, 1] (got {log_sample})")
        self.prediction_log = Path(prediction_log).resolve() if prediction_log else None
        self.log_sample = log_sample
        self.admin_key = admin_key or os.environ.get("FUNNEL_ADMIN_KEY") or secrets.token_urlsafe(24)
        if bool(tls_cert) != bool(tls_key):
            raise FunnelError("TLS needs both --grpc-tls-cert and --grpc-tls-key")
        for path in (tls_cert, tls_key):
            if path and not Path(path).is_file():
                raise FunnelError(f"{path}: no such TLS certificate/key file")
        self.tls = (str(Path(tls_cert).resolve()), str(Path(tls_key).resolve())) if tls_cert else None
        self.experiment = experiment  # FUNNEL_EXPERIMENT JSON (ensemble.experiment.plan) or None
        self.process: subprocess.Popen | None = None
        self.stubs: dict[int, str] = {}
        self._log = None
        self._log_start = 0
        self._own_log: str | None = None

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata for the restricted APIs (Triton prefixes the key with its protocol tag)."""
        return {f"triton-grpc-protocol-{ADMIN_HEADER}": self.admin_key}

    @property
    def exposed(self) -> bool:
        """Whether the server listens on more than the loopback interface."""
        return self.host not in LOOPBACK

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("FEAST_USAGE", "False")
        env.pop("FUNNEL_LOG_DIR", None)
        env.pop("FUNNEL_EXPERIMENT", None)
        if self.experiment:
            env["FUNNEL_EXPERIMENT"] = self.experiment
        if self.prediction_log and self.log_sample > 0:
            env["FUNNEL_LOG_DIR"], env["FUNNEL_LOG_SAMPLE"] = str(self.prediction_log), str(self.log_sample)
        flags = [f"--model-repository={self.repo}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                 f"--http-address={self.host}", f"--http-port={self.http_port}", "--allow-metrics=false",
                 "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
                 "--model-control-mode=explicit", "--load-model=*",
                 f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={self.admin_key}",
                 f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={self.admin_key}"]
        if self.tls:
            flags += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls[0]}", f"--grpc-server-key={self.tls[1]}"]
        binary = self.binary or shutil.which("tritonserver")
        if binary:
            return [binary, *flags], env
        root = _pytriton_root()
        if root is None:
            raise FunnelError("no Triton server found: install nvidia-pytriton (CPU hosts) or put tritonserver on PATH")
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")])
        flags += [f"--backend-directory={_bundled_backends(root)}", "--pinned-memory-pool-byte-size=0",
                  "--cuda-memory-pool-byte-size=0:0"]
        return [str(root / "bin" / "tritonserver"), *flags], env

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.url, ssl=bool(self.tls),
                                                root_certificates=self.tls[0] if self.tls else None)

    def start(self, timeout: float = 300.0) -> "TritonServer":
        cmd, env = self.command()
        if self.log_path:
            self._log = open(self.log_path, "ab")
            self._log_start = self._log.tell()
        else:  # kept only to say why a start failed
            handle, self._own_log = tempfile.mkstemp(prefix="funnel-triton-", suffix=".log")
            self._log, self._log_start = os.fdopen(handle, "wb"), 0
        self.process = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    reason = "; ".join(self.log_tail())
                    self.stop()
                    raise FunnelError(f"tritonserver exited with code {code} while starting"
                                      + (f": {reason}" if reason else "")
                                      + (f" (log: {self.log_path})" if self.log_path else ""))
                try:
                    if client.is_server_ready():
                        self.stubs = _children(self.process.pid)
                        return self
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise FunnelError(f"tritonserver not ready after {timeout:.0f} s")

    def log_tail(self) -> list[str]:
        """Why the server stopped, from this run's part of its log."""
        path = self.log_path or self._own_log
        if not path:
            return []
        try:
            with open(path, "rb") as handle:
                handle.seek(self._log_start)
                return error_lines(handle.read().decode(errors="replace"))
        except OSError:
            return []

    def check(self) -> str | None:
        """None while healthy, else what is wrong (a backend process died, the server exited)."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            if code is not None and code < 0:
                return f"tritonserver exited: killed by {signal.Signals(-code).name}"
            return f"tritonserver exited with code {code}"
        alive = _children(self.process.pid)
        dead = [f"{name} (pid {pid})" for pid, name in self.stubs.items() if pid not in alive]
        return f"backend process died: {', '.join(dead)}" if dead else None

    def restore(self, timeout: float = 60.0) -> float:
        """Replace dead backend processes by unloading and reloading every model; returns seconds.

        While it runs the server is not ready (strict readiness), so a load balancer routes
        elsewhere. Raises FunnelError when the server is not serving again within ``timeout``.
        """
        began = time.monotonic()
        client = self.client()
        try:
            models = [m.name for m in client.get_model_repository_index(headers=self.admin_headers).models]
            for name in models:
                client.unload_model(name, headers=self.admin_headers)
            for name in models:  # the graph's own models before the graph that calls them
                if name != "funnel":
                    client.load_model(name, headers=self.admin_headers)
            if "funnel" in models:
                client.load_model("funnel", headers=self.admin_headers)
            while time.monotonic() - began < timeout:
                if client.is_server_ready():
                    self.stubs = _children(self.process.pid)
                    return time.monotonic() - began
                time.sleep(0.1)
        except Exception as exc:  # noqa: BLE001 - any failure to reload is reported as one
            raise FunnelError(f"could not reload the models: {exc}") from None
        finally:
            client.close()
        raise FunnelError(f"the server was not ready {timeout:.0f} s after reloading its models")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.process = None
        if self._log:
            self._log.close()
            self._log = None
        if self._own_log:
            Path(self._own_log).unlink(missing_ok=True)
            self._own_log = None

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
