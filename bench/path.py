"""Benchmark: the whole path (data -> preprocess -> train retrieval -> train ranking -> export), each
step its own `funnel` process: wall time, peak RSS and an RSS timeline with the step running.

    python bench/path.py --preset hm --work /data/hm [--steps data preprocess retrieval ranking export]
                         [--users N --items M] [--ranking-flag=--max-users=25000 ...] [--reuse]

``--work`` keeps every step's output (``data``, ``pre``, ``run``, ``triton``); with ``--reuse`` a step
whose output is already there is skipped (its figures stay as an earlier run wrote them), so a long
path can be finished in parts. Each step's peak is the kernel's (``wait4`` ru_maxrss); the timeline
samples RSS every ``--every`` seconds and notes the step's latest progress line, so a peak can be
placed; it sums the step's process tree (a child process's memory counts), and a step's peak is the
larger of the two figures. Writes JSON (``--out``), a PNG of the timelines (``--plot``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FUNNEL = [sys.executable, "-m", "funnel"]
STEPS = ("data", "preprocess", "retrieval", "ranking", "export")
TARGET_GIB = 8.0
NOISE = re.compile(r"WARNING|Warning|warn\(|tensorflow/|^\s*\d{4}-\d\d-\d\d |^\s+")  # library chatter, not progress


def commands(work: Path, args: argparse.Namespace) -> dict[str, tuple[list[str], Path]]:
    """Each step's command line and the output that says it is done."""
    data, pre, run, triton = work / "data", work / "pre", work / "run", work / "triton"
    synth = ["--preset", args.preset] if args.preset else ["--users", str(args.users), "--items", str(args.items)]
    return {
        "data": ([*FUNNEL, "data", "synth", "--out", str(data), *synth], data / "dataset.json"),
        "preprocess": ([*FUNNEL, "preprocess", str(data), "--out", str(pre), "--split", "time", "--device", "cpu"],
                       pre / "preprocess.json"),
        "retrieval": ([*FUNNEL, "train", "retrieval", str(pre), "--out", str(run), "--epochs", str(args.epochs)],
                      run / "retrieval.json"),
        "ranking": ([*FUNNEL, "train", "ranking", str(pre), "--run", str(run), "--config", "configs/ranking.yaml",
                     *args.ranking_flag], run / "ranking.json"),
        "export": ([*FUNNEL, "export", str(run), "--out", str(triton)], triton),
    }


def last_line(path: Path) -> str:
    """The latest non-empty line a step printed (progress bars end lines with carriage returns)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4000))
            tail = f.read().decode(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.split("\n") if ln.strip() and not NOISE.search(ln)]
    return lines[-1][:100] if lines else ""


def tree_rss_kb(pid: int) -> int | None:
    """Resident kB of process ``pid`` and every descendant (None once ``pid`` is gone)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo, page_kb = 0, [pid], os.sysconf("SC_PAGE_SIZE") // 1024
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page_kb
        except (OSError, IndexError, ValueError):
            if p == pid:
                return None
            continue
        todo.extend(children.get(p, []))
    return total


def measure(cmd: list[str], log: Path, every: float) -> dict:
    """Run ``cmd`` with stdout+stderr to ``log``; wall seconds, peak RSS and the sampled timeline."""
    timeline: list[tuple[float, int, str]] = []
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(every):
                kb = tree_rss_kb(proc.pid)
                if kb is None:
                    return
                timeline.append((round(time.monotonic() - start, 1), kb, last_line(log)))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        thread.join()
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\nits output: {log}\n{last_line(log)}")
    top = max(timeline, key=lambda t: t[1], default=(0.0, 0, ""))
    # the kernel's figure is the largest single process (a step that runs part of its work in a child
    # process would look smaller than it is); the sampled one sums the process tree: the peak is the larger
    return {"seconds": round(wall, 1), "peak_rss_mib": round(max(usage.ru_maxrss, top[1]) / 1024),
            "largest_process_peak_mib": round(usage.ru_maxrss / 1024),
            "sampled_peak": {"at_s": top[0], "rss_mib": round(top[1] / 1024), "doing": top[2]},
            "timeline": [[t, round(kb / 1024), line] for t, kb, line in timeline],
            "command": " ".join(cmd[2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hm", help="funnel data synth --preset ('' to use --users/--items)")
    parser.add_argument("--users", type=int, default=60_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1, help="retriever epochs")
    parser.add_argument("--ranking-flag", action="append", default=[],
                        help="extra `train ranking` flag, e.g. --ranking-flag=--label-windows=1 (repeatable)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--work", help="keep every step's output here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="skip a step whose output is already in --work")
    parser.add_argument("--every", type=float, default=2.0, help="RSS sampling interval, seconds")
    parser.add_argument("--out", default="bench/results/path.json")
    parser.add_argument("--plot", default="docs/path.png", help="PNG of each step's RSS over time ('' for none)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="funnel-path-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    earlier = json.loads(out.read_text()).get("steps", {}) if args.reuse and out.exists() else {}
    steps: dict[str, dict] = {}
    for name, (cmd, done) in commands(work, args).items():
        if name not in args.steps:
            continue
        if args.reuse and done.exists():
            print(f"{name}: {done} is there, skipped", flush=True)
            if name in earlier:
                steps[name] = earlier[name]
            continue
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        steps[name] = measure(cmd, work / f"{name}.log", args.every)
        print(f"{name}: {steps[name]['seconds']:.0f} s, peak {steps[name]['peak_rss_mib']:,} MiB", flush=True)
    doc = {"host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
           "preset": args.preset, "users": None if args.preset else args.users,
           "items": None if args.preset else args.items, "ranking_flags": args.ranking_flag,
           "target_gib": TARGET_GIB, "steps": steps}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")

    header = f"{'step':<11} {'wall':>9} {'peak GiB':>9} {'<= 8 GiB':>9}  peak sampled while"
    print(header)
    print("-" * len(header))
    for name, s in steps.items():
        gib = s["peak_rss_mib"] / 1024
        print(f"{name:<11} {time.strftime('%H:%M:%S', time.gmtime(s['seconds'])):>9} {gib:>9.2f} "
              f"{'met' if gib <= TARGET_GIB else 'MISSED':>9}  {s['sampled_peak']['doing']}")
    print(json.dumps({k: {"seconds": s["seconds"], "peak_rss_mib": s["peak_rss_mib"]} for k, s in steps.items()}))
    if args.plot and steps:
        plot(steps, Path(args.plot))


def plot(steps: dict[str, dict], path: Path) -> None:
    """Each step's RSS over its own minutes, the 8 GiB target drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    offset = 0.0
    for name, s in steps.items():
        t = [offset + p[0] / 60 for p in s["timeline"]]
        ax.plot(t, [p[1] / 1024 for p in s["timeline"]], label=f"{name} (peak {s['peak_rss_mib'] / 1024:.2f} GiB)")
        offset += s["seconds"] / 60
    ax.axhline(TARGET_GIB, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("minutes (steps one after the other)")
    ax.set_ylabel("RSS GiB")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
