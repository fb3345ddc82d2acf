"""Every registry model on this machine: parameters, MFLOPs, train and inference images/s in fp32 and bf16,
and test accuracy after the same wall-clock training budget.

    .venv/bin/python benchmarks/models_bench.py [--budget-seconds 60] [--models vgg,lenet] [--skip-train]

Throughput: batch 128 (train) / 500 (inference) of 28x28 images, channels_last, after warm-up.
Accuracy: `classify train` defaults except epochs/subset, which are sized from the measured bf16 training rate so
each model gets about --budget-seconds of training (at most --max-epochs: tiny models would otherwise run for
dozens of epochs whose per-epoch overhead the rate does not count); then the best weights on the 10k test split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fashionkit.classify.models import MODELS, count_mflops, count_params, create_model
from fashionkit.classify.train import train
from fashionkit.device import autocast, select_device

TRAIN_ITEMS = 55_000


def throughput(name: str, device, dtype, train_mode: bool, batch: int, steps: int = 8, **options) -> float:
    """Images/s of the registry model ``name`` (built with ``options``) on synthetic batches, after 2 warm-up steps."""
    model = create_model(name, **options).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        if train_mode:
            with autocast(device, dtype):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), autocast(device, dtype):
                model(x)

    model.train(train_mode)
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-seconds", type=float, default=60)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--device", default="auto")
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--out", default="benchmarks/results/models.json")
    args = p.parse_args()
    device = select_device(args.device)
    bf16 = torch.bfloat16
    rows = []
    print("| model | params | MFLOPs | train img/s fp32 | train img/s bf16 | infer img/s fp32 | infer img/s bf16 "
          "| epochs x items in budget | test acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = create_model(name)
        row = {"model": name, "params": count_params(model), "mflops": count_mflops(model), "device": str(device)}
        small = name == "resnet18-transfer"  # 112x112 inputs: keep batches small on a CPU
        row["train_fp32"] = throughput(name, device, None, True, 32 if small else 128, 4 if small else 8)
        row["train_bf16"] = throughput(name, device, bf16, True, 32 if small else 128, 4 if small else 8)
        row["infer_fp32"] = throughput(name, device, None, False, 100 if small else 500, 4)
        row["infer_bf16"] = throughput(name, device, bf16, False, 100 if small else 500, 4)
        if not args.skip_train:
            items = int(args.budget_seconds * row["train_bf16"])
            epochs, subset = (max(1, round(items / TRAIN_ITEMS)), 0) if items >= TRAIN_ITEMS else (1, max(items, 500))
            epochs = min(epochs, args.max_epochs)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                _, summary = train({"model": name, "epochs": epochs, "subset": subset, "runs_dir": tmp,
                                    "device": args.device})
                row.update(epochs=epochs, items=subset or TRAIN_ITEMS, test_acc=summary["test_acc"],
                           train_seconds=time.perf_counter() - start)
        rows.append(row)
        print(f"| {name} | {row['params']:,} | {row['mflops']:.1f} | {row['train_fp32']:,.0f} | "
              f"{row['train_bf16']:,.0f} | {row['infer_fp32']:,.0f} | {row['infer_bf16']:,.0f} | "
              f"{row.get('epochs', '-')} x {row.get('items', '-')} | {row.get('test_acc', float('nan')):.4f} |",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
