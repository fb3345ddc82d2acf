"""Triplet mining with PML miners, and how many triplets each batch actually gave.

Where PML's ``DistanceWeightedMiner`` (Wu et al. 2017, "Sampling matters") surprises:

* It draws a negative with weight ``q(d)^-1`` where ``log q(d) = (dim - 2) log d + (dim - 3)/2 log(1 - d^2/4)``,
  the density of distances between random points on the unit sphere. It subtracts the *largest* log-weight of
  the whole batch, not of each anchor's row, and exponentiates in the embedding dtype. Between the two cutoffs
  the log-weights span about ``0.72 * dim`` nats: ~46 at 64 dims, ~92 at 128, ~140 at 192, while fp32's ``exp``
  reaches 0 below -87 (-103 with subnormals). Past ~130 dims, every negative of an anchor whose nearest negative
  is much farther than the batch's nearest becomes weight 0, the row sums to 0, turns NaN after normalising, and
  PML silently drops that anchor.
  Measured on one 128-item batch with the same geometry embedded in more dims: 128 of 128 anchors get
  triplets at 16-128 dims, 98 at 192, 83 at 256, 46 at 512. Hence ``--dim 64`` by default.
* It is defined for unit vectors only (it asserts an L2-normalised ``LpDistance``), whose distances lie in
  [0, 2]. ``cutoff`` clamps distances from below (everything nearer than 0.5 gets the weight of 0.5) and
  ``nonzero_loss_cutoff`` (1.4) drops negatives farther than that. Random unit vectors in many dims sit at
  distance ~sqrt(2) = 1.414 from each other -- just past the default 1.4 -- so an untrained or collapsed
  projection can leave few candidates, and a small ``--nonzero-loss-cutoff`` leaves none at all.
* Distances of exactly 2 give ``log(0)``; PML zeroes those weights. If a whole batch is such, its
  ``max`` over an empty selection raises; that is treated here as a batch without triplets.

A batch without triplets is not an error (PML's loss is then 0); the trainer counts them, logs the mined-triplet
count per epoch and stops with a clear message if a whole epoch trained on nothing.
"""

from __future__ import annotations

import torch

from fashionkit.errors import UserError


def build_miner(cfg: dict):
    from pytorch_metric_learning import miners

    name = cfg["miner"]
    if name == "distance-weighted":
        if not 0 <= cfg["cutoff"] < 2 or not 0 < cfg["nonzero_loss_cutoff"] <= 2:
            raise UserError(f"distance-weighted miner cutoffs must lie in [0, 2] (distances of unit vectors), "
                            f"got --cutoff {cfg['cutoff']} --nonzero-loss-cutoff {cfg['nonzero_loss_cutoff']}")
        return miners.DistanceWeightedMiner(cutoff=cfg["cutoff"], nonzero_loss_cutoff=cfg["nonzero_loss_cutoff"])
    if name == "batch-hard":
        return miners.BatchHardMiner()
    if name in ("hard", "semihard"):
        return miners.TripletMarginMiner(margin=cfg["margin"], type_of_triplets=name)
    raise UserError(f"unknown miner {name!r}")


def build_loss(cfg: dict):
    from pytorch_metric_learning import losses

    # TripletMarginLoss's default distance (LpDistance, p=2, normalised) is the one the distance-weighted miner
    # asserts, so miner and loss measure the same thing
    return losses.TripletMarginLoss(margin=cfg["margin"])


def mine(miner, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[tuple, int]:
    """``(indices_tuple, number_of_triplets)``; an empty tuple of indices when the miner found nothing."""
    try:
        triplets = miner(embeddings, labels)
    except RuntimeError as e:
        # DistanceWeightedMiner: torch.max over an empty selection when every log-weight is inf/NaN
        if "numel() == 0" not in str(e) and "empty" not in str(e):
            raise
        empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
        return (empty, empty, empty), 0
    return triplets, int(triplets[0].numel())
