"""``classify train``: the training engine, readable top to bottom.

One epoch = batches from the in-memory loader (augmented whole), forward under autocast (bf16 on CPUs where it
pays), backward, optimizer (or SAM's two passes), scheduler. After each epoch: validation, one row of
``metrics.csv``, ``last.pt`` (with everything needed to resume) and, when validation improved, ``best.pt`` --
all written atomically. At the end the best weights are evaluated once on the test split.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fashionkit import distributed, interrupt
from fashionkit.classify.checkpoint import load_weights, read_checkpoint, save_checkpoint
from fashionkit.classify.defaults import EVAL_BATCH, TRAIN_OPTIONS
from fashionkit.classify.optim import SAM, build_optimizer, build_scheduler
from fashionkit.config import check_range, resolve
from fashionkit.device import amp_dtype, autocast, keep_freed_memory, precision_name, select_device
from fashionkit.errors import UserError
from fashionkit.runs import MetricsCSV, atomic_write_json, fit_run, resume_point, start_run


def parse_model_opts(text: str) -> dict:
    """``"width=48,fc_layers=2,hidden=[256,128]"`` -> dict with YAML-typed values."""
    import yaml

    opts = {}
    for part in filter(None, _split_top_level(text)):
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"--model-opts entry {part!r} is not key=value")
        opts[key.strip()] = yaml.safe_load(value)
    return opts


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text or "":
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def model_from_config(cfg: dict) -> nn.Module:
    from fashionkit.classify.models import create_model

    opts = parse_model_opts(cfg["model_opts"])
    for key in ("activation", "dropout"):
        if cfg.get(key) is not None:
            opts[key] = cfg[key]
    return create_model(cfg["model"], **opts)


class NonFiniteLoss(Exception):
    pass


class StopTraining(Exception):
    """Raised by an ``on_epoch_end`` callback (e.g. a hyperparameter search pruning a hopeless trial) to end the
    run after the epoch it was shown, which is already saved; ``status`` goes into summary.json."""

    def __init__(self, status: str = "stopped", reason: str = ""):
        super().__init__(reason or status)
        self.status = status


class Trainer:
    """Holds the state of one classify run; ``fit()`` trains it to the end (or to early stopping)."""

    def __init__(self, cfg: dict, run: Path, resume: dict | None = None,
                 on_epoch_end: Callable[[dict], None] | None = None):
        from fashionkit.data import load_split
        from fashionkit.data.augment import build_augment
        from fashionkit.data.loader import BatchLoader
        from fashionkit.data.splits import make_splits

        self.cfg, self.run, self.on_epoch_end = cfg, run, on_epoch_end
        self.main = distributed.is_main()  # under torchrun only rank 0 writes files and prints
        keep_freed_memory()  # training and scoring reuse freed activations instead of faulting them in again
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        self.device = distributed.init(select_device(cfg["device"]))
        self.amp = amp_dtype(self.device, cfg["amp"])
        augment = build_augment(cfg["augment"])
        # the last --final-augment-epochs epochs switch to the lighter preset (chosen per epoch in train_epoch,
        # so a resumed run switches at the same epoch)
        self.augments = (augment, build_augment(cfg["final_augment"]) if cfg["final_augment_epochs"] else augment)

        images, labels = load_split("train", cfg["data_dir"])
        train_idx, val_idx = make_splits(labels.numpy(), cfg["val_size"], cfg["seed"], cfg["subset"] or None)
        self.split_sizes = {"train": len(train_idx), "val": len(val_idx)}
        self.train_loader = BatchLoader(images, labels, cfg["batch_size"], shuffle=True, augment=augment,
                                        device=self.device, seed=cfg["seed"], drop_last=len(train_idx) >= 2 * cfg[
                                            "batch_size"], channels_last=cfg["channels_last"], indices=train_idx,
                                        rank=distributed.rank(), world_size=distributed.world_size())
        self.val_loader = BatchLoader(images, labels, EVAL_BATCH, device=self.device,
                                      channels_last=cfg["channels_last"], indices=val_idx)

        self.model = model_from_config(cfg).to(self.device)
        if self.model.options.get("whiten") and resume is None:
            from fashionkit.classify.models import whiten_first_conv
            from fashionkit.data.loader import normalize, to_float

            sample = torch.as_tensor(train_idx[:5000])  # the same items on every rank: the same filters
            whiten_first_conv(self.model, normalize(to_float(images[sample])).to(self.device))
        if cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg["optimizer"], self.model, cfg["lr"], cfg["momentum"], cfg["nesterov"],
                                         cfg["weight_decay"], cfg["muon_lr"], cfg["norm_lr"])
        if cfg["sam"]:
            self.optimizer = SAM(self.optimizer, cfg["sam_rho"])
        self.scheduler, self.per_batch = build_scheduler(cfg["scheduler"], self.optimizer, cfg["epochs"],
                                                         len(self.train_loader), cfg["lr"], cfg["step_size"],
                                                         cfg["gamma"])
        # weight averaging: validation, best.pt and the test score use an exponential moving average of the
        # weights (torch's AveragedModel, BatchNorm statistics averaged too), which is ahead of the raw weights
        # while the learning rate is still high
        self.ema = None
        if cfg["ema"]:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        self.forward = distributed.wrap(self.model, self.device)
        if cfg["compile"]:
            self.forward = torch.compile(self.forward)

        self.epoch, self.best, self.bad_epochs, self.best_epoch = 0, None, 0, 0
        if resume is not None:
            if self.ema is not None:  # last.pt's weights are the averaged ones; training goes on from the raw ones
                self.model.load_state_dict(resume["trained"])
                self.ema.load_state_dict(resume["ema"])
            else:
                load_weights(self.model, resume)
            self.optimizer.load_state_dict(resume["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(resume["scheduler"])
            self.epoch, self.best = resume["epoch"], resume["best"]
            self.bad_epochs, self.best_epoch = resume["bad_epochs"], resume["best_epoch"]
            torch.set_rng_state(resume["rng"])
        self.metrics = MetricsCSV(run / "metrics.csv", keep_until=self.epoch if self.main else None)
        self.tb = _tensorboard(run) if cfg["tensorboard"] and self.main else None

    # -- one epoch ----------------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp):
            logits = self.forward(x)
            loss = self.loss_fn(logits.float(), y)
        if self.cfg["l1"]:
            loss = loss + self.cfg["l1"] * sum(p.abs().sum() for p in self.model.parameters() if p.ndim > 1)
        return loss, logits

    def train_epoch(self) -> dict:
        from tqdm import tqdm

        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        self.train_loader.augment = self.augments[self.epoch >= self.cfg["epochs"] - self.cfg["final_augment_epochs"]]
        total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg['epochs']}", leave=False,
                   dynamic_ncols=True, disable=None if self.main else True)
        size = self.image_size(self.epoch)
        for x, y in bar:
            interrupt.check()  # a Ctrl-C that a finaliser swallowed
            if size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            loss, logits = self.loss(x, y)
            if distributed.any_true(not torch.isfinite(loss), self.device):  # any rank's NaN stops all ranks
                raise NonFiniteLoss(f"loss became {loss.item()} in epoch {self.epoch + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(self.optimizer, SAM):
                self.optimizer.first_step()
                self.optimizer.zero_grad(set_to_none=True)
                self.loss(x, y)[0].backward()
                self.optimizer.second_step()
            else:
                self.optimizer.step()
            if self.scheduler is not None and self.per_batch:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            n = len(y)
            total_loss += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                            ips=f"{seen / (time.perf_counter() - start):.0f}")
        seconds = time.perf_counter() - start
        total_loss, correct, seen = distributed.all_sum([total_loss, correct, seen], self.device)
        return {"train_loss": total_loss / seen, "train_acc": correct / seen, "seconds": seconds,
                "img_per_s": seen / seconds}

    def image_size(self, epoch: int) -> int:
        """Progressive resizing (--resize-from N): early epochs train on images scaled down to N px, which cost
        about (N/28)^2 of a full-size epoch, growing linearly to full size by --resize-until of the run; the
        rest, validation and test are at full size. Nets that need 28 px (a flattening neck) always get it."""
        full, start = self.train_loader.images.shape[-1], self.cfg["resize_from"]
        ramp = self.cfg["resize_until"] * self.cfg["epochs"]
        if not start or start >= full or epoch >= ramp or not self.model.any_size:
            return full
        return round(start + (full - start) * epoch / ramp)

    def validate(self) -> dict:
        """Validation figures; under torchrun rank 0 measures them (on its plain model: the DDP wrapper would
        wait for the other ranks) and every rank gets the same numbers, so all take the same decisions."""
        row = None
        if self.main:
            model = self.ema.module if self.ema is not None else self.model if distributed.active() else self.forward
            loss, acc = evaluate_loader(model, self.val_loader, self.device, self.amp)
            row = {"val_loss": loss, "val_acc": acc}
        return distributed.share(row)

    def improved(self, row: dict) -> bool:
        monitor = self.cfg["monitor"]
        if monitor == "last" or self.best is None:
            return True
        return row[monitor] < self.best if monitor == "val_loss" else row[monitor] > self.best

    # -- the loop -----------------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.cfg
        world = distributed.world_size()
        if self.main:
            print(f"run {self.run}: {cfg['model']} on {self.device} ({precision_name(self.amp)}), "
                  f"{self.split_sizes['train']} train / {self.split_sizes['val']} val items, {cfg['epochs']} epochs"
                  + (f", {world} processes x batch {cfg['batch_size']}" if world > 1 else ""))
        return fit_run(self, "classify", plot_curves, self.test if cfg["test"] else None)

    def loop(self) -> str:
        """Train epoch after epoch; returns how it ended (finished / early_stopped / a StopTraining status)."""
        cfg, weights = self.cfg, self.run / "weights"
        while self.epoch < cfg["epochs"]:
            try:
                row = {"epoch": self.epoch + 1, **self.train_epoch(), **self.validate(),
                       "lr": self.optimizer.param_groups[0]["lr"]}
            except NonFiniteLoss as e:
                if self.main:
                    self.write_summary("nan")
                kept = f"the last good checkpoint is {weights / 'last.pt'}" if self.epoch else "no epoch finished"
                raise UserError(f"{e}: training diverged ({kept}); lower --lr or use --amp off, then retrain") from None
            self.epoch += 1
            if self.scheduler is not None and not self.per_batch:
                if cfg["scheduler"] == "plateau":
                    self.scheduler.step(row["val_loss"])
                else:
                    self.scheduler.step()
            with interrupt.deferred():  # best.pt, the metrics row and last.pt: all of them or none
                if self.improved(row):
                    self.best, self.best_epoch, self.bad_epochs = row.get(cfg["monitor"]), self.epoch, 0
                    if self.main:
                        save_checkpoint(weights / "best.pt", self.evaluated(), epoch=self.epoch, metrics=row,
                                        config=cfg)
                else:
                    self.bad_epochs += 1
                if self.main:
                    self.metrics.append(row)
                    self.log_tensorboard(row)
                    self.save_last(row)
            if self.main:
                print(f"epoch {self.epoch}/{cfg['epochs']}  train loss {row['train_loss']:.4f} "
                      f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
                      f"{row['seconds']:.1f}s {row['img_per_s']:.0f} img/s"
                      + ("  *" if self.best_epoch == self.epoch else ""), flush=True)
            if self.on_epoch_end is not None:
                try:
                    self.on_epoch_end(row)
                except StopTraining as e:
                    print(f"stopped after epoch {self.epoch}: {e}")
                    return e.status
            if cfg["patience"] and self.bad_epochs >= cfg["patience"]:
                if self.main:
                    print(f"early stopping: no {cfg['monitor']} improvement for {cfg['patience']} epochs")
                return "early_stopped"
        return "finished"

    def evaluated(self) -> nn.Module:
        """The weights that are validated and kept: the averaged ones with --ema, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def save_last(self, row: dict) -> None:
        # last.pt holds the weights users load (averaged with --ema, like best.pt) and, for --resume, the raw ones
        extra = {"ema": self.ema.state_dict(), "trained": {k: v.detach().cpu() for k, v in
                                                           self.model.state_dict().items()}} if self.ema else {}
        save_checkpoint(self.run / "weights" / "last.pt", self.evaluated(), epoch=self.epoch, metrics=row,
                        config=self.cfg, **extra,
                        optimizer=self.optimizer.state_dict(), best=self.best, best_epoch=self.best_epoch,
                        bad_epochs=self.bad_epochs, rng=torch.get_rng_state(),
                        scheduler=self.scheduler.state_dict() if self.scheduler is not None else None)

    def test(self) -> dict:
        from fashionkit.data import load_split
        from fashionkit.data.loader import BatchLoader

        best = read_checkpoint(self.run / "weights" / "best.pt")
        load_weights(self.model, best)
        images, labels = load_split("test", self.cfg["data_dir"])
        loader = BatchLoader(images, labels, EVAL_BATCH, device=self.device, channels_last=self.cfg["channels_last"])
        # in fp32 whatever --amp trained: the exact figure, as `classify eval` and the benchmarks score (in bf16 a Zen 4
        # run scored 94.02% for weights that score 94.05%; BENCHMARKS.md, "Kinds of CPU")
        loss, acc = evaluate_loader(self.model, loader, self.device, None, self.cfg["tta"])
        tta = " with TTA" if self.cfg["tta"] else ""
        which = "last" if self.cfg["monitor"] == "last" else "best"
        print(f"test ({which} epoch {best['epoch']}{tta}): loss {loss:.4f} acc {acc:.4f}")
        return {"test_loss": loss, "test_acc": acc, "test_tta": self.cfg["tta"]}

    def write_summary(self, status: str, **extra) -> dict:
        rows = self.metrics.rows()
        summary = {
            "status": status, "model": self.cfg["model"], "params": sum(p.numel() for p in self.model.parameters()),
            "epochs_done": self.epoch, "epochs": self.cfg["epochs"], "best_epoch": self.best_epoch,
            "monitor": self.cfg["monitor"],
            "best_val_acc": max((float(r["val_acc"]) for r in rows), default=None),
            "best_val_loss": min((float(r["val_loss"]) for r in rows), default=None),
            "seconds_per_epoch": sum(float(r["seconds"]) for r in rows) / len(rows) if rows else None,
            "device": str(self.device), "precision": precision_name(self.amp), **self.split_sizes,
            "processes": distributed.world_size(),
        }
        summary.update(extra)
        atomic_write_json(self.run / "summary.json", summary)
        return summary

    def log_tensorboard(self, row: dict) -> None:
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()


