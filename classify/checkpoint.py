"""Classifier checkpoints: what a classify run leaves for evaluation, prediction and the later stages.

A checkpoint is a dict with ``format``, the model's registry ``name`` and ``options`` (enough to rebuild it),
its ``state_dict``, the run ``config`` and, in ``last.pt``, the optimizer/scheduler/RNG state to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fashionkit.errors import UserError
from fashionkit.runs import atomic_save

FORMAT = "fashionkit.classifier/1"


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | Path, model: torch.nn.Module, **extra: Any) -> Path:
    model = _plain(model)
    state = {"format": FORMAT, "name": model.name, "options": model.options,
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    return atomic_save(lambda tmp: torch.save(state, tmp), path)


def weights_path(run_or_file: str | Path, which: str = "best") -> Path:
    """``runs/classify/x`` -> ``runs/classify/x/weights/best.pt``; a ``.pt`` path is returned as is."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / "weights" / f"{which}.pt"
        if not path.is_file():
            raise UserError(f"no {which}.pt in {path.parent}: is {path.parent.parent} a finished classify run?")
    elif not path.is_file():
        raise UserError(f"checkpoint or run directory not found: {path}")
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for damaged files
        raise UserError(f"cannot read checkpoint {path}: the file is corrupted or not a PyTorch checkpoint "
                        f"({type(e).__name__}); use another checkpoint or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a fashionkit classifier checkpoint (made by `classify train`)")
    return ckpt


def load_classifier(run_or_file: str | Path, device: str | torch.device = "cpu", which: str = "best"
                    ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a classify run (or checkpoint file) with its trained weights, in eval mode."""
    from fashionkit.classify.models import create_model

    path = weights_path(run_or_file, which)
    ckpt = read_checkpoint(path)
    model = create_model(ckpt["name"], **ckpt["options"])
    load_weights(model, ckpt, path)
    return model.to(device).eval(), ckpt


def load_weights(model: torch.nn.Module, ckpt: dict, path: str | Path = "checkpoint") -> None:
    """Load a checkpoint's weights into ``model``; a checkpoint of another architecture is a UserError."""
    try:
        _plain(model).load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{path} holds weights of a {ckpt.get('name')} model {ckpt.get('options')} that do not "
                        f"fit this {_plain(model).name} model ({first}); pass a checkpoint of the same model") from None
