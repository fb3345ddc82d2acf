"""``classify search``: coarse-to-fine hyperparameter search over ``classify train`` options, built on Optuna.

Stage 1 samples the space file's full ranges at random (Optuna's RandomSampler). Each later stage narrows every
numeric range to the span of the previous stage's top-k trials, widened by a margin, and keeps only the choices the
top-k used -- so what they agree on is fixed and what they disagree on stays open. ``--grid`` instead runs every
combination of a few values (GridSampler). Each stage is one Optuna study in ``<search>/study.db`` (SQLite).

Every trial is an ordinary classify run (``<search>/classify/s1-t003/``) scored by its best validation accuracy;
the test split is never looked at. Early stopping ends stalled trials and Optuna's MedianPruner stops those that
fall behind the stage's earlier trials at the same epoch, through the engine's ``on_epoch_end`` hook.

A search killed at any point continues with ``--resume``: finished trials (completed or pruned) stay as they are,
and a trial that was cut off is marked failed and queued again with the same parameters.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import TrialState

from fashionkit.classify.cli import SEARCH_OPTIONS
from fashionkit.classify.defaults import TRAIN_OPTIONS
from fashionkit.classify.train import StopTraining, parse_model_opts, train
from fashionkit.classify.train import validate as validate_train_config
from fashionkit.config import check_range, flag, load_yaml, resolve, save_yaml
from fashionkit.errors import UserError
from fashionkit.runs import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    read_json,
    write_run_info,
)

# Options that are not hyperparameters: they change where things go, what is measured or how fast, not the model.
NOT_SEARCHABLE = ("name", "runs_dir", "data_dir", "device", "threads", "tensorboard", "test", "compile", "amp",
                  "channels_last", "val_size", "subset", "seed", "monitor")
# Numeric bounds that the engine only notices mid-run (or never); checked when the space is read.
BOUNDS = {"momentum": (0.0, 1.0), "weight_decay": (0.0, None), "l1": (0.0, None), "label_smoothing": (0.0, 1.0),
          "sam_rho": (0.0, None), "gamma": (0.0, None), "dropout": (0.0, 1.0)}
SPEC_KEYS = ("low", "high", "log", "step", "choices")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRY = 2  # a trial cut off this many times (e.g. killed for memory each time) is not queued again


class _OutOfBudget(Exception):
    """Raised out of ``study.optimize`` when --budget-minutes ran out in the middle of a trial."""


# ---- the space ----------------------------------------------------------------------------------------------

def parse_space(path: str | Path, cfg: dict) -> dict[str, BaseDistribution]:
    """Read a space file into Optuna distributions; every mistake names the file, line and key."""
    path = Path(path)
    data = load_yaml(path)  # not found / not YAML / not a mapping: a UserError naming the file
    if not data:
        raise UserError(f"{path}: the space is empty; give one option per line, e.g. lr: {{low: 0.001, high: 0.3, "
                        f"log: true}}")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in yaml.compose(path.read_text()).value}
    models = _models(data.get("model"), cfg)
    return {_name(k): _parse_entry(_name(k), spec, cfg, models, f"{path}:{lines.get(str(k), '?')}: {k}")
            for k, spec in data.items()}


def parse_grid(items: list[str], cfg: dict) -> dict[str, CategoricalDistribution]:
    """``["activation=relu,elu", "optimizer=sgd,adamw"]`` -> one categorical per option (checked like the space)."""
    raw: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(parts):
            raise UserError(f"--grid {item!r}: write OPTION=VALUE1,VALUE2,... (e.g. activation=relu,elu)")
        if _name(key.strip()) in raw:
            raise UserError(f"--grid: option {key.strip()!r} is given twice; list all its values once")
        raw[_name(key.strip())] = parts
    models = _models(raw.get("model"), cfg)
    return {name: _parse_entry(name, {"choices": [v if name in TRAIN_OPTIONS else yaml.safe_load(v) for v in vals]},
                               cfg, models, f"--grid {name}") for name, vals in raw.items()}


def _name(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def _models(spec: Any, cfg: dict) -> list[str]:
    """The models the trials may use: the space's model choices, or the fixed --model."""
    if isinstance(spec, dict):
        spec = spec.get("choices")
    return [str(m) for m in spec] if isinstance(spec, list) and spec else [cfg["model"]]


