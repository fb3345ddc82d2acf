"""Find unusual training images: train a small convolutional autoencoder, rank images by reconstruction error.

The autoencoder squeezes each image through a 32-number bottleneck, so it learns what a typical item of
each class looks like; images it reconstructs badly (odd shapes, mislabelled or cropped items, unusual
contrast) are the outlier candidates. It is trained and scored on the same training-part images, because
the question is which of *these* images are unusual, not how well the model generalises.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fashionkit.config import check_range, save_yaml
from fashionkit.data.fashion_mnist import CLASSES, load_split
from fashionkit.data.loader import STD, BatchLoader, to_float
from fashionkit.data.splits import make_splits
from fashionkit.errors import UserError
from fashionkit.plots import image_grid
from fashionkit.runs import MetricsCSV, atomic_save, atomic_write_json, new_run_dir, write_run_info

CSV_FIELDS = ("class_id", "class_name", "dataset_index", "error", "rank")


class ConvAutoencoder(nn.Module):
    """28x28 -> 16x14x14 -> 32x7x7 -> ``latent`` numbers -> back. Output is in the normalised input space."""

    def __init__(self, latent: int = 32):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 32 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def check_options(cfg: dict) -> None:
    check_range(cfg, "lr", 0, None, "a positive number", low_open=True)


def pixel_errors(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared reconstruction error, converted from normalised units to the [0, 1] pixel scale."""
    return (model(x) - x).pow(2).mean(dim=(1, 2, 3)) * STD**2


@torch.no_grad()
def score(model: nn.Module, loader: BatchLoader) -> torch.Tensor:
    model.eval()
    return torch.cat([pixel_errors(model, x).cpu() for x, _ in loader])


def train(model: nn.Module, loader: BatchLoader, epochs: int, lr: float, metrics: MetricsCSV) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_value = float("nan")
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True)
        for x, _ in bar:
            loss = nn.functional.mse_loss(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        loss_value = total / seen
        metrics.append({"epoch": epoch, "loss": loss_value, "seconds": round(time.perf_counter() - start, 2)})
    return loss_value


def top_per_class(errors: torch.Tensor, labels: torch.Tensor, dataset_idx: np.ndarray, top: int) -> list[dict]:
    """Rows for ``outliers.csv``: the ``top`` highest errors of each class, rank 1 = highest."""
    rows = []
    for c, name in enumerate(CLASSES):
        members = (labels == c).nonzero().squeeze(1)
        order = members[errors[members].argsort(descending=True)][:top]
        for rank, i in enumerate(order.tolist(), 1):
            rows.append({"class_id": c, "class_name": name, "dataset_index": int(dataset_idx[i]),
                         "error": float(errors[i]), "rank": rank})
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows({**r, "error": f"{r['error']:.6g}"} for r in rows)
    return atomic_save(write, path)


def run_outliers(cfg: dict) -> Path:
    check_options(cfg)
    device = pick_device(cfg["device"])
    images, labels = load_split("train", cfg["data_dir"])
    # The training part of the toolkit-wide split (default val_size and split seed), optionally a stratified
    # subset; --seed only drives initialisation and shuffling, so runs with different seeds rank the same images.
    train_idx, _ = make_splits(labels.numpy(), subset=cfg["subset"])
    sub_labels = labels[train_idx]
    smallest = int(torch.bincount(sub_labels, minlength=len(CLASSES)).min())
    if cfg["top"] > smallest:
        raise UserError(f"--top {cfg['top']} is more than the {smallest} images of the smallest class in the "
                        f"{len(train_idx)} scored images; lower --top or raise --subset")

    run = new_run_dir("data", cfg["name"], cfg["runs_dir"], default_name="outliers")
    write_run_info(run, "data", "outliers")
    save_yaml(cfg, run / "config.yaml")
    print(f"run directory: {run}")
    print(f"training an autoencoder on {len(train_idx)} images for {cfg['epochs']} epoch(s) on {device}")

    torch.manual_seed(cfg["seed"])
    model = ConvAutoencoder().to(device)
    train_loader = BatchLoader(images, labels, cfg["batch_size"], shuffle=True, device=device, seed=cfg["seed"],
                               indices=train_idx)
    started = time.perf_counter()
    loss = train(model, train_loader, cfg["epochs"], cfg["lr"], MetricsCSV(run / "metrics.csv"))
    train_seconds = time.perf_counter() - started
    weights = run / "autoencoder.pt"
    atomic_save(lambda p: torch.save({"model": model.state_dict(), "latent": model.latent}, p), weights)

    errors = score(model, BatchLoader(images, labels, 1024, device=device, indices=train_idx))
    rows = top_per_class(errors, sub_labels, train_idx, cfg["top"])
    write_csv(rows, run / "outliers.csv")

    top_idx = torch.tensor([r["dataset_index"] for r in rows]).view(len(CLASSES), cfg["top"])
    grid = to_float(images[top_idx.flatten()]).view(len(CLASSES), cfg["top"], 28, 28)
    image_grid(grid, run / "outliers.png", row_labels=list(CLASSES), col_titles=[f"#{i + 1}" for i in
               range(cfg["top"])], title=f"Highest reconstruction error per class (of {len(train_idx):,} images)")

    per_class = {}
    for c, name in enumerate(CLASSES):
        e = errors[sub_labels == c]
        per_class[name] = {"items": len(e), "mean_error": round(e.mean().item(), 6),
                           "median_error": round(e.median().item(), 6), "max_error": round(e.max().item(), 6)}
    atomic_write_json(run / "summary.json", {
        "scored_images": len(train_idx), "epochs": cfg["epochs"], "final_loss": round(loss, 6),
        "train_seconds": round(train_seconds, 1), "device": str(device),
        "error": "mean squared reconstruction error per pixel, on the [0, 1] pixel scale",
        "mean_error": round(errors.mean().item(), 6), "per_class": per_class,
        "files": {"weights": weights.name, "outliers": "outliers.csv", "grid": "outliers.png",
                  "metrics": "metrics.csv"},
    })
    print(f"wrote {run / 'outliers.csv'} ({cfg['top']} per class), {run / 'outliers.png'} and {weights.name}")
    return run
