"""Benchmark: synthetic generation and preprocessing throughput and peak memory on this host.

    python bench/data.py --sizes 1e6 1e7 hm [--device cpu] [--workers 0 2] [--keep DIR]
    python bench/data.py --sizes 1e6 3e6 1e7 --users 83333 --items 10000   # rows grow, users do not

A size is a number of interactions (users = 1/12 of it, items 1% of it, at least 10k) or ``hm``:
`funnel data synth --preset hm`, the H&M Kaggle data's shape (1.37M users, 105k items, ~31.8M rows).

Each step runs as its own `funnel` process; wall time and the process's peak RSS (wait4)
are recorded. Prints a table and one JSON document (also written to bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USERS_PER_INTERACTION = 1 / 12.0  # the generator's defaults give ~12 interactions per user


def run(cmd: list[str]) -> dict:
    """Run a command; return wall seconds and peak RSS (MiB) of that process tree's largest member."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)  # files: no pipe can fill up
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out_f.seek(0)
        out = out_f.read()
    if os.waitstatus_to_exitcode(status) != 0:
        err = Path(err_f.name).read_text()
        sys.exit(f"failed: {' '.join(cmd)}\nfull stderr: {err_f.name}\n{err[-3000:]}")
    os.unlink(err_f.name)
    return {"seconds": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024), "stdout": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1e6"], help="target interactions, or hm (the H&M preset)")
    parser.add_argument("--items", type=int, default=None, help="catalogue size (default: 1% of interactions, >= 10k)")
    parser.add_argument("--users", type=int, default=None,
                        help="a fixed number of users (rows then grow with each user's activity, not with users)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="preprocess the same data with each: 0 = one process, N = a local Dask cluster of N")
    parser.add_argument("--keep", help="keep generated data under this folder")
    parser.add_argument("--out", default="bench/results/data.json")
    parser.add_argument("--plot", default="docs/data.png", help="PNG of rows vs seconds and peak GiB ('' for none)")
    args = parser.parse_args()

    funnel = [sys.executable, "-m", "funnel"]
    base = Path(args.keep or tempfile.mkdtemp(prefix="funnel-bench-"))
    results = []
    for name in args.sizes:
        if name == "hm":
            from funnel.data.synth_config import PRESETS

            size, users, items = 31_800_000, PRESETS["hm"]["users"], PRESETS["hm"]["items"]
            data, pre = base / "data-hm", base / "pre-hm"
            gen_cmd = funnel + ["data", "synth", "--out", str(data), "--preset", "hm"]
        else:
            size = int(float(name))
            users = args.users or max(100, int(size * USERS_PER_INTERACTION))
            items = args.items or max(10_000, size // 100)
            data, pre = base / f"data-{size}", base / f"pre-{size}"
            gen_cmd = funnel + ["data", "synth", "--out", str(data), "--users", str(users), "--items", str(items)]
            if args.users:  # the generator's expected rows: users * days * activity * basket size
                from funnel.data.synth_config import SynthConfig

                base_cfg = SynthConfig()
                gen_cmd += ["--activity", f"{size / (users * base_cfg.days * base_cfg.basket_size):.6g}"]
        gen = run(gen_cmd)
        rows = json.loads((data / "dataset.json").read_text())["rows"]["interactions"]
        by_workers = []
        for workers in args.workers:  # the same data, one after the other
            out = pre if workers == args.workers[0] else pre.with_name(f"{pre.name}-w{workers}")
            pre_cmd = funnel + ["preprocess", str(data), "--out", str(out), "--device", args.device]
            if workers:
                pre_cmd += ["--workers", str(workers)]
            prep = run(pre_cmd)
            manifest = json.loads((out / "preprocess.json").read_text())
            by_workers.append({"workers": workers, "seconds": prep["seconds"], "rows_per_s": round(rows / prep["seconds"]),
                               "peak_rss_mib": prep["peak_rss_mib"], "driver_peak_rss_mb": manifest["peak_rss_mb"],
                               "worker_peak_rss_mb": manifest["dask"].get("worker_peak_rss_mb"),
                               "steps_s": manifest["timings_s"],
                               "steps_peak_rss_mb": manifest.get("peak_rss_mb_by_step"),
                               "command": " ".join(pre_cmd[2:])})
            if not args.keep:
                shutil.rmtree(out)
        results.append({
            "target": name if name == "hm" else size, "interactions": rows, "users": users, "items": items,
            "generate": {"seconds": gen["seconds"], "rows_per_s": round(rows / gen["seconds"]),
                         "peak_rss_mib": gen["peak_rss_mib"], "command": " ".join(gen_cmd[2:])},
            "preprocess": by_workers[0],
            **({"preprocess_by_workers": by_workers} if len(by_workers) > 1 else {}),
        })
        if not args.keep:
            shutil.rmtree(data)
    doc = {"host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
           "device": args.device, "workers": args.workers, "fixed_users": args.users, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")

    header = f"{'interactions':>12} {'stage':<10} {'seconds':>8} {'rows/s':>10} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        for stage in ("generate", "preprocess"):
            s = r[stage]
            print(f"{r['interactions']:>12,} {stage:<10} {s['seconds']:>8.1f} {s['rows_per_s']:>10,} {s['peak_rss_mib']:>12,}")
        for s in r.get("preprocess_by_workers", [])[1:]:
            stage = f"w={s['workers']}"
            print(f"{r['interactions']:>12,} {stage:<10} {s['seconds']:>8.1f} {s['rows_per_s']:>10,} {s['peak_rss_mib']:>12,}"
                  f"  (driver {s['driver_peak_rss_mb']:,} MB, workers {s['worker_peak_rss_mb']})")
    print(json.dumps(doc))
    if args.plot:
        plot(results, Path(args.plot))


def plot(results: list[dict], path: Path) -> None:
    """Rows vs wall seconds and peak GiB per stage (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["interactions"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for stage, marker in (("generate", "o"), ("preprocess", "s")):
        left.plot(rows, [r[stage]["seconds"] for r in results], marker=marker, label=stage)
        right.plot(rows, [r[stage]["peak_rss_mib"] / 1024 for r in results], marker=marker, label=stage)
    left.set(xscale="log", yscale="log", xlabel="interactions", ylabel="wall seconds", title="time")
    right.set(xscale="log", xlabel="interactions", ylabel="peak RSS GiB", title="memory")
    left.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
