"""The classify training engine on small real subsets: outputs, reproducibility, resume, interruption, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fashionkit.classify.checkpoint import load_classifier, read_checkpoint
from fashionkit.classify.defaults import OPTIMIZERS, SCHEDULERS
from fashionkit.classify.optim import SAM, build_optimizer, build_scheduler
from fashionkit.classify.train import resume, train
from fashionkit.errors import UserError

TINY = {"model": "simple", "subset": 1500, "epochs": 2, "lr": 0.02, "batch_size": 100}


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def learned(rows: list[dict]) -> list[tuple]:
    """The columns that must repeat exactly (timings excluded)."""
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in rows]


def test_train_writes_a_complete_run(runs_dir):
    run, summary = train({**TINY, "name": "tiny"})
    assert run == runs_dir / "classify" / "tiny"
    for name in ("config.yaml", "run.json", "metrics.csv", "curves.png", "summary.json", "weights/best.pt",
                 "weights/last.pt"):
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert 0.5 < summary["test_acc"] <= 1  # 2 epochs on 1500 items already learn something
    assert summary == json.loads((run / "summary.json").read_text())
    model, ckpt = load_classifier(run)
    assert ckpt["epoch"] == summary["best_epoch"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # a second run with the same name gets a fresh directory
    run2, _ = train({**TINY, "epochs": 1, "name": "tiny", "test": False})
    assert run2.name == "tiny2"


def test_the_default_recipe_is_deterministic_per_seed(runs_dir):
    a, _ = train({"subset": 1500, "epochs": 2, "test": False})
    b, _ = train({"subset": 1500, "epochs": 2, "test": False})
    c, _ = train({"subset": 1500, "epochs": 2, "test": False, "seed": 1})
    assert learned(metrics(a)) == learned(metrics(b)) != learned(metrics(c))
    assert load_classifier(a)[1]["name"] == "vgg-fast"


def test_same_seed_same_metrics(runs_dir):
    a, _ = train({**TINY, "model": "vgg-small", "test": False, "dropout": 0.3})
    b, _ = train({**TINY, "model": "vgg-small", "test": False, "dropout": 0.3})
    c, _ = train({**TINY, "model": "vgg-small", "test": False, "dropout": 0.3, "seed": 1})
    assert learned(metrics(a)) == learned(metrics(b))
    assert learned(metrics(a)) != learned(metrics(c))


def _cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "fashionkit", "classify", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run, n, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if (run / "metrics.csv").exists() and len(metrics(run)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not reach the epoch in time")


# the second case is the default recipe (vgg-fast with its whitening conv, progressive resizing, flip-crop, TTA)
# plus weight averaging
@pytest.mark.parametrize("extra", [{}, {"model": "vgg-fast", "ema": 0.9, "tta": True, "augment": "flip-crop",
                                        "resize_from": 16}], ids=["simple", "default-recipe-ema"])
def test_resume_after_sigkill_matches_uninterrupted_run(runs_dir, extra):
    args = ["--model", "simple", "--subset", "3000", "--epochs", "3", "--lr", "0.02", "--no-test", "--name", "killed"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    env = {**os.environ, "FASHIONKIT_RUNS": str(runs_dir)}
    proc = _cli(args, env)
    run = runs_dir / "classify" / "killed"
    _wait_for_epochs(run, 1, proc)
    time.sleep(0.3)  # into the second epoch
    proc.kill()
    proc.wait()
    done = len(metrics(run))
    assert done < 3, "the run finished before it could be killed"
    # resumed and reference runs in fresh processes, as a user runs them: a pytest process carries state from
    # earlier tests (libraries that set global torch flags) that moved a vgg-fast epoch's last digits
    resumed = subprocess.run([sys.executable, "-m", "fashionkit", "classify", "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    ref_args = args[:args.index("--name")] + ["--name", "reference"] + args[args.index("--name") + 2:]
    ref = _cli(ref_args, env)
    assert ref.communicate(timeout=300) and ref.returncode == 0
    reference = runs_dir / "classify" / "reference"
    assert learned(metrics(run)) == learned(metrics(reference))
    for name in ("best.pt", "last.pt"):
        assert torch.equal(*(torch.load(r / "weights" / name)["state_dict"]["head.weight"] for r in (run, reference)))
    with pytest.raises(UserError, match="already finished"):
        resume(run)


def test_ema_keeps_validates_and_tests_the_averaged_weights(runs_dir):
    run, summary = train({**TINY, "ema": 0.9, "tta": True, "name": "ema"})
    last = torch.load(run / "weights" / "last.pt")
    averaged, trained = last["state_dict"], last["trained"]
    assert set(averaged) == set(trained)
    assert not torch.equal(averaged["head.weight"], trained["head.weight"])
    # the averaged weights are what was validated (without TTA): scoring them again gives the logged figures
    from fashionkit.classify.train import evaluate_loader
    from fashionkit.data import load_split
    from fashionkit.data.loader import BatchLoader
    from fashionkit.data.splits import make_splits
    from fashionkit.device import amp_dtype

    model, _ = load_classifier(run / "weights" / "last.pt")
    images, labels = load_split("train")
    val_idx = make_splits(labels.numpy(), 5000, 0, 1500)[1]
    cpu = torch.device("cpu")  # scored at the run's precision (bf16 where `--amp auto` picks it)
    loss, acc = evaluate_loader(model, BatchLoader(images, labels, 500, indices=val_idx), cpu, amp_dtype(cpu, "auto"))
    row = metrics(run)[-1]
    assert acc == pytest.approx(float(row["val_acc"]), abs=1e-9) and loss == pytest.approx(float(row["val_loss"]),
                                                                                            rel=1e-5)
    assert summary["test_tta"] is True and 0.5 < summary["test_acc"] <= 1
    with pytest.raises(UserError, match="--ema"):
        train({**TINY, "ema": 1.5})


@pytest.mark.parametrize("bf16, amx, vendor, expected", [
    (False, False, "AuthenticAMD", None),  # Zen 2 / Zen 3: bf16 emulated, ~10x slower
    (True, False, "AuthenticAMD", torch.bfloat16),  # Zen 4: bf16 1.2-3.9x faster
    (True, False, "GenuineIntel", None),  # Xeon without AMX: fp32 faster (vgg-fast 1,826 vs 1,372 images/s)
    (True, True, "GenuineIntel", torch.bfloat16),  # AMX
])
def test_amp_auto_trains_in_bf16_on_cpus_where_it_pays(monkeypatch, bf16, amx, vendor, expected):
    from fashionkit import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(device, "cpu_vendor", lambda: vendor)
    cpu = torch.device("cpu")
    assert device.amp_dtype(cpu, "auto") is expected
    assert device.amp_dtype(cpu, "bf16") is torch.bfloat16 and device.amp_dtype(cpu, "off") is None  # asked: kept


def test_this_machines_cpu_probes_answer():
    from fashionkit import device

    # the real probes, not replaced: a vendor read on Linux, and AMX only beside native bf16
    if sys.platform.startswith("linux"):
        assert device.cpu_vendor()
    assert isinstance(device.cpu_has_amx(), bool) and (not device.cpu_has_amx() or device.cpu_has_bf16())


# twenty forward passes of the default's first conv at the scoring batch (a 19 MiB output each), page faults counted
FAULTS_SCRIPT = """
import resource, torch
from fashionkit.device import keep_freed_memory
kept = keep_freed_memory()
x, conv = torch.randn(256, 1, 28, 28), torch.nn.Conv2d(1, 24, 3, padding=1)
with torch.no_grad():
    conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        conv(x).relu().sum()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_step_unless_turned_off():
    def faults(setting: str) -> tuple[str, int]:
        env = {**os.environ, "FASHIONKIT_KEEP_FREED_MEMORY": setting}
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], int(out[1])

    kept, off = faults("1"), faults("0")
    assert kept[0] == "True" and off[0] == "False"
    # glibc's defaults hand each output back to the kernel and fault it in again (about 10,000 pages a pass on a
    # Zen 3); kept, the passes reuse the same blocks
    assert kept[1] * 5 < off[1], (kept, off)


