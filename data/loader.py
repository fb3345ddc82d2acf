"""An in-memory batch loader: the dataset stays a uint8 tensor, batches are gathered, augmented and
normalised whole. On a 2-core CPU a worker-process DataLoader spends more time decoding and collating
single images than a small CNN spends learning from them; here one batch costs a gather and a few
vectorised ops. When training on a GPU the uint8 dataset (47 MB) is moved there once.
"""

from __future__ import annotations

import numpy as np
import torch

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics, on the [0, 1] scale


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W]`` (or ``[B, 1, H, W]``) -> float ``[B, 1, H, W]`` in [0, 1]."""
    x = images_u8.float().div_(255)
    return x.unsqueeze(1) if x.dim() == 3 else x


class BatchLoader:
    """Iterate ``(images, labels)`` batches of a uint8 image tensor.

    Shuffling is seeded per epoch (``set_epoch``), so a resumed run sees the same order as an
    uninterrupted one. ``rank``/``world_size`` shard each epoch for distributed training.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
                 shuffle: bool = False, augment=None, device: str | torch.device = "cpu", seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, rank: int = 0, world_size: int = 1,
                 indices: np.ndarray | torch.Tensor | None = None):
        device = torch.device(device)
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            images, labels = images[idx], labels[idx]
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.device, self.seed, self.drop_last = device, seed, drop_last
        self.channels_last, self.rank, self.world_size = channels_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # equal shards: pad by wrapping around, as DistributedSampler does
            per = -(-n // self.world_size)
            order = torch.cat([order, order[: per * self.world_size - n]])[self.rank::self.world_size]
        return order.to(self.device)

    def __len__(self) -> int:
        n = -(-len(self.labels) // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        # augmentation draws differ per rank (the shuffle above must not: the ranks shard one order)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7 + 1_000_003 * self.rank)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = to_float(self.images[idx])
            if self.augment is not None:
                x = self.augment(x, g, index=idx, epoch=self.epoch, seed=self.seed)
            x = normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