@torch.no_grad()
def evaluate_loader(model, loader, device, amp, tta: bool = False) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy of ``model`` over a loader. ``tta``: score the mean
    probabilities of the TTA views (``predict.tta_views``; the loss is then their negative log-likelihood)."""
    from fashionkit.classify.predict import tta_probs

    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        with autocast(device, amp):
            logits = tta_probs(model, x).clamp_min(1e-12).log() if tta else model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    model.train(was_training)
    return total_loss / seen, correct / seen


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: --tensorboard needs the tensorboard package (pip install tensorboard); not logging",
              file=sys.stderr)
        return None
    return SummaryWriter(str(run / "tensorboard"))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    from fashionkit.plots import pyplot, save

    if not rows:
        return
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "--"), ("val", "-")):
        ax_loss.plot(epochs, [float(r[f"{key}_loss"]) for r in rows], style, label=key)
        ax_acc.plot(epochs, [float(r[f"{key}_acc"]) for r in rows], style, label=key)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save(fig, path)


# ---- entry points -------------------------------------------------------------------------------------------

def train(options: dict | None = None, config: str | Path | dict | None = None,
          on_epoch_end: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    """Start a new run from options (flags) over an optional config; returns ``(run_dir, summary)``.
    ``on_epoch_end(row)`` sees each epoch's metrics row once it is saved and may raise StopTraining."""
    cfg = resolve(TRAIN_OPTIONS, options or {}, config)
    validate(cfg)
    distributed.init(select_device(cfg["device"]))  # under torchrun: rank 0 makes the run, the others join it
    if distributed.is_main():
        run, trainer = start_run("classify", cfg, lambda run: Trainer(cfg, distributed.share(run),
                                                                      on_epoch_end=on_epoch_end))
    else:
        run = distributed.share(None)
        trainer = Trainer(cfg, run, on_epoch_end=on_epoch_end)
    return run, trainer.fit()