def _parse_entry(name: str, spec: Any, cfg: dict, models: list[str], where: str) -> BaseDistribution:
    from fashionkit.classify.models import MODELS

    if name in NOT_SEARCHABLE:
        raise UserError(f"{where}: '{name}' is not a hyperparameter to search; set it for every trial with "
                        f"{flag(name)} or --config")
    model_keys = [k for k in _option_names(models[0], MODELS) if all(k in _option_names(m, MODELS) for m in models)]
    if name not in TRAIN_OPTIONS and name not in model_keys:
        searchable = [k for k in TRAIN_OPTIONS if k not in NOT_SEARCHABLE]
        raise UserError(f"{where}: unknown option '{name}'; use a classify train option ({', '.join(searchable)}) "
                        f"or an option of model {'/'.join(models)} ({', '.join(model_keys) or 'none'})")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where}: give a range {{low: L, high: H}} (optionally log: true, step: S) or choices "
                        f"[A, B, ...], not {spec!r}; a value for every trial belongs in --config or a flag")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown field '{unknown[0]}'; a range has low, high, log, step; a list has choices")
    if "choices" in spec:
        return _parse_choices(name, spec, cfg, where)
    return _parse_range(name, spec, cfg, where)


def _option_names(model: str, models: dict) -> list[str]:
    return models[model].option_names() if model in models else []


def _parse_choices(name: str, spec: dict, cfg: dict, where: str) -> CategoricalDistribution:
    if len(spec) > 1:
        raise UserError(f"{where}: give either choices or low/high, not both")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{where}: choices must be a non-empty list, e.g. [sgd, adamw]")
    values = []
    for value in choices:
        value = _convert(name, value, where)
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{where}: choice {value!r} must be a single value (text, number, true/false)")
        if any(_same(value, v) for v in values):
            raise UserError(f"{where}: choice {value!r} is listed twice")
        _check_value(name, value, cfg, where)
        values.append(value)
    return CategoricalDistribution(values)


def _parse_range(name: str, spec: dict, cfg: dict, where: str) -> BaseDistribution:
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs both low and high (or give choices: [...])")
    opt = TRAIN_OPTIONS.get(name)
    kind = (opt.type or type(opt.default)) if opt is not None else None
    if opt is not None and kind not in (int, float):
        raise UserError(f"{where}: '{name}' is not numeric; give choices, e.g. {name}: [A, B]")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    if kind is None:  # a model option: whole-number bounds mean an integer option (fc_layers, convs, fc_dim)
        kind = int if isinstance(low, int) and isinstance(high, int) else float
    if kind is int and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: '{name}' takes whole numbers; got low={low}, high={high}")
    if low > high:
        raise UserError(f"{where}: low {low} is above high {high}; swap them")
    if low == high:
        raise UserError(f"{where}: empty range (low = high = {low}); widen it, or fix the value with --config or "
                        f"a flag")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"{where}: a log-scale range needs low > 0, got low={low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, where, "step")
        if step <= 0 or log or (kind is int and not float(step).is_integer()):
            raise UserError(f"{where}: step must be a positive {'whole ' * (kind is int)}number and cannot be "
                            f"combined with log: true")
    for value in (low, high):
        _check_value(name, kind(value), cfg, where)
    if kind is int:
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _number(value: Any, where: str, field: str) -> int | float:
    # PyYAML reads 1e-3 (no dot) as text, so numbers in text are accepted too
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {field} must be a number, got {value!r}")
    return value


