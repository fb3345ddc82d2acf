"""The embedding network: a classifier's convolutional trunk, pooled, projected to ``dim`` and L2-normalised.

    net = embedder_from_classifier(classifier, dim=64)     # trunk weights copied from a classify run
    z = net(x)                                             # normalised [B, 1, 28, 28] -> unit vectors [B, dim]

The trunk's feature map is pooled by global average and global max together (average keeps how much of a
pattern there is, max keeps whether it is there at all: a collar, a zip, a pocket) and projected by a small MLP.
Unit-length outputs make the inner product a cosine similarity, which is what the FAISS index searches, and
keep distances in [0, 2], which the distance-weighted miner assumes.

A checkpoint records the trunk's source architecture (classifier registry name and options), ``dim`` and
``head_hidden``, so ``load_embedder`` rebuilds the net without the classify run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fashionkit.errors import UserError
from fashionkit.runs import atomic_save, read_torch_checkpoint

FORMAT = "fashionkit.embedder/1"


class EmbeddingNet(nn.Module):
    def __init__(self, trunk: nn.Module, trunk_channels: int, dim: int = 64, head_hidden: int = 256):
        super().__init__()
        self.trunk = trunk
        self.dim, self.head_hidden = dim, head_hidden
        pooled = 2 * trunk_channels  # avg + max
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(pooled, head_hidden), nn.BatchNorm1d(head_hidden), nn.ReLU(),
                                      nn.Linear(head_hidden, dim))
        else:
            self.head = nn.Linear(pooled, dim)
        self.source: dict = {}  # {"name", "options"} of the classifier the trunk comes from; set by the builders

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.cat([fmap.mean((2, 3)), fmap.amax((2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.pool(self.trunk(x)))
        # normalise in fp32: bf16 keeps ~3 significant digits, so "unit" vectors would be ~0.4% off and
        # distances near 2 could exceed 2, where the distance-weighted miner's log(1 - d^2/4) is NaN
        return F.normalize(z.float(), dim=1)


def _check_trunk(classifier: nn.Module) -> None:
    if isinstance(classifier.trunk, nn.Identity):
        raise UserError(f"model {classifier.name} has no convolutional trunk (it works on the flat image); "
                        f"use a classify run of a convolutional model (e.g. vgg-small, resnet)")


def embedder_from_classifier(classifier: nn.Module, dim: int, head_hidden: int) -> EmbeddingNet:
    """A new embedding net whose trunk is (a copy of) ``classifier.trunk``, weights included."""
    import copy

    _check_trunk(classifier)
    net = EmbeddingNet(copy.deepcopy(classifier.trunk), classifier.trunk_channels, dim, head_hidden)
    net.source = {"name": classifier.name, "options": classifier.options}
    return net


def build_embedder(source: dict, dim: int, head_hidden: int) -> EmbeddingNet:
    """A freshly initialised embedding net on the trunk of registry model ``source = {name, options}``."""
    from fashionkit.classify.models import create_model

    return embedder_from_classifier(create_model(source["name"], **source["options"]), dim, head_hidden)


def model_hash(net: nn.Module | dict) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in name order): the identity of the weights
    an index was built with. It does not depend on how the checkpoint file was pickled."""
    state = net.state_dict() if isinstance(net, nn.Module) else net
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_embedder(path: str | Path, net: EmbeddingNet, **extra: Any) -> Path:
    state = {"format": FORMAT, "source": net.source, "dim": net.dim, "head_hidden": net.head_hidden,
             "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, **extra}
    state["model_hash"] = model_hash(state["state_dict"])
    return atomic_save(lambda tmp: torch.save(state, tmp), path)


def read_embedder_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no embedding checkpoint {path}: is {path.parent.parent} a finished `metric train` run?")
    return read_torch_checkpoint(path, FORMAT, "metric train")


def load_state(net: EmbeddingNet, ckpt: dict, path: str | Path = "checkpoint") -> None:
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise UserError(f"{path} does not fit this embedding net ({(lines[1] if len(lines) > 1 else lines[0]).strip()})"
                        f"; pass a checkpoint of the same architecture") from None


def load_embedder(run: str | Path, device: str | torch.device = "cpu", which: str = "best"
                  ) -> tuple[EmbeddingNet, dict]:
    """The embedding net of a metric run in eval mode, and its checkpoint (``model_hash`` recomputed from the
    weights actually loaded, so an edited or retrained checkpoint never passes for the old one)."""
    path = Path(run) / "weights" / f"{which}.pt"
    ckpt = read_embedder_checkpoint(path)
    net = build_embedder(ckpt["source"], ckpt["dim"], ckpt["head_hidden"])
    load_state(net, ckpt, path)
    ckpt["model_hash"] = model_hash(ckpt["state_dict"])
    return net.to(device).eval(), ckpt
