"""Which items the metric stage trains on, validates on, indexes and queries, and embedding them.

* split: the classify run's stratified train/val partition of the official 60k training set
  (``train_val_split(val_size, seed)``); with ``--subset`` training uses ``make_splits``' subset of it.
* training items: the train part, restricted to the run's classes (hard ones, or all ten).
* validation items: the val part, restricted likewise; never trained on, so the threshold sweep of
  ``metric resolve`` can use them.
* reference set (index, evaluation): train + val, i.e. all 60k, restricted likewise; each keeps its split.
* queries: the official test items of the hard classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fashionkit.classify.defaults import EVAL_BATCH
from fashionkit.errors import UserError


@dataclass(frozen=True)
class Split:
    val_size: int = 5000
    seed: int = 0

    def as_dict(self) -> dict:
        return {"val_size": self.val_size, "seed": self.seed}


def classify_split(classify_run) -> Split:
    """The train/val split a classify run used (its ``val_size`` and ``seed``)."""
    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.config import load_yaml, resolve

    cfg = resolve(TRAIN_OPTIONS, {}, load_yaml(classify_run / "config.yaml"))
    return Split(cfg["val_size"], cfg["seed"])


def partition(labels: torch.Tensor, split: Split) -> np.ndarray:
    """``"train"``/``"val"`` for every item of the official training set."""
    from fashionkit.data.splits import train_val_split

    _, val_idx = train_val_split(labels.numpy(), split.val_size, split.seed)
    names = np.full(len(labels), "train", dtype="<U5")
    names[val_idx] = "val"
    return names


def in_classes(indices: np.ndarray, labels: torch.Tensor, classes: list[int]) -> np.ndarray:
    indices = np.asarray(indices)
    return indices[np.isin(labels.numpy()[indices], classes)]


def training_indices(labels: torch.Tensor, split: Split, classes: list[int], subset: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    from fashionkit.data.splits import make_splits

    train_idx, val_idx = make_splits(labels.numpy(), split.val_size, split.seed, subset or None)
    train_idx, val_idx = in_classes(train_idx, labels, classes), in_classes(val_idx, labels, classes)
    present = set(labels.numpy()[train_idx].tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        from fashionkit.data import CLASSES

        raise UserError(f"class(es) {', '.join(CLASSES[c] for c in missing)} have no training items in this split; "
                        f"raise --subset or choose classes present in the data")
    return train_idx, val_idx


def stratified(indices: np.ndarray, labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``indices`` with their class proportions (``n`` = 0: all)."""
    from fashionkit.data.splits import stratified_subset

    if not n or n >= len(indices):
        return np.asarray(indices)
    return stratified_subset(indices, labels.numpy(), n, seed)


@torch.no_grad()
def embed(fn, images_u8: torch.Tensor, device, amp=None, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """``fn`` (a module in eval mode) over uint8 ``[N, 28, 28]`` images in batches -> float32 ``[N, D]`` on CPU.
    ``metric train``'s validation and test embed at classify's scoring batch, whose activations stay under the size
    up to which freed blocks are reused (`fashionkit.device.keep_freed_memory`)."""
    from fashionkit.data.loader import normalize, to_float
    from fashionkit.device import autocast

    out = []
    for start in range(0, len(images_u8), batch_size):
        x = normalize(to_float(images_u8[start:start + batch_size].to(device)))
        with autocast(device, amp):
            out.append(fn(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