def _convert(name: str, value: Any, where: str) -> Any:
    """A choice (from YAML or --grid text) as the option's type."""
    if name not in TRAIN_OPTIONS:
        return value
    kind = TRAIN_OPTIONS[name].type or type(TRAIN_OPTIONS[name].default)
    if kind in (int, float) and not isinstance(value, bool):
        value = _number(value, where, "choice")
        if kind is int and not float(value).is_integer():
            raise UserError(f"{where}: '{name}' takes whole numbers, got {value}")
    try:
        return TRAIN_OPTIONS[name].convert(name, value)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _check_value(name: str, value: Any, cfg: dict, where: str) -> None:
    """Catch a value the option does not accept now, not when its trial comes up."""
    lo, hi = BOUNDS.get(name, (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UserError(f"{where}: {value} is outside what '{name}' accepts ([{lo}, {hi or 'inf'}])")
    try:
        validate_train_config(trial_config(cfg, {name: value}))
    except UserError as e:
        raise UserError(f"{where}: {value!r} is not accepted: {e}") from None


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # True == 1, but they are different choices


def trial_config(cfg: dict, params: dict) -> dict:
    """The classify train options of a trial: the fixed ones with the trial's values; model options go into
    model_opts."""
    cfg, model_opts = dict(cfg), parse_model_opts(cfg["model_opts"])
    for name, value in params.items():
        if name in TRAIN_OPTIONS:
            cfg[name] = value
        else:
            model_opts[name] = value
    cfg["model_opts"] = ",".join(f"{k}={_flow(v)}" for k, v in model_opts.items())
    return cfg


def _flow(value: Any) -> str:
    # YAML text that parse_model_opts reads back as the same value (1e-05 would come back as a string)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


# ---- narrowing ----------------------------------------------------------------------------------------------

def narrow(space: dict[str, BaseDistribution], top: list[optuna.trial.FrozenTrial],
           margin: float) -> dict[str, BaseDistribution]:
    """The next stage's space: each numeric range shrinks to the span of the top trials' values plus ``margin``
    of that span on each side (measured on log scale for log ranges; at least 5% of the old range wide), never
    beyond the old range; each choice list keeps the choices the top trials used."""
    new: dict[str, BaseDistribution] = {}
    for name, dist in space.items():
        values = [t.params[name] for t in top if name in t.params]
        if not values:
            new[name] = dist
        elif isinstance(dist, CategoricalDistribution):
            new[name] = CategoricalDistribution([c for c in dist.choices if any(_same(c, v) for v in values)])
        else:
            new[name] = _narrow_range(dist, values, margin)
    return new


def _narrow_range(dist: FloatDistribution | IntDistribution, values: list, margin: float) -> BaseDistribution:
    fwd, inv = (math.log, math.exp) if dist.log else (float, float)
    lo, hi = fwd(min(values)), fwd(max(values))
    pad = margin * max(hi - lo, 0.1 * (fwd(dist.high) - fwd(dist.low)))
    # min/max with the values themselves: exp(log(x)) need not give back x exactly, and the top must stay inside
    low = max(dist.low, min(inv(lo - pad), min(values)))
    high = min(dist.high, max(inv(hi + pad), max(values)))
    if isinstance(dist, IntDistribution) or dist.step:
        # to the nearest point of the old grid (low + k * step): the top values lie on it, so they stay inside,
        # and a margin under half a step does not reopen a value the top trials agree on (fc_layers: 2 stays 2);
        # rounded, so float noise does not put the range off the grid for Optuna
        step = dist.step
        low = round(dist.low + math.floor((low - dist.low) / step + 0.5) * step, 12)
        high = min(dist.high, round(dist.low + math.ceil((high - dist.low) / step - 0.5) * step, 12))
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(low), int(high), log=dist.log, step=dist.step)
    return FloatDistribution(low, high, log=dist.log, step=dist.step)


def describe(dist: BaseDistribution) -> dict:
    if isinstance(dist, CategoricalDistribution):
        return {"choices": list(dist.choices)}
    out = {"low": dist.low, "high": dist.high, "log": dist.log}
    if dist.step not in (None, 1):
        out["step"] = dist.step
    return out


# ---- running ------------------------------------------------------------------------------------------------

def search(cfg: dict, settings: dict, grid: list[str] | None = None) -> tuple[Path, dict]:
    """Start a search: ``cfg`` holds the fixed classify train options, ``settings`` the search's own (resolved
    SEARCH_OPTIONS); ``grid`` the --grid items. Returns ``(search_dir, result)``."""
    if grid and settings["space"]:
        raise UserError("give --space FILE (random search) or --grid OPTION=V1,V2 (grid), not both")
    if not grid and not settings["space"]:
        raise UserError("nothing to search: give --space FILE (see demos/search_space.yaml) or --grid OPTION=V1,V2")
    if not grid and settings["trials"] is None:
        raise UserError("--trials N is required with --space: the number of trials of each stage")
    check_range(settings, "margin", 0, None, "0 or more")
    check_range(settings, "budget_minutes", 0, None, "0 or more (0 = no cap)")
    validate_train_config(cfg)
    space = parse_grid(grid, cfg) if grid else parse_space(settings["space"], cfg)
    run = new_run_dir("classify", cfg["name"], cfg["runs_dir"], default_name="search")
    if not grid:
        atomic_write_text(run / "space.yaml", Path(settings["space"]).read_text())
    save_yaml({"train": cfg, "search": settings, "grid": grid}, run / "search.yaml")
    write_run_info(run, "classify", "search")
    return _run(run, cfg, settings, space, grid is not None, settings["budget_minutes"])


def resume_search(run: str | Path, budget_minutes: float | None = None) -> tuple[Path, dict]:
    """Continue a killed or budget-stopped search where it stopped; ``budget_minutes`` replaces the saved cap."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"search directory not found: {run}")
    info = read_json(run / "run.json", missing_ok=True) or {}
    if info.get("command") != "search" or not (run / "search.yaml").is_file():
        raise UserError(f"{run} is not a classify search directory (made by classify search, with search.yaml); "
                        f"pass runs/classify/<search>")
    saved = load_yaml(run / "search.yaml")
    cfg = resolve(TRAIN_OPTIONS, {}, saved["train"])
    settings = resolve(SEARCH_OPTIONS, {}, saved["search"])
    grid = saved.get("grid")
    space = parse_grid(grid, cfg) if grid else parse_space(run / "space.yaml", cfg)
    budget = settings["budget_minutes"] if budget_minutes is None else budget_minutes
    print(f"resuming search {run}")
    return _run(run, cfg, settings, space, bool(grid), budget)


@contextlib.contextmanager
def _locked(run: Path):
    # One process per search directory: that makes every RUNNING trial found on start a leftover of a killed one.
    with open(run / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another classify search is running in {run}; wait for it or stop it first") from None
        yield


def _storage(run: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{(run / 'study.db').resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _run(run: Path, cfg: dict, settings: dict, space: dict, is_grid: bool, budget_minutes: float) -> tuple[Path, dict]:
    # Our own line per trial says more; and Optuna would log a traceback for each trial stopped by Ctrl-C or the
    # budget (they end as FAIL, to be retried by --resume).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes else None
    storage = _storage(run)
    stages = ["grid"] if is_grid else [f"stage{s}" for s in range(1, settings["stages"] + 1)]
    status = "finished"
    with _locked(run):
        try:
            for index, stage in enumerate(stages):
                study, stage_space = _open_stage(storage, stage, index, stages, space, settings)
                target = math.prod(len(d.choices) for d in stage_space.values()) if is_grid else settings["trials"]
                if is_grid and settings["trials"]:
                    target = min(target, settings["trials"])
                _recover(study, storage)
                left = target - _finished(study)
                if left > 0:
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        status = "budget"
                        break
                    print(f"search {run}: {stage}, {left} of {target} trials to run over "
                          f"{', '.join(stage_space) or 'nothing'}", flush=True)
                    study = _load(storage, stage, stage_space, settings, cfg, is_grid)
                    objective = _Objective(run, cfg, stage, stage_space, deadline, target)
                    study.optimize(objective, n_trials=left, timeout=timeout,
                                   callbacks=[lambda *_: write_reports(run, storage, stages)])
                    if _finished(study) < target:  # the timeout stopped it between trials
                        status = "budget"
                        break
        except _OutOfBudget:
            status = "budget"
        except KeyboardInterrupt:
            write_reports(run, storage, stages, status="interrupted", plots=True)
            print(f"search interrupted; continue with: classify search --resume {run}", file=sys.stderr, flush=True)
            raise
        result = write_reports(run, storage, stages, status=status, plots=True)
    if status == "budget":
        print(f"--budget-minutes ran out; continue with: classify search --resume {run} [--budget-minutes M]")
    return run, result


def _open_stage(storage, stage: str, index: int, stages: list[str], space: dict,
                settings: dict) -> tuple[optuna.Study, dict]:
    """Create or load a stage's study; its space is saved with it, so a resumed search uses the same ranges."""
    study = optuna.create_study(storage=storage, study_name=stage, direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("space")
    if saved is not None:
        return study, {k: json_to_distribution(v) for k, v in saved.items()}
    top: list = []
    if index > 0:
        previous = optuna.load_study(storage=storage, study_name=stages[index - 1])
        top = _ranked(previous)[:settings["top_k"]]
        if not top:
            raise UserError(f"{stages[index - 1]} completed no trial (all pruned or diverged), so there is nothing to "
                            f"narrow to; widen the space, lower --lr bounds or allow more --epochs")
        space = narrow(_stage_space(previous), top, settings["margin"])
    study.set_user_attr("top_k", [_trial_name(stages[index - 1], t) for t in top] if top else [])
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in space.items()})
    return study, space


