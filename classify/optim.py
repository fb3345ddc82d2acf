"""Optimizers (SAM wraps any of them) and learning-rate schedulers, by name."""

from __future__ import annotations

import torch
from torch import nn

from fashionkit.classify.defaults import OPTIMIZERS, SCHEDULERS
from fashionkit.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors): decaying them only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, params, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if isinstance(params, nn.Module):
        params = param_groups(params, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum)
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


class SAM:
    """Sharpness-Aware Minimisation (Foret et al. 2021) around any base optimizer.

    Each step takes two forward/backward passes: ``first_step`` moves the weights to the worst point within
    an L2 ball of radius ``rho``, ``second_step`` restores them and applies the base update with the gradient
    taken there. Schedulers drive the base optimizer; checkpoints store the base optimizer's state.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05):
        if rho <= 0:
            raise UserError(f"SAM rho must be positive, got {rho}")
        self.base, self.rho = base, rho
        self._moved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def param_groups(self):
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def first_step(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = self.rho / (norm + 1e-12)
        self._moved = [(p, p.grad * scale) for p in params]
        for p, e in self._moved:
            p.add_(e)

    @torch.no_grad()
    def second_step(self) -> None:
        for p, e in self._moved:
            p.sub_(e)
        self._moved = []
        self.base.step()

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, lr: float,
                    step_size: int = 10, gamma: float = 0.1, plateau_patience: int = 3):
    """Returns ``(scheduler, per_batch)``: per-batch schedulers step every batch, others every epoch."""
    base = optimizer.base if isinstance(optimizer, SAM) else optimizer
    if name == "onecycle" and epochs * steps_per_epoch < 8:
        # OneCycleLR divides by the length of its warm-up and annealing phases, which round to zero steps on
        # a run this short (a smoke test); train at the constant peak rate instead.
        return None, False
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(base, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                   pct_start=0.25), True
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=epochs * steps_per_epoch), True
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(base, step_size=step_size, gamma=gamma), False
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(base, factor=gamma, patience=plateau_patience), False
    if name == "none":
        return None, False
    raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
