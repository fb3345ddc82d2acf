"""Exploratory look at Fashion-MNIST: class balance, mean image per class, sample grid and pixel statistics.

Pixel statistics come from a 256-bin histogram of the uint8 values, so they are exact and need no float
copy of the 47M training pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashionkit.data.fashion_mnist import CLASSES, load_split
from fashionkit.data.loader import to_float
from fashionkit.data.splits import make_splits
from fashionkit.plots import image_grid, pyplot, save
from fashionkit.runs import atomic_write_json, ensure_dir


def pixel_stats(images: torch.Tensor) -> dict[str, float]:
    """Mean and (population) standard deviation of uint8 pixels on the [0, 1] scale."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * values).sum() / n
    var = (counts * (values - mean) ** 2).sum() / n
    return {"pixel_mean": round(mean.item(), 6), "pixel_std": round(var.sqrt().item(), 6)}


def class_counts(labels: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=len(CLASSES))
    return {name: int(c) for name, c in zip(CLASSES, counts)}


def split_summary(images: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"items": len(labels), **pixel_stats(images), "class_counts": class_counts(labels)}


def compute_stats(train: tuple, test: tuple) -> dict:
    (train_x, train_y), (test_x, test_y) = train, test
    # The same train/val parts every training command uses (make_splits with its defaults).
    train_idx, val_idx = make_splits(train_y.numpy())
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return {
        "scale": "pixel values divided by 255; std is the population std over all pixels of the split",
        "splits": {
            "train": split_summary(train_x, train_y),
            "test": split_summary(test_x, test_y),
            "train_part": split_summary(train_x[train_idx], train_y[train_idx]),
            "val_part": split_summary(train_x[val_idx], train_y[val_idx]),
        },
        "parts": "train_part/val_part: make_splits(train labels) with its defaults (val_size=5000, seed=0)",
    }


def plot_class_distribution(stats: dict, path: Path) -> Path:
    plt = pyplot()
    splits = ("train", "test")
    # Side-by-side panels with their own x scale: the test split is a sixth of train, so shared bars would
    # hide its (equally balanced) shape. Horizontal bars keep the class names readable.
    fig, axes = plt.subplots(1, len(splits), figsize=(10, 4), sharey=True)
    y = np.arange(len(CLASSES))
    for ax, split in zip(axes, splits):
        counts = list(stats["splits"][split]["class_counts"].values())
        bars = ax.barh(y, counts, color="tab:blue" if split == "train" else "tab:orange")
        ax.bar_label(bars, padding=3, fontsize=8)
        ax.set_title(f"{split} ({sum(counts):,} items)")
        ax.set_xlabel("items")
        ax.set_xlim(0, max(counts) * 1.2)
    axes[0].set_yticks(y, CLASSES)
    axes[0].invert_yaxis()  # class 0 at the top, as in the other figures
    fig.suptitle("Items per class")
    fig.tight_layout()
    return save(fig, path)


def mean_images(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[classes, 28, 28]`` mean image of each class on the [0, 1] scale."""
    x = to_float(images).squeeze(1)
    return torch.stack([x[labels == c].mean(0) for c in range(len(CLASSES))])


def sample_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """``[classes, per_class, 28, 28]`` random training images, one row per class."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(len(CLASSES)):
        idx = (labels == c).nonzero().squeeze(1)
        rows.append(images[idx[torch.randperm(len(idx), generator=g)[:per_class]]])
    return torch.stack(rows)


def run_eda(out: str | Path, data_dir: str | None = None, samples: int = 10, seed: int = 0) -> dict[str, Path]:
    out = ensure_dir(out)
    train, test = load_split("train", data_dir), load_split("test", data_dir)
    stats = compute_stats(train, test)
    means = mean_images(*train)
    written = {
        "class_distribution": plot_class_distribution(stats, out / "class_distribution.png"),
        "mean_images": image_grid(means.unsqueeze(0), out / "mean_images.png", col_titles=list(CLASSES),
                                  title="Mean training image per class", cell=1.3),
        "samples": image_grid(sample_grid(*train, samples, seed), out / "samples.png", row_labels=list(CLASSES),
                              title=f"{samples} random training images per class"),
        "stats": atomic_write_json(out / "stats.json", stats),
    }
    return written