def resume(run: str | Path) -> tuple[Path, dict]:
    """Continue an interrupted run from its ``last.pt`` to the epoch count it was started with."""
    run, ckpt, config = resume_point(run, "classify", read_checkpoint)
    cfg = resolve(TRAIN_OPTIONS, {}, config)
    if distributed.is_main():
        print(f"resuming {run} after epoch {ckpt['epoch']}")
    return run, Trainer(cfg, run, resume=ckpt).fit()


def validate(cfg: dict) -> None:
    from fashionkit.classify.models import IMAGE_SIZE, MODELS
    from fashionkit.data.augment import build_augment

    if cfg["model"] not in MODELS:
        raise UserError(f"unknown model {cfg['model']!r}; choose one of: {', '.join(MODELS)}")
    build_augment(cfg["augment"])
    if cfg["final_augment_epochs"]:
        if not cfg["final_augment"]:
            raise UserError("--final-augment-epochs needs --final-augment, the preset to train those epochs with "
                            "(e.g. --final-augment flip-crop)")
        build_augment(cfg["final_augment"])
    if cfg["patience"] and cfg["monitor"] == "last":
        raise UserError("--patience stops a run when a validation figure stops improving: add --monitor val_loss "
                        "(or val_acc)")
    if not 0 <= cfg["final_augment_epochs"] <= cfg["epochs"]:
        raise UserError(f"--final-augment-epochs must be between 0 and --epochs ({cfg['epochs']}), "
                        f"got {cfg['final_augment_epochs']}")
    # torch checks some of these deep inside a run (a traceback) and takes others silently (a negative --patience
    # stopped after the first epoch): one line each, before a run directory is made
    check_range(cfg, "lr", 0, None, "a positive number", low_open=True)
    check_range(cfg, "muon_lr", 0, None, "a positive number (the conv filters' rate as a multiple of --lr)",
                low_open=True)
    check_range(cfg, "norm_lr", 0, None, "a positive number (the BatchNorm weights' and biases' rate as a multiple "
                "of --lr)", low_open=True)
    check_range(cfg, "ema", 0, 1, "a decay in [0, 1) (0 = off; 0.99 averages about the last 100 steps)")
    check_range(cfg, "momentum", 0, 1, "a number in [0, 1) (sgd, rmsprop, muon)")
    check_range(cfg, "weight_decay", 0, None, "0 or more")
    check_range(cfg, "l1", 0, None, "0 or more")
    check_range(cfg, "label_smoothing", 0, 1, "a number in [0, 1)")
    check_range(cfg, "gamma", 0, None, "a positive number (the step and plateau schedulers' decay factor)",
                low_open=True)
    check_range(cfg, "resize_until", 0, 1, "a fraction of the run in (0, 1] (turn resizing off with --resize-from 0)",
                low_open=True, high_closed=True)
    if cfg["resize_from"] != 0 and not 8 <= cfg["resize_from"] < IMAGE_SIZE:
        raise UserError(f"--resize-from must be 0 (off) or a size from 8 to {IMAGE_SIZE - 1} px, "
                        f"got {cfg['resize_from']}")
    model_from_config(cfg)  # unknown model options fail here, before a run directory is made
