"""Training throughput of fashionkit's engine vs a plain hand-written PyTorch loop, same model, one run.

    .venv/bin/python benchmarks/engine_vs_plain.py [--model vgg-small] [--items 20000] [--epochs 2]

The plain loop is what a notebook does: a Dataset applying torchvision.transforms.v2 per image (flip + affine,
the default preset), a torchvision-style DataLoader with 2 workers, fp32, default memory format, SGD. The engine
is `classify train`'s Trainer (batched augmentation, bf16 autocast where available, channels_last). Both train
the same architecture on the same items for the same number of epochs; the first epoch of each is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from loader_bench import PerImage  # the same per-image Dataset the loader benchmark compares against
from torch import nn
from torchvision.transforms import v2

from fashionkit.classify.defaults import TRAIN_OPTIONS
from fashionkit.classify.models import create_model
from fashionkit.classify.train import Trainer
from fashionkit.config import resolve
from fashionkit.data import load_split
from fashionkit.data.loader import MEAN, STD
from fashionkit.data.splits import make_splits


def plain_loop(model_name: str, images, labels, epochs: int, batch_size: int) -> float:
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.RandomHorizontalFlip(),
                            v2.RandomAffine(degrees=10, translate=(0.1, 0.1)), v2.Normalize([MEAN], [STD])])
    loader = torch.utils.data.DataLoader(PerImage(images, labels, transform), batch_size=batch_size, shuffle=True,
                                         num_workers=2, drop_last=True)
    model = create_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    rates = []
    for _ in range(epochs):
        model.train()
        n, start = 0, time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


def engine(model_name: str, items: int, epochs: int, batch_size: int, run: Path) -> float:
    cfg = resolve(TRAIN_OPTIONS, {"model": model_name, "subset": items, "epochs": epochs, "batch_size": batch_size,
                                  "lr": 0.05, "test": False})
    run.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run)
    rates = []
    for _ in range(epochs):
        rates.append(trainer.train_epoch()["img_per_s"])
        trainer.epoch += 1
    return rates[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg-small")
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/engine_vs_plain.json")
    args = p.parse_args()
    images, labels = load_split("train")
    train_idx, _ = make_splits(labels.numpy(), subset=args.items)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fast = engine(args.model, args.items, args.epochs, args.batch_size, Path(tmp) / "run")
    plain = plain_loop(args.model, images[train_idx], labels[train_idx], args.epochs, args.batch_size)
    result = {"model": args.model, "items": args.items, "batch_size": args.batch_size,
              "engine_img_per_s": fast, "plain_img_per_s": plain, "ratio": fast / plain}
    print(f"{args.model}: engine {fast:,.0f} img/s, plain loop {plain:,.0f} img/s, ratio {fast / plain:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
