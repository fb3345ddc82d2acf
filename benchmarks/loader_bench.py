"""Images/second delivered by the input pipeline, per augmentation preset, vs a torchvision DataLoader.

    .venv/bin/python benchmarks/loader_bench.py [--batch-size 128] [--out benchmarks/results/loader.json]

fashionkit's BatchLoader keeps the uint8 dataset in memory and augments whole batches with per-image random
parameters. The reference is what a notebook does: a Dataset applying torchvision.transforms.v2 per image,
batched by torch.utils.data.DataLoader with 2 worker processes. Both produce normalised float batches.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from fashionkit.data import load_split
from fashionkit.data.augment import PRESETS, build_augment
from fashionkit.data.loader import MEAN, STD, BatchLoader
from fashionkit.data.splits import make_splits


def rate(loader, limit: int) -> float:
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        n += len(x)
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


class PerImage(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i].unsqueeze(0)), self.labels[i]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/loader.json")
    args = p.parse_args()
    images, labels = load_split("train")
    train_idx, _ = make_splits(labels.numpy())
    results = {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "presets": {}}
    for name in PRESETS:
        loader = BatchLoader(images, labels, args.batch_size, shuffle=True, augment=build_augment(name),
                             indices=train_idx, channels_last=True)
        results["presets"][name] = rate(loader, len(train_idx))
        print(f"BatchLoader {name:<24} {results['presets'][name]:>10,.0f} img/s")
    # The heaviest preset the way torchvision would be used: per-image v2 transforms in 2 workers.
    heavy = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.RandomHorizontalFlip(),
                        v2.RandomPerspective(0.115, p=0.4), v2.RandomErasing(), v2.Normalize([MEAN], [STD])])
    reference = torch.utils.data.DataLoader(PerImage(images[train_idx], labels[train_idx], heavy),
                                            batch_size=args.batch_size, shuffle=True, num_workers=2,
                                            persistent_workers=False)
    results["torchvision_dataloader_flip_perspective_erase"] = rate(reference, 20_000)
    print(f"torchvision DataLoader (2 workers) flip-perspective-erase "
          f"{results['torchvision_dataloader_flip_perspective_erase']:>10,.0f} img/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
