"""classify search on tiny real subsets: a 2-stage search and its narrowed ranges, resume after SIGKILL, grid,
budget, the engine's pruning hook, narrowing rules and bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from fashionkit.classify.defaults import TRAIN_OPTIONS
from fashionkit.classify.search import narrow
from fashionkit.classify.train import StopTraining, train
from fashionkit.config import resolve

TINY = ["--model", "simple", "--subset", "600", "--epochs", "1", "--lr", "0.02", "--batch-size", "100",
        "--amp", "off"]
# a log range, a plain range, an integer option of the model (simple's dense layer) and choices
SPACE = """\
lr: {low: 0.005, high: 0.1, log: true}
momentum: {low: 0.8, high: 0.95}
dense: {low: 32, high: 128}
activation: [relu, tanh]
"""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def rows(search) -> list[dict]:
    with open(search / "trials.csv") as f:
        return list(csv.DictReader(f))


def finished_trials(search, stage: str) -> dict[int, tuple]:
    storage = f"sqlite:///{search / 'study.db'}"
    study = optuna.load_study(study_name=stage, storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return {t.number: (t.state.name, t.params, t.value) for t in study.get_trials(states=states)}


def inside(value, rng: dict) -> bool:
    return any(value == c for c in rng["choices"]) if "choices" in rng else rng["low"] <= value <= rng["high"]


def test_two_stage_search_narrows_around_the_stage_1_best(runs_dir, cli, space):
    assert cli("classify", "search", *TINY, "--space", space, "--trials", "3", "--stages", "2", "--top-k", "2",
               "--name", "s") == 0
    search = runs_dir / "classify" / "s"
    for name in ("run.json", "search.yaml", "space.yaml", "study.db", "trials.csv", "trials.md", "best.yaml",
                 "ranges.json", "summary.json", "scores.png", "history.png", "ranges.png"):
        assert (search / name).is_file(), name
    assert json.loads((search / "run.json").read_text()) == {"stage": "classify", "command": "search"}

    # every trial is a normal classify run inside the search directory, scored on validation only
    table = rows(search)
    assert sorted(r["trial"] for r in table) == ["s1-t000", "s1-t001", "s1-t002", "s2-t000", "s2-t001", "s2-t002"]
    assert sorted(p.name for p in (search / "classify").iterdir()) == sorted(r["trial"] for r in table)
    for r in table:
        summary = json.loads((search / r["run"] / "summary.json").read_text())
        assert r["status"] == summary["status"] == "finished"
        assert float(r["val_acc"]) == pytest.approx(summary["best_val_acc"]) and "test_acc" not in summary
    accs = [float(r["val_acc"]) for r in table]
    assert accs == sorted(accs, reverse=True) and table[0]["rank"] == "1"

    # stage 2 lies inside stage 1 and contains the stage-1 best; the top-k it came from are stage 1's best
    ranges = json.loads((search / "ranges.json").read_text())
    stage1, stage2 = ranges["stage1"]["ranges"], ranges["stage2"]["ranges"]
    assert set(stage1) == set(stage2) == {"lr", "momentum", "dense", "activation"}
    stage1_rows = [r for r in table if r["trial"].startswith("s1-")]
    assert ranges["stage2"]["from_top_k"] == [r["trial"] for r in stage1_rows[:2]]
    best1 = finished_trials(search, "stage1")[int(stage1_rows[0]["trial"][-3:])][1]
    for key, rng in stage2.items():
        if "choices" in rng:
            assert set(rng["choices"]) <= set(stage1[key]["choices"]), key
        else:
            assert stage1[key]["low"] <= rng["low"] <= rng["high"] <= stage1[key]["high"], key
            assert rng["log"] == stage1[key]["log"]
        assert inside(best1[key], rng), (key, best1[key], rng)
    assert isinstance(stage2["dense"]["low"], int)
    for _, params, _ in finished_trials(search, "stage2").values():
        assert all(inside(params[k], stage2[k]) for k in stage2)

    # best.yaml is a complete classify train config of the best trial, evaluated on test when trained
    best = yaml.safe_load((search / "best.yaml").read_text())
    assert best["test"] is True and "name" not in best and "runs_dir" not in best
    cfg = resolve(TRAIN_OPTIONS, {}, best)
    trial_cfg = yaml.safe_load((search / table[0]["run"] / "config.yaml").read_text())
    for key in ("lr", "momentum", "activation", "model_opts", "subset", "epochs", "batch_size"):
        assert cfg[key] == trial_cfg[key], key
    assert trial_cfg["model_opts"] == f"dense={table[0]['dense']}"
    summary = json.loads((search / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["completed"] == 6
    assert summary["best"]["trial"] == table[0]["trial"]
    assert "| rank | trial | val_acc |" in (search / "trials.md").read_text()


def _wait(predicate, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the search did not get there in time")


def test_resume_after_sigkill_does_not_repeat_trials(runs_dir, cli, space):
    args = [*TINY, "--epochs", "2", "--space", space, "--trials", "3", "--stages", "1", "--name", "k",
            "--no-prune"]
    env = {**os.environ, "FASHIONKIT_RUNS": str(runs_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "fashionkit", "classify", "search", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    search = runs_dir / "classify" / "k"
    # kill it in the middle of the second trial
    _wait(lambda: (search / "trials.csv").exists() and len(rows(search)) >= 1, proc)
    _wait(lambda: (search / "classify" / "s1-t001" / "metrics.csv").exists(), proc)
    assert proc.poll() is None, "the search finished before it could be killed"
    proc.kill()
    proc.wait()
    before = finished_trials(search, "stage1")
    assert list(before) == [0]
    first_metrics = (search / "classify" / "s1-t000" / "metrics.csv").read_text()

    assert cli("classify", "search", "--resume", search, "--epochs", "2") == 2  # settings are the saved ones
    assert cli("classify", "search", "--resume", search) == 0
    after = finished_trials(search, "stage1")
    assert len(after) == 3 and after[0] == before[0]  # the finished trial kept its number, params and score
    assert (search / "classify" / "s1-t000" / "metrics.csv").read_text() == first_metrics  # and was not re-run
    study = optuna.load_study(study_name="stage1", storage=f"sqlite:///{search / 'study.db'}")
    killed = study.trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].number in after  # same params again
    params = [json.dumps(p, sort_keys=True) for _, p, _ in after.values()]
    assert len(set(params)) == 3
    table = rows(search)
    assert [r["status"] for r in table].count("interrupted") == 1 and len(table) == 4
    # a finished search has nothing left to run
    assert cli("classify", "search", "--resume", search) == 0
    assert finished_trials(search, "stage1") == after


def test_grid_runs_every_combination_once(runs_dir, cli):
    assert cli("classify", "search", *TINY, "--grid", "activation=relu,tanh", "optimizer=sgd,adamw",
               "--name", "g") == 0
    search = runs_dir / "classify" / "g"
    seen = []
    for run in sorted((search / "classify").iterdir()):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        seen.append((cfg["activation"], cfg["optimizer"]))
        assert cfg["model"] == "simple" and cfg["subset"] == 600 and cfg["test"] is False
    assert sorted(seen) == sorted(itertools.product(["relu", "tanh"], ["sgd", "adamw"]))
    assert len(rows(search)) == 4 and json.loads((search / "summary.json").read_text())["completed"] == 4


def test_budget_stops_and_resume_finishes(runs_dir, cli, space, capsys, monkeypatch):
    import types

    import fashionkit.classify.search as search_module

    # The search's clock jumps a day once the first epoch is written: the budget runs out inside the first trial,
    # however fast or busy the machine is.
    search = runs_dir / "classify" / "b"
    clock = lambda: time.monotonic() + 86400 * any((search / "classify").glob("*/metrics.csv"))  # noqa: E731
    monkeypatch.setattr(search_module, "time", types.SimpleNamespace(monotonic=clock))
    assert cli("classify", "search", *TINY, "--epochs", "3", "--patience", "0", "--space", space, "--trials", "2",
               "--stages", "1", "--budget-minutes", "5", "--name", "b") == 0
    assert "--budget-minutes ran out" in capsys.readouterr().out
    summary = json.loads((search / "summary.json").read_text())
    assert summary["status"] == "budget" and summary["completed"] == 0
    cut = json.loads((search / "classify" / "s1-t000" / "summary.json").read_text())
    assert cut["status"] == "budget" and cut["epochs_done"] == 1  # stopped at the first epoch end
    assert [p.name for p in (search / "classify").iterdir()] == ["s1-t000"]  # and no trial started after it
    assert rows(search)[0]["status"] == "budget"
    assert cli("classify", "search", "--resume", search, "--budget-minutes", "0") == 0
    assert json.loads((search / "summary.json").read_text())["status"] == "finished"
    after = finished_trials(search, "stage1")
    assert len(after) == 2 and all(state == "COMPLETE" for state, _, _ in after.values())


def test_on_epoch_end_hook_can_stop_a_run(runs_dir):
    seen = []

    def prune(row):
        seen.append(row)
        if row["epoch"] == 2:
            raise StopTraining("pruned", "below the median")

    run, summary = train({"model": "mlp", "subset": 1000, "epochs": 4, "lr": 0.02, "test": False},
                         on_epoch_end=prune)
    assert [r["epoch"] for r in seen] == [1, 2] and 0 <= seen[0]["val_acc"] <= 1
    assert summary["status"] == "pruned" and summary["epochs_done"] == 2
    assert json.loads((run / "summary.json").read_text())["status"] == "pruned"
    assert (run / "weights" / "last.pt").is_file() and (run / "curves.png").is_file()


def _trial(space: dict, value: float, **params) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(params=params, distributions={k: space[k] for k in params}, value=value)


def test_narrow_keeps_inside_contains_the_top_and_fixes_only_agreement():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {"lr": FloatDistribution(1e-4, 1.0, log=True), "m": FloatDistribution(0.0, 1.0),
             "n": IntDistribution(1, 10), "s": FloatDistribution(0.0, 1.0, step=0.1),
             "opt": CategoricalDistribution(["a", "b", "c"]), "act": CategoricalDistribution(["a", "b", "c"])}
    top = [_trial(space, 0.9, lr=1e-3, m=0.99, n=3, s=0.2, opt="a", act="b"),
           _trial(space, 0.8, lr=1e-2, m=0.95, n=7, s=0.6, opt="c", act="b")]
    new = narrow(space, top, margin=0.25)
    lo, hi = math.log(1e-3), math.log(1e-2)
    assert new["lr"].low == pytest.approx(math.exp(lo - 0.25 * (hi - lo)))  # margin measured on log scale
    assert new["lr"].high == pytest.approx(math.exp(hi + 0.25 * (hi - lo))) and new["lr"].log
    # top-k span 0.04 is under a tenth of the old range: the margin is a quarter of that tenth; clipped at 1
    assert new["m"].low == pytest.approx(0.925) and new["m"].high == 1.0
    assert (new["n"].low, new["n"].high) == (2, 8)
    assert new["s"].step == 0.1 and new["s"].low == pytest.approx(0.1) and new["s"].high == pytest.approx(0.7)
    assert new["opt"].choices == ("a", "c") and new["act"].choices == ("b",)  # disagreement stays open
    # the top values never fall out, even when all agree (a range keeps some width where the type allows)
    same = narrow(space, [_trial(space, 0.9, lr=0.5, m=0.5, n=4, s=0.4, opt="a", act="a")] * 3, margin=0.25)
    assert same["lr"].low < 0.5 < same["lr"].high and same["m"].low < 0.5 < same["m"].high
    assert same["n"].low == same["n"].high == 4 and same["s"].low == same["s"].high == pytest.approx(0.4)
    assert same["opt"].choices == ("a",)


@pytest.mark.parametrize("text, message", [
    ("lr: {low: 0.01, high: 0.1}\nlrate: {low: 0.01, high: 0.1}\n", ":2: lrate: unknown option 'lrate'"),
    ("lr: {low: 0.1, high: 0.1}\n", ":1: lr: empty range"),
    ("lr: {low: 0.3, high: 0.1}\n", ":1: lr: low 0.3 is above high 0.1"),
    ("lr: {low: 0.01, high: 0.1}\nweight_decay: {low: 0, high: 0.01, log: true}\n",
     ":2: weight_decay: a log-scale range needs low > 0"),
    ("optimizer: [sgd, lbfgs]\n", ":1: optimizer: option 'optimizer': 'lbfgs' is not one of"),
    ("activation: [relu, swish]\n", "activation: 'swish' is not accepted: unknown activation 'swish'"),
    ("optimizer: []\n", "optimizer: choices must be a non-empty list"),
    ("fc_layers: {low: 1, high: 3}\n", "unknown option 'fc_layers'; use a classify train option"),
    ("subset: [1000, 2000]\n", "'subset' is not a hyperparameter to search"),
    ("lr: 0.1\n", "lr: give a range {low: L, high: H}"),
    ("lr: {low: 0.01, hi: 0.1}\n", "lr: unknown field 'hi'"),
    ("momentum: {low: 0.5, high: 1.5}\n", "1.5 is outside what 'momentum' accepts"),
    ("batch_size: {low: 16, high: 64.5}\n", "'batch_size' takes whole numbers"),
    ("lr: [0.01, 0.1\n", "is not valid YAML"),
])
def test_bad_space_is_one_line_error_naming_line_and_key(runs_dir, cli, capsys, tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert cli("classify", "search", "--model", "simple", "--space", path, "--trials", "2") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (runs_dir / "classify").exists()


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "2", "--stages", "0"], "--stages must be at least 1"),
    (["--trials", "2", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--trials", "2", "--prune-warmup", "0"], "--prune-warmup must be at least 1, got 0"),
    (["--trials", "2", "--prune-startup", "-1"], "--prune-startup must be at least 0, got -1"),
    (["--trials", "2", "--budget-minutes", "-1"], "--budget-minutes must be 0 or more (0 = no cap), got -1.0"),
    ([], "--trials N is required with --space"),
    (["--grid", "activation=relu,swish"], "--grid activation: 'swish' is not accepted: unknown activation"),
    (["--grid", "batch_size=64,big"], "--grid batch_size: choice must be a number, got 'big'"),
    (["--grid", "optimizer"], "write OPTION=VALUE1,VALUE2"),
    (["--grid", "fc_layers=1,2"], "--grid fc_layers: unknown option 'fc_layers'"),
])
def test_bad_search_flags(runs_dir, cli, capsys, space, args, message):
    base = ["--model", "simple"] + ([] if "--grid" in args else ["--space", space])
    assert cli("classify", "search", *base, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (runs_dir / "classify").exists()


def test_fc_layers_is_a_searchable_option_of_vgg_models(runs_dir, cli, capsys, tmp_path):
    # checked and turned into model_opts without training anything: --grid with a bad value after a good one
    assert cli("classify", "search", "--model", "vgg-small", "--grid", "fc_layers=1,4") == 2
    assert "fc_layers=4: give 1, 2 or 3" in capsys.readouterr().err
    from fashionkit.classify.search import parse_space, trial_config

    path = tmp_path / "space.yaml"
    path.write_text("fc_layers: {low: 1, high: 3}\nwidth: {low: 0.5, high: 1.0}\n"
                    "lr: {low: 1e-3, high: 0.1, log: true}\n")
    cfg = resolve(TRAIN_OPTIONS, {"model": "vgg-small", "model_opts": "convs=1"})
    dists = parse_space(path, cfg)
    assert isinstance(dists["fc_layers"], optuna.distributions.IntDistribution)
    assert isinstance(dists["width"], optuna.distributions.FloatDistribution)
    assert dists["lr"].low == 1e-3  # PyYAML reads 1e-3 as text; it is still a number here
    assert trial_config(cfg, {"fc_layers": 2, "width": 0.75, "lr": 1e-05})["model_opts"] == \
        "convs=1,fc_layers=2,width=0.75"


def test_resume_needs_a_search_directory_and_space_or_grid(runs_dir, tmp_path, cli, capsys, space):
    assert cli("classify", "search", "--resume", tmp_path / "nope") == 2
    assert "search directory not found" in capsys.readouterr().err
    assert cli("classify", "search", "--resume", tmp_path) == 2
    assert "is not a classify search directory" in capsys.readouterr().err
    assert cli("classify", "search", "--space", space, "--grid", "activation=relu,elu") == 2
    assert "not both" in capsys.readouterr().err
    assert cli("classify", "search", "--model", "simple") == 2
    assert "nothing to search" in capsys.readouterr().err
