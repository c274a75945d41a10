"""Start and stop a real Triton Inference Server on a funnel export.

On CPU hosts the server is the Triton 2.51 build bundled in the ``nvidia-pytriton`` wheel
(python backend only): its backend and the python-backend stub for the running Python are
copied once into a private cache directory, and the environment is set so the stub loads
this interpreter's libpython and sees this environment's packages. Elsewhere ``tritonserver``
from PATH (NVIDIA's full build) or an explicit binary is used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

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
    if not all((target / f.name).exists() and (target / f.name).stat().st_size == f.stat().st_size for f in wanted):
        tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        for f in wanted:
            shutil.copy2(f, tmp / "python" / f.name)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    return cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process serving ``repo``; ``start()`` waits until it is ready.

    Usable as a context manager. The process runs in its own process group and is stopped
    with SIGTERM (then SIGKILL after ``stop_timeout``), so no python-backend stub survives.
    """

    def __init__(self, repo: str | Path, host: str = "127.0.0.1", grpc_port: int = 8001,
                 http_port: int | None = None, binary: str | None = None, log_path: str | Path | None = None,
                 stop_timeout: float = 60.0, prediction_log: str | Path | None = None, log_sample: float = 0.05):
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
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("FEAST_USAGE", "False")
        env.pop("FUNNEL_LOG_DIR", None)
        if self.prediction_log and self.log_sample > 0:
            env["FUNNEL_LOG_DIR"], env["FUNNEL_LOG_SAMPLE"] = str(self.prediction_log), str(self.log_sample)
        flags = [f"--model-repository={self.repo}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                 f"--http-address={self.host}", f"--http-port={self.http_port}", "--allow-metrics=false",
                 "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0"]
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

    def start(self, timeout: float = 300.0) -> "TritonServer":
        cmd, env = self.command()
        out = subprocess.DEVNULL
        if self.log_path:
            self._log = open(self.log_path, "ab")
            out = self._log
        self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise FunnelError(f"tritonserver exited with code {self.process.returncode} while starting"
                                      + (f" (log: {self.log_path})" if self.log_path else ""))
                try:
                    if client.is_server_ready():
                        return self
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise FunnelError(f"tritonserver not ready after {timeout:.0f} s")

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

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
