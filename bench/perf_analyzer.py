"""Triton's own load generator (``perf_analyzer``, C++) against a funnel server, for the serving benchmarks.

The Python load generator in ``bench/serve.py`` (one ``tritonclient`` per thread) spends its own CPU
under the GIL on the same 2 cores as the server, so at concurrency 16 it measures the client as much
as the server. ``perf_analyzer`` ships in the ``tritonclient`` wheel (``.venv/bin/perf_analyzer``); it
needs ``libb64.so.0d`` (Debian: ``apt-get install libb64-0d``) and ``libcudart.so.12`` (PyPI:
``pip install --target DIR nvidia-cuda-runtime-cu12``, then ``--cudart DIR`` or ``FUNNEL_CUDART``), even
on a CPU-only host. Where it cannot start, ``available`` says why and the benchmarks leave its
columns out.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def binary() -> Path:
    return Path(sys.executable).parent / "perf_analyzer"


def _env(cudart: str | None) -> dict[str, str]:
    env = dict(os.environ)
    root = cudart or os.environ.get("FUNNEL_CUDART", "")
    libs = [str(p.parent) for p in Path(root).rglob("libcudart.so.12")] if root else []
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def available(cudart: str | None = None) -> str | None:
    """None when ``perf_analyzer`` starts here, else why not (the loader's message)."""
    if not binary().exists():
        return f"{binary()} not found (the tritonclient wheel ships it)"
    try:
        done = subprocess.run([str(binary()), "--version"], capture_output=True, text=True, timeout=30,
                              env=_env(cudart))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"perf_analyzer: {exc}"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[-1] if "error while loading shared libraries" in text else None


def measure(url: str, headers: dict[str, str], users: list[str], concurrency: int, batch: int = 1,
            seconds: float = 10.0, k: int = 12, cudart: str | None = None) -> dict:
    """Requests of ``batch`` users (cycling through ``users``) from ``concurrency`` in-flight requests
    for ``seconds`` (stable measurement windows), in the shape of ``bench/serve.py``'s ``throughput``."""
    with tempfile.TemporaryDirectory(prefix="funnel-perf-") as work:
        rows = [users[i:i + batch] for i in range(0, len(users) - batch + 1, batch)]
        data = {"data": [{"user_id": {"content": row, "shape": [1]}, "k": {"content": [k] * batch, "shape": [1]}}
                         for row in rows]}
        (Path(work) / "input.json").write_text(json.dumps(data))
        report = Path(work) / "report.csv"
        cmd = [str(binary()), "-m", "funnel", "-i", "grpc", "-u", url, "-b", str(batch),
               "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", str(Path(work) / "input.json"),
               "--measurement-interval", str(int(seconds * 1000)), "--stability-percentage", "20",
               "--max-trials", "6", "--percentile", "99", "-f", str(report)]
        for key, value in headers.items():
            cmd += ["-H", f"{key}:{value}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30 + 10 * seconds, env=_env(cudart))
        if done.returncode != 0 or not report.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"perf_analyzer exited {done.returncode}: {' | '.join(tail)}")
        row = next(csv.DictReader(report.open()))
    per_s = float(row["Inferences/Second"])  # users (batch rows) per second
    return {"load_generator": "perf_analyzer", "users_per_request": batch, "concurrency": concurrency,
            "errors": 0, "requests_per_s": round(per_s / batch, 1), "users_per_s": round(per_s, 1),
            **{f"p{p}_ms": round(float(row[f"p{p} latency"]) / 1000, 2) for p in (50, 95, 99)}}
