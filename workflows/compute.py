"""Where NVTabular runs: device choice (cuDF or pandas) and the Dask cluster, if any."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
from collections.abc import Iterator

from distributed import Client, LocalCluster
from merlin.core.utils import set_dask_client

from funnel.core.errors import FunnelError
from workflows.config import Device


DEVICES = tuple(Device.values())


def gpu_count() -> int:
    """Number of visible NVIDIA GPUs (0 when no driver or nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def resolve_device(requested: Device | str) -> str:
    """'auto' -> 'gpu' when a GPU and cuDF are present, else 'cpu'; 'gpu' without them is an error."""
    if requested not in DEVICES:
        raise FunnelError(f"--device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cpu":
        return "cpu"
    has_cudf = importlib.util.find_spec("cudf") is not None
    gpus = gpu_count()
    if requested == "gpu" and not (has_cudf and gpus):
        why = "no NVIDIA GPU is visible" if not gpus else "cuDF is not installed (pip install -e '.[gpu]')"
        raise FunnelError(f"--device gpu: {why}; use --device cpu or auto")
    return "gpu" if has_cudf and gpus else "cpu"


@contextlib.contextmanager
def dask_client(device: str, workers: int | None = None, scheduler: str | None = None) -> Iterator[object | None]:
    """A Dask client for NVTabular: an existing scheduler, a local cluster of ``workers``, or none.

    Local clusters are LocalCUDACluster on GPUs (one worker per GPU by default) and
    LocalCluster with one thread per worker on CPUs. The client is registered with
    merlin so every Workflow.fit/transform inside the block uses it.
    """
    if scheduler and workers:
        raise FunnelError("use either --workers or --scheduler, not both")
    if not scheduler and not workers:
        yield None
        return

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="15s")
            except (OSError, TimeoutError) as exc:
                raise FunnelError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        else:
            if workers < 1:
                raise FunnelError("--workers must be >= 1")
            if device == "gpu":
                from dask_cuda import LocalCUDACluster

                cluster = LocalCUDACluster(n_workers=min(workers, gpu_count()) or None)
            else:
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, host="127.0.0.1",
                )
            client = Client(cluster)
        set_dask_client(client)
        yield client
    finally:
        set_dask_client(None)
        if "client" in locals():
            client.close()
        if cluster is not None:
            cluster.close()
