"""Optimizers (SAM wraps any of them) and learning-rate schedulers, by name."""

from __future__ import annotations

import torch
from torch import nn

from fashionkit.classify.defaults import OPTIMIZERS, SCHEDULERS
from fashionkit.errors import UserError


def param_groups(model: nn.Module, weight_decay: float, norm_lr: float = 1.0) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors): decaying them only hurts. ``norm_lr``: their
    learning rate as a multiple of the others' (``lr_scale``, which the schedulers keep)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": norm_lr}]


def build_optimizer(name: str, params, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0, muon_lr: float = 1.0, norm_lr: float = 1.0) -> torch.optim.Optimizer:
    if isinstance(params, nn.Module):
        params = param_groups(params, weight_decay, norm_lr)
    optimizer = _build(name, params, lr, momentum, nesterov, muon_lr)
    for group in optimizer.param_groups:
        if "lr_scale" in group:  # groups passed in with a rate of their own keep it
            group["lr"] = lr * group["lr_scale"]
    return optimizer


def _build(name: str, params, lr: float, momentum: float, nesterov: bool, muon_lr: float) -> torch.optim.Optimizer:
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
    if name == "muon":
        return Muon(params, lr=lr, momentum=momentum, nesterov=nesterov, muon_lr=muon_lr)
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T of g = U S V^T: a quintic Newton-Schulz iteration, the coefficients Muon's authors chose to
    push every singular value towards 1 in few steps (to somewhere in 0.5-1.5, which trains as well as exactly 1)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan et al. 2024, the optimizer of the CIFAR-10 speedruns since airbench94_muon) for the conv
    filters, Nesterov SGD for everything else, in one optimizer so one scheduler and one state_dict drive both.

    A conv filter bank's momentum is orthogonalised (its out x in*k*k matrix's singular values set to about 1: every
    direction moves at the same rate), and the bank is rescaled to a fixed norm before each step: a conv followed
    by BatchNorm does not change with its filters' scale, so the norm would only drift and change the effective
    step size (what weight decay does for SGD); Muon's filters therefore take no weight decay. ``muon_lr`` is the
    filters' learning rate as a multiple of the group's (the scheduler moves both together). Meant for nets with a
    BatchNorm after every conv (the vgg family): elsewhere the fixed norm changes what the net computes."""

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, muon_lr: float = 1.0):
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        groups = []
        for group in params:
            filters = [p for p in group["params"] if p.ndim == 4]
            rest = [p for p in group["params"] if p.ndim != 4]
            if filters:
                groups.append({**group, "params": filters, "muon": True, "weight_decay": 0.0})
            if rest:
                groups.append({**group, "params": rest, "muon": False})
        super().__init__(groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0,
                                  "muon": False, "muon_lr": muon_lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] and not group["muon"]:
                    g = g.add(p, alpha=group["weight_decay"])
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mom).add_(g)
                g = g.add(buf, alpha=mom) if group["nesterov"] else buf
                if group["muon"]:
                    p.mul_(p.shape[0] ** 0.5 / (p.norm() + 1e-12))
                    g = orthogonalize(g.reshape(p.shape[0], -1)).view_as(p)
                    p.add_(g, alpha=-lr * group["muon_lr"])
                else:
                    p.add_(g, alpha=-lr)
        return loss


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


def momentum_cycle(optimizer: torch.optim.Optimizer) -> dict:
    """OneCycleLR's momentum arguments for ``optimizer``. OneCycleLR also cycles the momentum (Adam's beta1), low
    while the rate is high, and by default between 0.85 and 0.95 whatever the optimizer was given, which made
    ``--momentum`` a silent no-op under the default schedule. Cycle it by 0.05 around the optimizer's own value
    instead (0.9, the default, gives 0.85-0.95: the schedule every run before had), staying below 1, and not at
    all where there is no momentum."""
    defaults = optimizer.defaults
    momentum = defaults["betas"][0] if "betas" in defaults else defaults.get("momentum", 0.0)
    if not momentum:
        return {"cycle_momentum": False}
    # rounded, so 0.9 gives exactly the 0.85 and 0.95 OneCycleLR used before (a last-bit difference would change
    # every weight of a seeded run)
    return {"base_momentum": round(max(momentum - 0.05, 0.0), 9),
            "max_momentum": round(min(momentum + 0.05, (1 + momentum) / 2), 9)}


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, lr: float,
                    step_size: int = 10, gamma: float = 0.1, plateau_patience: int = 3):
    """Returns ``(scheduler, per_batch)``: per-batch schedulers step every batch, others every epoch."""
    base = optimizer.base if isinstance(optimizer, SAM) else optimizer
    if name == "onecycle" and epochs * steps_per_epoch < 8:
        # OneCycleLR divides by the length of its warm-up and annealing phases, which round to zero steps on
        # a run this short (a smoke test); train at the constant peak rate instead.
        return None, False
    if name == "onecycle":
        max_lr = [lr * group.get("lr_scale", 1.0) for group in base.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(base, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                   pct_start=0.25, **momentum_cycle(base)), True
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=epochs * steps_per_epoch), True
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(base, step_size=step_size, gamma=gamma), False
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(base, factor=gamma, patience=plateau_patience), False
    if name == "none":
        return None, False
    raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