def test_ctrl_c_saves_and_exits_cleanly(runs_dir):
    env = {**os.environ, "FASHIONKIT_RUNS": str(runs_dir)}
    proc = _cli(["--model", "simple", "--subset", "3000", "--epochs", "50", "--lr", "0.02", "--name", "int"], env)
    run = runs_dir / "classify" / "int"
    _wait_for_epochs(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and f"continue with: classify train --resume {run}" in err
    assert (run / "weights" / "last.pt").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_training(runs_dir, monkeypatch):
    # Python drops a KeyboardInterrupt raised inside __del__; the SIGINT handler's flag makes the loop raise it again
    from fashionkit import interrupt

    def stop_after_epoch_1(row):
        if row["epoch"] == 1:
            interrupt.REQUESTED.set()  # what the handler leaves behind when its exception was swallowed

    monkeypatch.setattr(interrupt, "REQUESTED", interrupt.threading.Event())
    monkeypatch.setenv("FASHIONKIT_RUNS", str(runs_dir))
    with pytest.raises(KeyboardInterrupt):
        train({**TINY, "epochs": 3, "name": "swallowed"}, on_epoch_end=stop_after_epoch_1)
    run = runs_dir / "classify" / "swallowed"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert len(metrics(run)) == 1


def test_sam_and_every_optimizer_and_scheduler_step():
    from fashionkit.classify.models import create_model

    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for name in OPTIMIZERS:
        for sched_name in SCHEDULERS:
            model = create_model("simple")
            opt = build_optimizer(name, model, lr=0.01, weight_decay=1e-4)
            sched, per_batch = build_scheduler(sched_name, opt, epochs=2, steps_per_epoch=3, lr=0.01)
            before = [p.detach().clone() for p in model.parameters()]
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if sched is not None:
                sched.step(1.0) if sched_name == "plateau" else sched.step()
            assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), (name, sched_name)
    # SAM: two passes, weights restored before the base step
    model = create_model("simple")
    sam = SAM(build_optimizer("sgd", model, lr=0.1), rho=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step()
    moved = [p.detach().clone() for p in model.parameters()]
    sam.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sam.second_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_orthogonalize_sets_singular_values_near_one():
    from fashionkit.classify.optim import orthogonalize

    g = torch.Generator().manual_seed(0)
    for shape in [(24, 216), (96, 432), (300, 40)]:  # wide filter banks and a tall matrix
        m = torch.randn(*shape, generator=g) @ torch.diag(torch.logspace(-2, 0, shape[1]))
        before = torch.linalg.svdvals(m)
        after = torch.linalg.svdvals(orthogonalize(m))
        assert orthogonalize(m).shape == m.shape
        assert before.max() / before.min() > 3  # conditioned 3 to 100 before
        assert 0.6 < after.min() and after.max() < 1.25, (shape, after.min(), after.max())


def test_muon_steps_filters_by_muon_and_the_rest_exactly_as_nesterov_sgd():
    from fashionkit.classify.models import create_model
    from fashionkit.classify.optim import Muon, param_groups

    torch.manual_seed(0)
    model = create_model("vgg-fast")
    twin = create_model("vgg-fast")
    twin.load_state_dict(model.state_dict())
    muon = build_optimizer("muon", model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, muon_lr=0.3)
    assert isinstance(muon, Muon)
    filters = [g for g in muon.param_groups if g["muon"]]
    assert sum(len(g["params"]) for g in filters) == sum(
        1 for p in model.parameters() if p.ndim == 4 and p.requires_grad)
    assert all(g["weight_decay"] == 0 for g in filters)  # the norm is fixed instead
    # the same model stepped by torch's SGD: every tensor that is not a conv filter must match it exactly
    sgd = torch.optim.SGD([{**g, "params": [p for p in g["params"] if p.ndim != 4]}
                           for g in param_groups(twin, 5e-4)], lr=0.1, momentum=0.9, nesterov=True)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for net, opt in ((model, muon), (twin, sgd)):  # one step: after it the filters differ, so do the gradients
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if p.ndim != 4:
            torch.testing.assert_close(p, q, msg=name)
            torch.testing.assert_close(muon.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"], msg=name)
        elif p.requires_grad:
            assert not torch.equal(p, before[name]), name
            # rescaled to norm sqrt(out) before each step, then moved by lr x muon_lr x an orthogonal matrix
            assert abs(p.norm().item() - p.shape[0] ** 0.5) < 0.1 * p.shape[0] ** 0.5, name
        else:
            assert torch.equal(p, before[name]), name  # the frozen whitening conv stays frozen


@pytest.mark.parametrize("name,momentum,low,high", [("sgd", 0.9, 0.85, 0.95), ("sgd", 0.5, 0.45, 0.55),
                                                     ("muon", 0.7, 0.65, 0.75), ("rmsprop", 0.0, 0.0, 0.0),
                                                     ("sgd", 0.99, 0.94, 0.995), ("adamw", None, 0.85, 0.95)])
def test_onecycle_cycles_the_momentum_the_optimizer_was_given(name, momentum, low, high):
    # OneCycleLR on its own cycles every optimizer's momentum between 0.85 and 0.95, which made --momentum a
    # no-op under the default schedule (an 8-epoch run at --momentum 0.85 matched the default to the last digit)
    from fashionkit.classify.models import create_model

    model = create_model("simple")
    kwargs = {} if momentum is None else {"momentum": momentum}
    opt = build_optimizer(name, model, lr=0.1, weight_decay=5e-4, **kwargs)
    scheduler, _ = build_scheduler("onecycle", opt, epochs=2, steps_per_epoch=10, lr=0.1)
    key = "betas" if name == "adamw" else "momentum"
    seen = []
    for _ in range(20):
        seen += [g[key][0] if key == "betas" else g[key] for g in opt.param_groups]
        opt.step()
        scheduler.step()
    assert max(seen) == high and min(seen) == pytest.approx(low, abs=1e-3)  # high at the start, low at the peak


@pytest.mark.parametrize("name", ["sgd", "muon", "adamw"])
def test_norm_lr_scales_the_rate_of_batchnorm_and_biases_through_the_schedule(name):
    from fashionkit.classify.models import create_model

    model = create_model("vgg-fast")
    opt = build_optimizer(name, model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, norm_lr=4.0)
    scheduler, _ = build_scheduler("onecycle", opt, epochs=2, steps_per_epoch=10, lr=0.1)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    seen = set()
    for _ in range(5):  # up the warm-up: every group's rate keeps its multiple of the others'
        base = next(g for g in opt.param_groups if g.get("lr_scale") == 1.0)["lr"]
        for group in opt.param_groups:
            ids = {id(p) for p in group["params"]}
            seen |= ids & norms
            expected = 4.0 if ids & norms or all(p.ndim <= 1 for p in group["params"]) else 1.0
            assert group["lr"] == pytest.approx(base * expected), group.get("lr_scale")
        opt.step()
        scheduler.step()
    assert seen == norms  # every BatchNorm weight and bias is in a scaled group
    assert opt.param_groups[0]["lr"] > 0.004  # the schedule moved: past its start at lr / 25


def test_norm_lr_must_be_positive(runs_dir, cli, capsys):
    assert cli("classify", "train", "--norm-lr", "0", "--subset", "500", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "--norm-lr must be a positive number" in err and "Traceback" not in err


def test_muon_run_trains_and_resumes_state(runs_dir):
    run, summary = train({**TINY, "model": "vgg-fast", "optimizer": "muon", "lr": 0.1, "muon_lr": 1.0,
                          "test": False})
    assert summary["best_val_acc"] > 0.45  # 30 steps on 1,500 items: chance is 0.1
    state = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["optimizer"]
    assert any(g["muon"] for g in state["param_groups"]) and state["state"]


def test_sam_run_trains(runs_dir):
    _, summary = train({**TINY, "sam": True, "test": False})
    assert summary["best_val_acc"] > 0.5


def test_early_stopping(runs_dir):
    # lr 0 never improves after the first epoch: stops after `patience` more
    run, summary = train({**TINY, "epochs": 10, "lr": 1e-12, "scheduler": "none", "patience": 2, "test": False,
                          "monitor": "val_loss"})
    assert summary["status"] == "early_stopped"
    assert len(metrics(run)) == 3


def test_best_pt_is_the_end_of_the_schedule_unless_a_validation_figure_is_monitored(runs_dir, capsys):
    # lr 0: every epoch's validation loss is the first one's, so val_loss keeps epoch 1 (never strictly lower);
    # the default (last) keeps the end of the run, which is what the final test scores
    flat = {**TINY, "epochs": 3, "lr": 1e-12, "scheduler": "none"}
    run, summary = train({**flat, "name": "last"})
    assert summary["monitor"] == "last" and summary["best_epoch"] == 3
    assert read_checkpoint(run / "weights" / "best.pt")["epoch"] == 3
    assert "test (last epoch 3 with TTA)" in capsys.readouterr().out
    run, summary = train({**flat, "name": "val-loss", "monitor": "val_loss", "test": False})
    assert summary["monitor"] == "val_loss" and summary["best_epoch"] == 1
    assert read_checkpoint(run / "weights" / "best.pt")["epoch"] == 1


def test_nan_loss_stops_with_clear_error(runs_dir, cli, capsys):
    code = cli("classify", "train", "--model", "mlp", "--subset", "1000", "--epochs", "2", "--lr", "1e30",
               "--scheduler", "none", "--amp", "off", "--no-test")
    err = capsys.readouterr().err
    assert code == 2 and "training diverged" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--model", "alexnet"], "unknown model 'alexnet'; choose one of: mlp"),
    (["--optimizer", "lbfgs"], "'lbfgs' is not one of sgd"),
    (["--scheduler", "linear"], "'linear' is not one of onecycle"),
    (["--augment", "blur"], "unknown augmentation preset"),
    (["--model-opts", "depth=3"], "depth"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--optimizer", "muon", "--muon-lr", "0"], "--muon-lr must be a positive number"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    # these were a traceback from torch mid-run (momentum < 0, label smoothing > 1, a negative resize, threads,
    # step size 0) or taken silently (momentum >= 1, negative weight decay, --patience -1 stopping after epoch 1)
    (["--momentum", "-0.1"], "--momentum must be a number in [0, 1)"),
    (["--momentum", "1"], "--momentum must be a number in [0, 1)"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be a number in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    (["--resize-from", "-3"], "--resize-from must be 0 (off) or a size from 8 to 27 px"),
    (["--resize-until", "0"], "--resize-until must be a fraction of the run in (0, 1]"),
    (["--patience", "-1"], "--patience must be at least 0"),
    (["--patience", "3"], "--patience stops a run when a validation figure stops improving: add --monitor val_loss"),
    (["--threads", "-1"], "--threads must be at least 0"),
    (["--scheduler", "step", "--step-size", "0"], "--step-size must be at least 1"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),  # was scikit-learn's traceback
])
def test_bad_input_is_one_line_error(runs_dir, cli, capsys, args, message):
    assert cli("classify", "train", "--subset", "500", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (runs_dir / "classify").exists() or not any((runs_dir / "classify").iterdir())


def test_resume_refuses_missing_or_non_classify_dir(tmp_path, cli, capsys):
    assert cli("classify", "train", "--resume", tmp_path / "nope") == 2
    assert "run directory not found" in capsys.readouterr().err
    assert cli("classify", "train", "--resume", tmp_path) == 2
    assert "not a fashionkit run directory" in capsys.readouterr().err
    assert cli("classify", "train", "--resume", tmp_path, "--epochs", "3") == 2
    assert "drop the other flags (--epochs)" in capsys.readouterr().err


def test_an_in_process_cli_call_leaves_the_sigint_handler_as_it_found_it(runs_dir, monkeypatch):
    from fashionkit import interrupt
    from fashionkit.cli import main

    monkeypatch.setenv("FASHIONKIT_RUNS", str(runs_dir))
    before = signal.getsignal(signal.SIGINT)
    assert main(["classify", "train", "--model", "no-such-model"]) == 2
    assert signal.getsignal(signal.SIGINT) is before and not interrupt.REQUESTED.is_set()


def test_two_process_ddp_matches_one_process_with_the_global_batch(runs_dir, tmp_path):
    """``torchrun --nproc_per_node 2`` with batch 128 per process = one process with batch 256: the ranks shard one
    shuffled order and DDP averages their gradients, so (no dropout, no augmentation, plain SGD, fp32: bf16 autocast
    on a CPU that has it rounds differently per batch size) the weights must come out the same. Rank 0 alone makes
    the one run directory and writes every file."""
    opts = ["--model", "mlp", "--dropout", "0", "--augment", "none", "--subset", "2000", "--epochs", "2",
            "--lr", "0.05", "--device", "cpu", "--no-test", "--momentum", "0", "--no-nesterov", "--amp", "off"]
    env = {**os.environ, "FASHIONKIT_RUNS": str(runs_dir)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fashionkit", "classify", "train", *opts, "--batch-size", "128", "--name", "ddp"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("done: ") == 1 and "2 processes x batch 128" in two.stdout
    one, _ = train({"model": "mlp", "dropout": 0.0, "augment": "none", "subset": 2000, "epochs": 2, "lr": 0.05,
                    "device": "cpu", "test": False, "momentum": 0.0, "nesterov": False, "batch_size": 256,
                    "amp": "off", "name": "single"})
    assert sorted(p.name for p in (runs_dir / "classify").iterdir()) == ["ddp", "single"]
    ddp = runs_dir / "classify" / "ddp"
    assert json.loads((ddp / "summary.json").read_text())["processes"] == 2
    assert len(metrics(ddp)) == 2
    a = load_classifier(ddp, which="last")[0].state_dict()
    b = load_classifier(one, which="last")[0].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # and the reported training figures are over both shards, not rank 0's half
    for x, y in zip(metrics(ddp), metrics(one)):
        assert abs(float(x["train_loss"]) - float(y["train_loss"])) < 1e-4
        assert float(x["val_acc"]) == float(y["val_acc"])


def test_progressive_resizing_grows_the_training_images(runs_dir, tmp_path):
    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.classify.train import Trainer
    from fashionkit.config import resolve

    def sizes_per_epoch(**options):
        cfg = resolve(TRAIN_OPTIONS, {"subset": 500, "epochs": 4, "resize_from": 16, "resize_until": 0.75,
                                      "test": False, **options})
        run = tmp_path / cfg["model"]
        run.mkdir()
        trainer = Trainer(cfg, run)
        seen: dict[int, set] = {}
        trainer.model.register_forward_pre_hook(
            lambda m, args: seen.setdefault(trainer.epoch, set()).add(args[0].shape[-1]) if m.training else None)
        trainer.fit()
        return [sorted(seen[e]) for e in range(4)], metrics(run)

    sizes, rows = sizes_per_epoch(model="vgg-small")
    assert sizes == [[16], [20], [24], [28]]  # 16 px growing to 28 by 3 of the 4 epochs
    assert all(float(r["val_acc"]) > 0 for r in rows)  # validation at full size throughout
    assert sizes_per_epoch(model="mlp")[0] == [[28]] * 4  # a flattening neck needs 28 px: never resized


def test_final_augment_trains_the_last_epochs_with_the_lighter_preset(runs_dir, tmp_path):
    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.classify.train import Trainer
    from fashionkit.config import resolve

    cfg = resolve(TRAIN_OPTIONS, {"subset": 500, "epochs": 4, "augment": "flip-crop-erase",
                                  "final_augment": "flip-crop", "final_augment_epochs": 1, "test": False})
    trainer = Trainer(cfg, tmp_path)
    first, final = trainer.augments
    assert "RandomErasing" in repr(first) and "RandomErasing" not in repr(final) and "RandomCrop" in repr(final)
    used: dict[int, set] = {}

    def spy(augment, name):
        def call(x, g, **where):
            used.setdefault(where["epoch"], set()).add(name)
            return augment(x, g, **where)
        return call

    trainer.augments = (spy(first, "augment"), spy(final, "final"))
    trainer.fit()
    assert [used[e] for e in range(4)] == [{"augment"}] * 3 + [{"final"}]


@pytest.mark.parametrize("options, message", [
    ({"final_augment_epochs": 1}, "needs --final-augment"),
    ({"final_augment": "nope", "final_augment_epochs": 1}, "unknown augmentation preset 'nope'"),
    ({"final_augment": "flip", "final_augment_epochs": 3}, r"between 0 and --epochs \(2\)"),
])
def test_final_augment_errors(runs_dir, options, message):
    with pytest.raises(UserError, match=message):
        train({**TINY, **options})