def _load(storage, stage: str, space: dict, settings: dict, cfg: dict, is_grid: bool) -> optuna.Study:
    """The stage's study with a sampler and pruner (Optuna keeps neither in storage)."""
    study = optuna.load_study(storage=storage, study_name=stage)
    # The sampler's seed depends on the trials so far: a resumed random stage does not replay the samples of
    # its first run (those trials are done), yet a whole search repeats with the same --seed.
    if is_grid:
        sampler = optuna.samplers.GridSampler(_grid_points_by_name(space), seed=cfg["seed"])
    else:
        sampler = optuna.samplers.RandomSampler(seed=zlib.crc32(f"{cfg['seed']} {stage} {len(study.trials)}".encode()))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings["prune_startup"],
                                          n_warmup_steps=settings["prune_warmup"])
              if settings["prune"] else optuna.pruners.NopPruner())
    return optuna.load_study(storage=storage, study_name=stage, sampler=sampler, pruner=pruner)


def _grid_points_by_name(space: dict) -> dict[str, list]:
    return {name: list(d.choices) for name, d in space.items()}


def _recover(study: optuna.Study, storage) -> None:
    """Trials left RUNNING were cut off by a kill: fail them (as Optuna's heartbeat check would, after its grace
    period; the lock makes them certainly stale now) and queue every failed trial once more with its parameters
    through Optuna's RetryHeartbeatStaleTrialCallback, up to MAX_RETRY times."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in retried:
            retry(study, t)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _ranked(study: optuna.Study) -> list:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))


def _stage_space(study: optuna.Study) -> dict:
    return {k: json_to_distribution(v) for k, v in study.user_attrs.get("space", {}).items()}


def _trial_name(stage: str, trial) -> str:
    return f"{'grid' if stage == 'grid' else 's' + stage.removeprefix('stage')}-t{trial.number:03d}"


class _Objective:
    """One trial = one classify run; reports validation accuracy each epoch so the pruner can stop it."""

    def __init__(self, run: Path, cfg: dict, stage: str, space: dict, deadline: float | None, target: int):
        self.run, self.cfg, self.stage, self.space = run, cfg, stage, space
        self.deadline, self.target = deadline, target

    def __call__(self, trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, dist) for name, dist in self.space.items()}
        name = _trial_name(self.stage, trial)
        trial.set_user_attr("run", f"classify/{name}")
        trial.set_user_attr("status", "running")
        cfg = {**trial_config(self.cfg, params), "name": name, "runs_dir": str(self.run)}

        def on_epoch_end(row: dict) -> None:
            trial.report(row["val_acc"], row["epoch"])
            # past the budget: stop at this epoch end, unless it was the last one anyway
            if self.deadline is not None and time.monotonic() > self.deadline and row["epoch"] < cfg["epochs"]:
                raise StopTraining("budget", "the search's --budget-minutes ran out")
            if trial.should_prune():
                raise StopTraining("pruned", f"val acc {row['val_acc']:.4f} is below the median of this stage's "
                                   f"earlier trials after epoch {row['epoch']}")

        start = time.monotonic()
        try:
            _, summary = train(cfg, on_epoch_end=on_epoch_end)
        except UserError:
            # a diverged trial (NaN loss) is a bad configuration, not a broken search; anything else stops it
            summary = read_json(self.run / "classify" / name / "summary.json", missing_ok=True) or {}
            if summary.get("status") != "nan":
                raise
        for key in ("status", "best_val_acc", "best_val_loss", "epochs_done", "test_acc"):
            if summary.get(key) is not None:
                trial.set_user_attr(key, summary[key])
        trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
        status = summary["status"]
        done = _finished(trial.study) + 1
        shown = " ".join(f"{k}={_short(v)}" for k, v in params.items())
        acc = summary.get("best_val_acc")
        print(f"[{self.stage} {done}/{self.target}] {name}: val acc {'-' if acc is None else f'{acc:.4f}'} "
              f"({status}, {summary.get('epochs_done', 0)} epochs, {time.monotonic() - start:.0f}s)  {shown}",
              flush=True)
        if status == "budget":
            raise _OutOfBudget()
        if status in ("pruned", "nan"):
            raise optuna.TrialPruned(status)
        return summary["best_val_acc"]


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- results ------------------------------------------------------------------------------------------------

def collect(storage, stages: list[str]) -> tuple[list[dict], dict]:
    """All trials of all stages as rows, best first, and each stage's space and top-k."""
    rows, spaces = [], {}
    names = set(optuna.get_all_study_names(storage))
    for stage in stages:
        if stage not in names:
            continue
        study = optuna.load_study(storage=storage, study_name=stage)
        spaces[stage] = {"ranges": {k: describe(d) for k, d in _stage_space(study).items()}}
        if study.user_attrs.get("top_k"):
            spaces[stage]["from_top_k"] = study.user_attrs["top_k"]
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING:
                continue
            status = t.user_attrs.get("status", "")
            if t.state == TrialState.FAIL and status != "budget":
                status = "interrupted"  # killed, Ctrl-C or an error; --resume runs its parameters again
            rows.append({"trial": _trial_name(stage, t), "stage": stage, "number": t.number, "state": t.state.name,
                         "status": status, "val_acc": t.user_attrs.get("best_val_acc"),
                         "val_loss": t.user_attrs.get("best_val_loss"), "epochs": t.user_attrs.get("epochs_done"),
                         "seconds": t.user_attrs.get("seconds"), "params": dict(t.params),
                         "run": t.user_attrs.get("run", "")})
    order = {"COMPLETE": 0, "PRUNED": 1}
    rows.sort(key=lambda r: (order.get(r["state"], 2), -(r["val_acc"] or 0), r["stage"], r["number"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["state"] == "COMPLETE" else None
    return rows, spaces


def write_reports(run: Path, storage, stages: list[str], status: str = "running", plots: bool = False) -> dict:
    """trials.csv, trials.md, best.yaml, ranges.json, summary.json (after every trial) and the plots."""
    rows, spaces = collect(storage, stages)
    keys = list(dict.fromkeys(k for stage in spaces.values() for k in stage["ranges"]))
    columns = ["rank", "trial", "val_acc", "val_loss", "status", "epochs", "seconds", *keys, "run"]
    table = [{**{c: r.get(c) for c in columns if c not in keys}, **{k: r["params"].get(k) for k in keys}}
             for r in rows]

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows([{c: "" if row[c] is None else row[c] for c in columns} for row in table])

    atomic_save(write_csv, run / "trials.csv")
    atomic_write_text(run / "trials.md", _markdown(table, columns))
    atomic_write_json(run / "ranges.json", spaces)
    best = next((r for r in rows if r["state"] == "COMPLETE"), None)
    result = {"status": status, "trials": len(rows), "completed": sum(r["state"] == "COMPLETE" for r in rows),
              "pruned": sum(r["state"] == "PRUNED" for r in rows), "stages": list(spaces)}
    if best is not None:
        result["best"] = {k: best[k] for k in ("trial", "val_acc", "val_loss", "epochs", "params", "run")}
        _write_best(run, best)
    atomic_write_json(run / "summary.json", result)
    if plots and rows:
        plot_scores(rows, spaces, run / "scores.png")
        plot_history(rows, stages, run / "history.png")
        plot_ranges(spaces, best, run / "ranges.png")
    return result


def _write_best(run: Path, best: dict) -> None:
    saved = load_yaml(run / "search.yaml")["train"]
    cfg = trial_config(saved, best["params"])
    cfg["test"] = True  # the trials never looked at the test split; the retrained model should report it
    for key in ("name", "runs_dir"):
        cfg.pop(key, None)
    header = (f"# best configuration of classify search {run}: trial {best['trial']}, best val acc "
              f"{best['val_acc']:.4f} after {best['epochs']} epochs\n"
              f"# train it: classify train --config {run / 'best.yaml'}\n"
              f"# (flags override it, e.g. --subset 0 --epochs 12 to train on all the data for longer)\n")
    atomic_write_text(run / "best.yaml", header + yaml.safe_dump(cfg, sort_keys=False))


def _markdown(table: list[dict], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


# ---- plots --------------------------------------------------------------------------------------------------

def plot_scores(rows: list[dict], spaces: dict, path: Path) -> None:
    """Validation accuracy against each hyperparameter, one colour per stage, each stage's range shaded."""
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    first = next(iter(spaces.values()))["ranges"]
    names = list(first)
    if not names:
        return
    cols = min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    colours = {stage: f"C{i}" for i, stage in enumerate(spaces)}
    scored = [r for r in rows if r["val_acc"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
    best = next((r for r in rows if r["state"] == "COMPLETE"), None)
    for ax, name in zip(axes.flat, names):
        spec = first[name]
        pos = (lambda v, c=spec["choices"]: _choice_index(c, v)) if "choices" in spec else (lambda v: v)
        for stage, colour in colours.items():
            pts = [r for r in scored if r["stage"] == stage and name in r["params"]]
            for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
                sel = [r for r in pts if r["state"] == state]
                if sel:
                    ax.scatter([pos(r["params"][name]) for r in sel], [r["val_acc"] for r in sel], c=colour,
                               marker=marker, s=28, alpha=0.8, label=f"{stage}{' pruned' * (state == 'PRUNED')}")
            rng = spaces[stage]["ranges"].get(name, {})
            if "low" in rng and stage != next(iter(spaces)):
                ax.axvspan(rng["low"], rng["high"], color=colour, alpha=0.12)
        if best is not None and name in best["params"]:
            ax.scatter([pos(best["params"][name])], [best["val_acc"]], marker="*", s=160, c="gold", edgecolors="k",
                       zorder=5, label="best")
        if "choices" in spec:
            ax.set_xticks(range(len(spec["choices"])), [str(c) for c in spec["choices"]], rotation=30, fontsize=8)
            ax.set_xlim(-0.5, len(spec["choices"]) - 0.5)
        elif spec.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("best val acc")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("validation accuracy vs each hyperparameter (x = pruned; shaded = narrowed range)")
    fig.tight_layout()
    save(fig, path)


def _choice_index(choices: list, value: Any) -> int:
    return next((i for i, c in enumerate(choices) if _same(c, value)), -1)


def plot_history(rows: list[dict], stages: list[str], path: Path) -> None:
    """Optimisation history: every trial's validation accuracy in run order and the best so far."""
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    ordered = sorted((r for r in rows if r["val_acc"] is not None),
                     key=lambda r: (stages.index(r["stage"]), r["number"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    best, best_line = None, []
    for r in ordered:
        if r["state"] == "COMPLETE":
            best = r["val_acc"] if best is None else max(best, r["val_acc"])
        best_line.append(best)
    for stage_i, stage in enumerate(stages):
        xs = [i for i, r in enumerate(ordered) if r["stage"] == stage]
        if not xs:
            continue
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            sel = [i for i in xs if ordered[i]["state"] == state]
            if sel:
                ax.scatter(sel, [ordered[i]["val_acc"] for i in sel], c=f"C{stage_i}", marker=marker,
                           label=f"{stage}{' pruned' * (state == 'PRUNED')}")
        if stage_i:
            ax.axvline(xs[0] - 0.5, color="grey", ls="--", lw=0.8)
    ax.step(range(len(ordered)), [b if b is not None else math.nan for b in best_line], where="post", c="k",
            lw=1.2, label="best so far")
    ax.set_xlabel("trial (in run order)")
    ax.set_ylabel("best val acc")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("optimisation history")
    save(fig, path)


def plot_ranges(spaces: dict, best: dict | None, path: Path) -> None:
    """Each stage's range per hyperparameter, drawn on the stage-1 range (log scale where the range is)."""
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    stages = list(spaces)
    first = spaces[stages[0]]["ranges"]
    names = list(first)
    if not names:
        return
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.5 * len(names) * len(stages)))
    height = 0.8 / len(stages)
    for row, name in enumerate(names):
        spec = first[name]
        for s, stage in enumerate(stages):
            rng = spaces[stage]["ranges"].get(name, spec)
            y = row + s * height
            if "choices" in spec:
                n = len(spec["choices"])
                for i, c in enumerate(spec["choices"]):
                    kept = any(_same(c, v) for v in rng["choices"])
                    ax.barh(y, 1 / n * 0.95, left=i / n, height=height * 0.9, color=f"C{s}" if kept else "none",
                            edgecolor=f"C{s}", alpha=0.6)
                    if s == 0:
                        ax.text((i + 0.5) / n, y - height * 0.5, str(c), ha="center", va="bottom", fontsize=6)
            else:
                lo, hi = _unit(spec, rng["low"]), _unit(spec, rng["high"])
                ax.barh(y, hi - lo, left=lo, height=height * 0.9, color=f"C{s}", alpha=0.6,
                        label=stage if row == 0 else None)
                ax.text(hi + 0.01, y, f"{_short(rng['low'])} .. {_short(rng['high'])}", va="center", fontsize=7)
        if best is not None and name in best["params"]:
            v = best["params"][name]
            choices = spec.get("choices")
            x = (_choice_index(choices, v) + 0.5) / len(choices) if choices else _unit(spec, v)
            ax.plot([x], [row + 0.4 - height / 2], marker="*", ms=12, c="gold", mec="k")
    ax.set_yticks([r + 0.4 - height / 2 for r in range(len(names))], names)
    ax.set_xlim(0, 1.25)
    ax.set_xticks([0, 1], ["stage-1 low", "stage-1 high"])
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{s}", alpha=0.6) for s in range(len(stages))]
    ax.legend(handles, stages, fontsize=8, loc="lower right")
    ax.set_title("search ranges per stage (star = best trial)")
    save(fig, path)


def _unit(spec: dict, value: float) -> float:
    fwd = math.log if spec.get("log") else float
    return (fwd(value) - fwd(spec["low"])) / ((fwd(spec["high"]) - fwd(spec["low"])) or 1)
