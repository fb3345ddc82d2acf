"""Classifier checkpoints: what a classify run leaves for evaluation, prediction and the later stages.

A checkpoint is a dict with ``format``, the model's registry ``name`` and ``options`` (enough to rebuild it),
its ``state_dict``, the run ``config`` and, in ``last.pt``, the optimizer/scheduler/RNG state to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fashionkit.config import load_yaml, resolve
from fashionkit.errors import UserError
from fashionkit.runs import atomic_save, open_run, read_torch_checkpoint

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
    return read_torch_checkpoint(path, FORMAT, "classify train")


def load_classifier(run_or_file: str | Path, device: str | torch.device = "cpu", which: str = "best"
                    ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a classify run (or checkpoint file) with its trained weights, in eval mode.
    A run directory's checkpoint is checked against the run's config.yaml (see ``load_run_model``)."""
    if Path(run_or_file).is_dir():
        model, ckpt, _, _ = load_run_model(run_or_file, device, which)
        return model, ckpt
    return _load_file(weights_path(run_or_file, which), device)


def _load_file(path: Path, device) -> tuple[torch.nn.Module, dict]:
    from fashionkit.classify.models import create_model

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


def run_config(run: Path) -> dict:
    """The resolved ``classify train`` options a run was made with (defaults fill keys older configs lack)."""
    from fashionkit.classify.defaults import TRAIN_OPTIONS

    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run} has no config.yaml: it is not a complete classify run; pass a run made by "
                        f"`classify train`")
    return resolve(TRAIN_OPTIONS, {}, load_yaml(path))


def _architecture(cfg: dict) -> tuple[str, dict, set[str]]:
    """``(name, options, given)`` of the model a run config describes, built on the meta device (no memory, no init
    cost) and with ``weights=none`` (the checkpoint brings the weights; nothing is downloaded); ``given``: the options
    the config sets itself (``--model-opts``, ``--activation``, ``--dropout``), the rest being the registry's defaults
    of today."""
    from fashionkit.classify.models import MODELS, create_model
    from fashionkit.classify.train import parse_model_opts

    opts = parse_model_opts(cfg["model_opts"])
    for key in ("activation", "dropout"):
        if cfg.get(key) is not None:
            opts[key] = cfg[key]
    given = set(opts) - {"weights"}
    if cfg["model"] in MODELS and "weights" in MODELS[cfg["model"]].option_names():
        opts["weights"] = "none"
    with torch.device("meta"):
        model = create_model(cfg["model"], **opts)
    return model.name, model.options, given


def load_run_model(run: str | Path, device: str | torch.device = "cpu", which: str = "best"
                   ) -> tuple[torch.nn.Module, dict, dict, Path]:
    """``(model in eval mode, checkpoint, run config, run dir)`` of a classify run.

    A checkpoint rebuilds its own architecture, so a ``best.pt`` copied in from another run would load without
    complaint and give that run's predictions under this run's name: it is checked against ``config.yaml`` (the
    model, and every option the config sets) and against the run's other checkpoint (every option: ``best.pt`` and
    ``last.pt`` of one run hold one architecture). Options the config leaves to the model registry's defaults are
    not checked against today's defaults: a default changed in a later version must not orphan the runs made before
    it (the checkpoint keeps the options it was built with).
    """
    if which not in ("best", "last"):
        raise UserError(f"--weights must be best or last, got {which!r}")
    run = open_run(run, "classify")
    cfg = run_config(run)
    model, ckpt = _load_file(weights_path(run, which), device)
    name, options, given = _architecture(cfg)
    differ = [k for k in sorted(given) if options.get(k) != model.options.get(k)]
    other = run / "weights" / ("last.pt" if which == "best" else "best.pt")
    config = "config.yaml's"
    if model.name == name and not differ and other.is_file():
        try:
            theirs = read_checkpoint(other).get("options", {})
        except UserError:  # an unreadable other checkpoint is that file's problem, reported when it is asked for
            theirs = model.options
        differ = [k for k in sorted(set(theirs) | set(model.options)) if theirs.get(k) != model.options.get(k)]
        config = f"the run's {other.name}'s"
    if model.name != name or differ:
        detail = (f"it holds {model.name} weights, but config.yaml says {name}" if model.name != name
                  else f"its {name} differs from {config} in {', '.join(differ)}")
        raise UserError(f"{run / 'weights' / (which + '.pt')} does not belong to this run: {detail}; it was copied "
                        f"from another run: evaluate that run, or retrain this one")
    return model, ckpt, cfg, run
