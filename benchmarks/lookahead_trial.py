"""A trial of two airbench tricks on the default `classify train` recipe, not in the product: its Lookahead and its
BatchNorm for short runs (airbench's ablations: "lookahead only helps when combined with fast BatchNorm momentum,
and vice versa"). BENCHMARKS.md, step 44 of "How the recipe got there".

    .venv/bin/python benchmarks/lookahead_trial.py [--seed 1] [--epochs 8] [--variants default,la,sbn,la-sbn]

- la: every 5 optimizer steps the weights (and BatchNorm statistics) are pulled into a running average, which they
  are then set to: ``avg.lerp_(w, 1 - d); w.copy_(avg)`` with ``d = 0.95^5 x (step / steps)^3``, so the pull grows
  over the run; after the last step the weights are the average.
- sbn: BatchNorm statistics following fast (torch momentum 0.4, airbench's 0.6 in its own convention), eps 1e-12,
  the scale frozen at 1 (only the shift learns).

Each variant is `classify train --seed S --epochs E --no-test` with the trick patched into the Trainer; the figure
is the last epoch's validation accuracy (no TTA), as step 43 chose `--norm-lr`. Runs one after another; writes
benchmarks/results/time_to_accuracy_steps/step44-lookahead-short-bn-scan-E-epochs-seedS.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

EVERY, BASE = 5, 0.95 ** 5


def patch(trainer, lookahead: bool, short_bn: bool) -> None:
    if short_bn:
        for m in trainer.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = 0.4, 1e-12
                m.weight.requires_grad_(False)
    if lookahead:
        state = trainer.model.state_dict()  # views of the weights and buffers
        avg = {k: v.detach().clone() for k, v in state.items() if v.dtype.is_floating_point}
        total = trainer.cfg["epochs"] * len(trainer.train_loader)
        count = [0]

        @torch.no_grad()
        def after_step(optimizer, args, kwargs):
            count[0] += 1
            if count[0] % EVERY and count[0] != total:
                return
            decay = 1.0 if count[0] == total else BASE * (count[0] / total) ** 3
            for k, a in avg.items():
                a.lerp_(state[k], 1 - decay)
                state[k].copy_(a)

        trainer.optimizer.register_step_post_hook(after_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variants", default="default,la,sbn,la-sbn")
    parser.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from faiss_bench import cpu_name

    from fashionkit.classify import train as engine
    from fashionkit.runs import MetricsCSV, atomic_write_text

    original = engine.Trainer.__init__
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="lookahead-trial-")
    rows = []
    try:
        for variant in args.variants.split(","):
            tricks = set(variant.split("-")) - {"default"}
            if not tricks <= {"la", "sbn"}:
                sys.exit(f"unknown variant {variant!r}: default, la, sbn or la-sbn")

            def init(self, cfg, run, resume=None, on_epoch_end=None, tricks=tricks):
                original(self, cfg, run, resume, on_epoch_end)
                patch(self, "la" in tricks, "sbn" in tricks)

            engine.Trainer.__init__ = init
            run, _ = engine.train({"seed": args.seed, "epochs": args.epochs, "test": False, "runs_dir": runs_dir,
                                   "name": f"scan{args.epochs}-{variant}-seed{args.seed}"})
            metrics = MetricsCSV(run / "metrics.csv").rows()
            rows.append({"variant": variant, "val_acc_by_epoch": [float(r["val_acc"]) for r in metrics],
                         "val_acc": float(metrics[-1]["val_acc"]), "train_acc": float(metrics[-1]["train_acc"]),
                         "seconds": round(sum(float(r["seconds"]) for r in metrics), 1)})
            print(f"{variant}: validation {rows[-1]['val_acc']:.4f}", flush=True)
    finally:  # the Trainer unpatched even when a run fails
        engine.Trainer.__init__ = original
    out = Path(args.out or Path(__file__).parent / "results" / "time_to_accuracy_steps" /
               f"step44-lookahead-short-bn-scan-{args.epochs}-epochs-seed{args.seed}.json")
    result = {"what": f"{args.epochs}-epoch runs of the default recipe, seed {args.seed}, validation accuracy (no "
                      "TTA): airbench's Lookahead (la) and BatchNorm for short runs (sbn), alone and together",
              "command": " ".join(["benchmarks/lookahead_trial.py", *sys.argv[1:]]), "cpu": cpu_name(),
              "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
