"""Training speed benchmark: samples/s of both models and time per epoch at ~1M interactions.

    python bench/train.py [--interactions 1e6] [--batch-sizes 1024 4096] [--pre DIR]
                          [--devices auto|one|/gpu:0,/gpu:1] [--precision float32|mixed_float16|mixed_bfloat16]

Runs unchanged on a CUDA host (the device, replicas and precision are read from the run
manifests); with several GPUs, ``--devices auto`` trains mirrored and batch sizes are per GPU. Prints a
table and one JSON document (also written to bench/results/train.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FUNNEL = [sys.executable, "-m", "funnel"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=float, default=1e6)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--pre", help="reuse a preprocessing output instead of generating one")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="funnel-train-bench-"))
    pre = Path(args.pre) if args.pre else work / "pre"
    if not args.pre:
        users = max(100, int(args.interactions / 12))
        subprocess.run([*FUNNEL, "data", "synth", "--out", work / "data", "--users", str(users),
                        "--items", str(max(10_000, int(args.interactions) // 100))], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*FUNNEL, "preprocess", work / "data", "--out", pre], check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((pre / "preprocess.json").read_text())["rows"]
    results = []
    for batch in args.batch_sizes:
        run = work / f"run-{batch}"
        common = ["--epochs", "2", "--batch-size", str(batch), "--devices", args.devices, "--precision", args.precision]
        subprocess.run([*FUNNEL, "train", "retrieval", pre, "--out", run, "--patience", "5", *common],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([*FUNNEL, "train", "ranking", pre, "--run", run, *common],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for stage in ("retrieval", "ranking"):
            m = json.loads((run / f"{stage}.json").read_text())
            last = m["history"][-1]  # the second epoch: graph building and warm-up excluded
            rows_per_epoch = m["data"]["fit_rows"] if stage == "retrieval" else round(last["samples_per_s"] * last["seconds"])
            results.append({"model": stage, "batch_size": batch, "device": m["device"],
                            "replicas": m.get("replicas", 1), "precision": m.get("precision", "float32"),
                            "samples_per_s": last["samples_per_s"], "epoch_seconds": last["seconds"],
                            "rows_per_epoch": rows_per_epoch, "first_epoch_seconds": m["history"][0]["seconds"]})
    doc = {"interactions": rows["interactions"], "train_rows": rows["train"], "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'model':<10} {'batch':>6} {'device':<10} {'precision':<15} {'samples/s':>10} {'epoch s':>8} {'rows/epoch':>11}")
    for r in results:
        device = r["device"] + (f" x{r['replicas']}" if r["replicas"] > 1 else "")
        print(f"{r['model']:<10} {r['batch_size']:>6} {device:<10} {r['precision']:<15} {r['samples_per_s']:>10,} "
              f"{r['epoch_seconds']:>8.1f} {r['rows_per_epoch']:>11,}")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
