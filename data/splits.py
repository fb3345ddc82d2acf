"""Stratified, seeded splits of the 60k training set. The 10k test set is only for final evaluation."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from fashionkit.errors import UserError


def train_val_split(labels, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` into the training set, with every class in the same proportion in both."""
    labels = np.asarray(labels)
    if not 10 <= val_size < len(labels):
        raise UserError(f"validation size {val_size} must be between 10 and {len(labels) - 1}")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels,
                                          random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def stratified_subset(indices: np.ndarray, labels, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of ``indices`` with the class proportions of the whole (for ``--subset`` smoke runs)."""
    indices, labels = np.asarray(indices), np.asarray(labels)
    if n >= len(indices):
        return indices
    n_classes = len(np.unique(labels[indices]))
    if n < n_classes:
        raise UserError(f"--subset {n} is too small: need at least one item per class ({n_classes})")
    keep, _ = train_test_split(indices, train_size=n, stratify=labels[indices], random_state=seed)
    return np.sort(keep)


def make_splits(labels, val_size: int = 5000, seed: int = 0, subset: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Train/val indices; ``subset`` shrinks train to ``subset`` items and val to a fifth of that."""
    train_idx, val_idx = train_val_split(labels, val_size, seed)
    if subset:
        train_idx = stratified_subset(train_idx, labels, subset, seed)
        val_idx = stratified_subset(val_idx, labels, max(subset // 5, 10), seed)
    return train_idx, val_idx
