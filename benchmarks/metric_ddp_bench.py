"""``metric train`` in 2 gloo processes (``torchrun``, 1 thread each) against 1 process (2 threads) with the same
options and global batch: images/s per epoch, validation MAP@R, the test figures and the wall clock of each.

    .venv/bin/python benchmarks/metric_ddp_bench.py [--epochs 2] [--from fashionkit/models/classifier] \\
        [--runs-dir runs/metric-ddp-bench] [--out benchmarks/results/metric_ddp_bench.json]

On one 2-core machine the two processes share the same cores, so this says whether the data-parallel path costs
or loses anything, not how it scales: that takes several GPUs or machines. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--from", dest="source", default="fashionkit/models/classifier")
    p.add_argument("--runs-dir", default="runs/metric-ddp-bench")
    p.add_argument("--out", default="benchmarks/results/metric_ddp_bench.json")
    args = p.parse_args()
    from faiss_bench import cpu_name  # the CPU as every benchmark names it

    runs = Path(args.runs_dir).resolve()
    env = {**os.environ, "FASHIONKIT_RUNS": str(runs)}
    common = ["metric", "train", "--from", args.source, "--hard-classes", "0,2,4,6", "--epochs", str(args.epochs)]
    variants = {
        "1 process, 2 threads": [sys.executable, "-m", "fashionkit", *common, "--threads", "2", "--name", "one"],
        "2 processes (gloo), 1 thread each": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc_per_node", "2", "-m", "fashionkit", *common, "--threads", "1",
                                              "--name", "two"],
    }
    out = {"command": " ".join(sys.argv), "machine": {"cpu": cpu_name(), "load_before": os.getloadavg()}, "runs": {}}
    for name, cmd in variants.items():
        run = runs / "metric" / cmd[cmd.index("--name") + 1]
        if run.exists():
            sys.exit(f"{run} exists: pass another --runs-dir or remove it")
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
        with (run / "metrics.csv").open() as f:
            epochs = list(csv.DictReader(f))
        summary = json.loads((run / "summary.json").read_text())
        out["runs"][name] = {
            "wall_s": round(wall, 1), "processes": summary["processes"],
            "epochs": [{k: e[k] for k in ("epoch", "frozen", "seconds", "img_per_s", "train_loss", "val_map_at_r",
                                          "val_precision_at_1")} for e in epochs],
            "test": summary["test"]["after"]}
        last = epochs[-1]
        print(f"{name}: {wall:.0f} s; last epoch {float(last['img_per_s']):.0f} images/s, validation MAP@R "
              f"{float(last['val_map_at_r']):.4f}; test MAP@R {summary['test']['after']['map_at_r']:.4f}", flush=True)
    out["machine"]["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{out['machine']['cpu']}; wrote {args.out}")


if __name__ == "__main__":
    main()
