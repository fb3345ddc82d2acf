"""``metric train``: triplet-loss training of the embedding net, with the run conventions of ``classify train``.

One batch = PML ``MPerClassSampler`` indices (``m`` items of each of ``batch_size / m`` classes), gathered from the
in-memory uint8 images, augmented whole, embedded (forward under autocast, unit vectors in fp32), triplets mined
by the chosen PML miner, PML ``TripletMarginLoss`` on them, AdamW step, cosine learning rate per batch. The trunk
can stay frozen (weights and BatchNorm statistics) for the first epochs, so the random projection head does not
send large gradients into the classifier's trained filters.

Under ``torchrun`` (see ``fashionkit.distributed``) the processes train one model data-parallel: every rank draws
the same global batch of ``--batch-size`` (augmented whole, so the draw is the single-process one), embeds its
``1/world`` share (every ``world``-th item: the sampler lists a batch class by class, so a contiguous slice would
hold half the classes and BatchNorm would normalise each rank over other classes than the batch's), and PML's
``DistributedMinerWrapper`` / ``DistributedLossWrapper`` gather the embeddings of all ranks, so triplets are mined
over the global batch and a negative can come from another rank's share; DDP sums the gradients. With
deterministic miners (batch-hard, hard, semihard) and no BatchNorm in training mode this is the single-process step
(test: 2 gloo processes = 1 process); BatchNorm layers that train normalise per process, over a share with every
class of the batch. Rank 0 owns the run directory, validates, writes every file and prints.

After each epoch: precision@1 / R-precision / MAP@R of the validation items among themselves, one row of
``metrics.csv`` (with the number of mined triplets and of batches that had none), ``last.pt`` (enough to resume)
and, when the monitored figure improved, ``best.pt``. At the end the best net and the classifier's own
penultimate features are evaluated on the test items of the hard classes against the train+val reference set,
and a before/after t-SNE plot is drawn.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fashionkit import distributed, interrupt
from fashionkit.config import check_range, resolve
from fashionkit.device import amp_dtype, autocast, keep_freed_memory, precision_name, select_device
from fashionkit.errors import UserError
from fashionkit.metric.defaults import TRAIN_OPTIONS
from fashionkit.metric.model import embedder_from_classifier, load_state, save_embedder
from fashionkit.runs import MetricsCSV, atomic_write_json, fit_run, open_run, resume_point, start_run


def rank_share(rank: int, world: int) -> slice:
    """The items of a global batch that ``rank`` of ``world`` processes embeds: every ``world``-th one. A batch of
    ``MPerClassSampler`` lists its classes one after the other, so each rank's share then holds all of them in equal
    numbers, as the whole batch does (its BatchNorm statistics stay those of a batch)."""
    return slice(rank, None, world)


class NoTriplets(Exception):
    pass


class NonFiniteLoss(Exception):
    pass


def parse_hard_classes(text) -> list[int]:
    from fashionkit.data import parse_classes

    return parse_classes(text, min_count=2)


def run_classes(cfg: dict) -> list[int]:
    """The classes the run trains, validates and indexes on."""
    return list(range(10)) if cfg["all_classes"] else parse_hard_classes(cfg["hard_classes"])


@contextlib.contextmanager
def pml_numpy_seed(seed: int):
    """PML's samplers draw from ``common_functions.NUMPY_RANDOM`` (numpy's global state by default); a seeded
    generator per epoch makes a resumed run draw the same batches as an uninterrupted one."""
    from pytorch_metric_learning.utils import common_functions as c_f

    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        yield
    finally:
        c_f.NUMPY_RANDOM = saved


class MetricTrainer:
    """Holds the state of one metric run; ``fit()`` trains it to the end."""

    def __init__(self, cfg: dict, run: Path, resume: dict | None = None):
        from fashionkit.data import load_split
        from fashionkit.data.augment import build_augment
        from fashionkit.metric.data import Split, classify_split, training_indices
        from fashionkit.metric.mining import build_loss, build_miner

        self.cfg, self.run = cfg, run
        self.main, self.world, self.rank = distributed.is_main(), distributed.world_size(), distributed.rank()
        keep_freed_memory()  # as classify train: the steps' and embeddings' blocks reused, not faulted in again
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self.device = distributed.init(select_device(cfg["device"]))
        self.amp = amp_dtype(self.device, cfg["amp"])
        self.augment = build_augment(cfg["augment"])
        self.classes, self.hard = run_classes(cfg), parse_hard_classes(cfg["hard_classes"])
        self.source = Path(cfg["from"]) if cfg["from"] else None
        self.split = classify_split(self.source) if self.source else Split(cfg["val_size"], cfg["seed"])

        self.images, self.labels = load_split("train", cfg["data_dir"])
        self.train_idx, self.val_idx = training_indices(self.labels, self.split, self.classes, cfg["subset"])
        self.steps = cfg["steps_per_epoch"] or max(1, len(self.train_idx) // cfg["batch_size"])

        self.model = self.initial_model().to(self.device)
        trunk = list(self.model.trunk.parameters())
        trunk_ids = {id(p) for p in trunk}
        head = [p for p in self.model.parameters() if id(p) not in trunk_ids]
        trunk_lr = cfg["lr"] * cfg["trunk_lr_scale"]
        groups = [{"name": "trunk", "params": _decayed(trunk), "lr": trunk_lr},
                  {"name": "trunk", "params": _decayed(trunk, False), "lr": trunk_lr, "weight_decay": 0.0},
                  {"name": "head", "params": _decayed(head)},
                  {"name": "head", "params": _decayed(head, False), "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["lr"],
                                           weight_decay=cfg["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg["epochs"] * self.steps)
        self.miner, self.loss_fn = build_miner(cfg), build_loss(cfg)
        if distributed.active():
            from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

            # mine and compute the loss over the embeddings of every rank's slice; the loss is scaled by the
            # world size, so DDP's averaging of the gradients leaves their sum
            self.miner, self.loss_fn = DistributedMinerWrapper(self.miner), DistributedLossWrapper(self.loss_fn)
        # frozen epochs leave the trunk without gradients: DDP must not wait for them
        self.forward = distributed.wrap(self.model, self.device, find_unused_parameters=cfg["freeze_epochs"] > 0)

        self.epoch, self.best, self.best_epoch = 0, None, 0
        if resume is not None:
            load_state(self.model, resume)
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.epoch, self.best, self.best_epoch = resume["epoch"], resume["best"], resume["best_epoch"]
        self.metrics = MetricsCSV(run / "metrics.csv", keep_until=self.epoch if self.main else None)

    def initial_model(self):
        """The embedding net before training: the classify run's trunk (or a random one) and a seeded head, so the
        same seed always starts from the same weights (the "before" of a scratch run is rebuilt this way)."""
        from fashionkit.classify.checkpoint import load_classifier
        from fashionkit.classify.models import create_model

        cfg = self.cfg
        if self.source is not None:
            classifier, _ = load_classifier(self.source)
            torch.manual_seed(cfg["seed"])
        else:
            torch.manual_seed(cfg["seed"])
            classifier = create_model(cfg["model"])
        return embedder_from_classifier(classifier, cfg["dim"], cfg["head_hidden"])

    # -- one epoch ----------------------------------------------------------------------------------------

    def frozen(self) -> bool:
        return self.epoch < self.cfg["freeze_epochs"]

    def batches(self):
        from pytorch_metric_learning.samplers import MPerClassSampler

        from fashionkit.data.loader import normalize, to_float

        cfg, epoch_seed = self.cfg, self.cfg["seed"] * 100_003 + self.epoch
        g = torch.Generator().manual_seed(epoch_seed + 7)
        # a fresh sampler each epoch: MPerClassSampler shuffles its list of classes in place, so one kept across
        # epochs would carry state that a resumed run does not have
        sampler = MPerClassSampler(self.labels[self.train_idx], cfg["m_per_class"], cfg["batch_size"],
                                   length_before_new_iter=self.steps * cfg["batch_size"])
        with pml_numpy_seed(epoch_seed):
            order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        positions = torch.as_tensor(self.train_idx, dtype=torch.long)[order]
        bs = cfg["batch_size"]
        part = rank_share(self.rank, self.world)
        for start in range(0, len(positions) - bs + 1, bs):
            idx = positions[start:start + bs]
            x = to_float(self.images[idx])
            if self.augment is not None:
                x = self.augment(x, g)  # the whole global batch, so each item gets its single-process draw
            yield normalize(x[part]).to(self.device), self.labels[idx[part]].to(self.device)

    def train_epoch(self) -> dict:
        from tqdm import tqdm

        from fashionkit.metric.mining import mine

        cfg, frozen = self.cfg, self.frozen()
        torch.manual_seed(cfg["seed"] * 100_003 + self.epoch)  # miners and dropout draw from torch's global RNG
        self.model.train()
        self.model.trunk.requires_grad_(not frozen)
        if frozen:
            self.model.trunk.eval()  # frozen includes BatchNorm running statistics
        total_loss, triplets, trained, empty, seen, start = 0.0, 0, 0, 0, 0, time.perf_counter()
        bar = tqdm(self.batches(), total=self.steps, desc=f"epoch {self.epoch + 1}/{cfg['epochs']}", leave=False,
                   dynamic_ncols=True, disable=None if self.main else True)
        for x, y in bar:
            interrupt.check()  # a Ctrl-C that a finaliser swallowed
            with autocast(self.device, self.amp):
                z = self.forward(x)  # fp32 unit vectors; miner and loss run outside autocast
            indices, n = mine(self.miner, z, y)  # under torchrun: over the global batch, the same on every rank
            seen += len(y)
            if n == 0:
                empty += 1  # PML's loss would be 0: nothing to learn from this batch
            else:
                loss = self.loss_fn(z, y, indices)
                if not torch.isfinite(loss):  # the global batch's loss: every rank stops together
                    raise NonFiniteLoss(f"loss became {loss.item() / self.world} in epoch {self.epoch + 1}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total_loss += loss.item() / self.world  # DistributedLossWrapper scaled it by the world size
                triplets += n
                trained += 1
            with warnings.catch_warnings():
                # the schedule follows batches, empty ones included, so it may step before the first update
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            bar.set_postfix(loss=f"{total_loss / max(trained, 1):.4f}", triplets=triplets, empty=empty)
        if triplets == 0:
            raise NoTriplets(self.no_triplets_message(empty))
        seconds = time.perf_counter() - start
        seen = int(distributed.all_sum([float(seen)], self.device)[0])  # images of all ranks
        return {"train_loss": total_loss / trained, "triplets": triplets, "triplets_per_batch": triplets / trained,
                "empty_batches": empty, "frozen": int(frozen), "seconds": seconds, "img_per_s": seen / seconds}

    def no_triplets_message(self, batches: int) -> str:
        cfg = self.cfg
        if cfg["miner"] == "distance-weighted":
            hint = (f"the distance-weighted miner found no negative nearer than --nonzero-loss-cutoff "
                    f"{cfg['nonzero_loss_cutoff']} with a usable weight (at --dim {cfg['dim']}); raise the cutoff "
                    f"(at most 2), lower --dim, or try --miner semihard")
        else:
            hint = f"the {cfg['miner']} miner found no triplet violating --margin {cfg['margin']}; raise --margin"
        return f"epoch {self.epoch + 1} mined no triplets in {batches} batches, so it trained on nothing: {hint}"

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation figures; under torchrun rank 0 measures them (on its plain model) and shares them, so every
        rank takes the same decisions."""
        from fashionkit.metric.data import embed
        from fashionkit.metric.evaluate import retrieval_metrics

        row = None
        if self.main:
            self.model.eval()
            emb = embed(self.model, self.images[self.val_idx], self.device, self.amp)
            row = {f"val_{k}": v for k, v in retrieval_metrics(emb, self.labels[self.val_idx]).items()}
        return distributed.share(row)

    def head_lr(self) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g["name"] == "head")

    def improved(self, row: dict) -> bool:
        return self.best is None or row[self.cfg["monitor"]] > self.best

    # -- the loop -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        from fashionkit.data import CLASSES

        cfg = self.cfg
        where = (f"trunk of classify run {self.source} ({self.model.source['name']})" if self.source else
                 f"from scratch (--from none): the {cfg['model']} trunk starts from random weights")
        classes = "all ten classes" if cfg["all_classes"] else ", ".join(CLASSES[c] for c in self.classes)
        return (f"run {self.run}: {cfg['dim']}-d embedding, {where}; {classes}; {cfg['miner']} miner; "
                f"{len(self.train_idx)} train / {len(self.val_idx)} val items, {self.steps} batches of "
                f"{cfg['batch_size']} x {cfg['epochs']} epochs on {self.device} ({precision_name(self.amp)})"
                + (f", {self.world} processes x {cfg['batch_size'] // self.world} of each batch"
                   if self.world > 1 else ""))

    def fit(self) -> dict:
        if self.main:
            print(self.describe(), flush=True)
        return fit_run(self, "metric", plot_curves, self.test if self.cfg["eval"] else None)

    def loop(self) -> str:
        """Train epoch after epoch; returns how it ended (always finished: metric train has no early stopping)."""
        cfg, weights = self.cfg, self.run / "weights"
        while self.epoch < cfg["epochs"]:
            try:
                row = {"epoch": self.epoch + 1, **self.train_epoch(), **self.validate(), "lr": self.head_lr()}
            except NoTriplets as e:
                if self.main:
                    self.write_summary("no_triplets")
                raise UserError(str(e)) from None
            except NonFiniteLoss as e:
                if self.main:
                    self.write_summary("nan")
                kept = f"the last good checkpoint is {weights / 'last.pt'}" if self.epoch else "no epoch finished"
                raise UserError(f"{e}: training diverged ({kept}); lower --lr or use --amp off, then retrain") from None
            self.epoch += 1
            extra = dict(epoch=self.epoch, metrics=row, config=cfg, classes=self.classes, hard_classes=self.hard,
                         split=self.split.as_dict())
            with interrupt.deferred():  # best.pt, the metrics row and last.pt: all of them or none
                if self.improved(row):
                    self.best, self.best_epoch = row[cfg["monitor"]], self.epoch
                    if self.main:
                        save_embedder(weights / "best.pt", self.model, **extra)
                if self.main:
                    self.metrics.append(row)
                    save_embedder(weights / "last.pt", self.model, **extra, optimizer=self.optimizer.state_dict(),
                                  scheduler=self.scheduler.state_dict(), best=self.best, best_epoch=self.best_epoch)
            if not self.main:
                continue
            print(f"epoch {self.epoch}/{cfg['epochs']}  loss {row['train_loss']:.4f}  triplets {row['triplets']} "
                  f"({row['empty_batches']} empty batches){'  trunk frozen' if row['frozen'] else ''}  "
                  f"val P@1 {row['val_precision_at_1']:.4f} MAP@R {row['val_map_at_r']:.4f}  "
                  f"{row['seconds']:.1f}s {row['img_per_s']:.0f} img/s" + ("  *" if self.best_epoch == self.epoch
                                                                            else ""), flush=True)
        return "finished"

    def test(self) -> dict:
        """precision@1, R-precision, MAP@R of the test items of the hard classes against train+val, for the
        classifier's features (before) and the trained net (after); and the t-SNE plot of both."""
        from fashionkit.classify.checkpoint import load_classifier
        from fashionkit.data import load_split
        from fashionkit.metric.data import embed, in_classes, stratified
        from fashionkit.metric.evaluate import plot_tsne, retrieval_metrics
        from fashionkit.metric.model import load_embedder

        cfg = self.cfg
        test_images, test_labels = load_split("test", cfg["data_dir"])
        ref_idx = stratified(in_classes(np.arange(len(self.labels)), self.labels, self.classes), self.labels,
                             cfg["eval_subset"], cfg["seed"])
        query_idx = stratified(in_classes(np.arange(len(test_labels)), test_labels, self.hard), test_labels,
                               cfg["eval_subset"], cfg["seed"])
        after, ckpt = load_embedder(self.run, self.device)
        if self.source is not None:
            classifier, _ = load_classifier(self.source, self.device)
            before, before_name = classifier.features, "classifier features"
        else:
            before, before_name = self.initial_model().to(self.device).eval(), "untrained net"
        ref_labels, query_labels = self.labels[ref_idx], test_labels[query_idx]
        result, embedded = {}, {}
        for key, fn in (("before", before), ("after", after)):
            ref = embed(fn, self.images[ref_idx], self.device, self.amp)
            query = embed(fn, test_images[query_idx], self.device, self.amp)
            result[key] = retrieval_metrics(query, query_labels, ref, ref_labels)
            embedded[key] = query
        result["gain"] = {k: result["after"][k] - result["before"][k] for k in result["after"]}
        print(f"test ({len(query_idx)} hard-class items vs {len(ref_idx)} train+val items, best epoch "
              f"{ckpt['epoch']}):")
        for key, name in (("before", before_name), ("after", "metric embedding")):
            r = result[key]
            print(f"  {name:<20} P@1 {r['precision_at_1']:.4f}  R-precision {r['r_precision']:.4f}  "
                  f"MAP@R {r['map_at_r']:.4f}")
        if cfg["plot_points"]:
            sel = torch.as_tensor(np.searchsorted(query_idx, stratified(query_idx, test_labels, cfg["plot_points"],
                                                                        cfg["seed"])))
            plot_tsne([(f"before: {before_name}", embedded["before"][sel]),
                       (f"after: metric embedding (epoch {ckpt['epoch']})", embedded["after"][sel])],
                      query_labels[sel], self.run / "tsne.png", cfg["seed"],
                      title=f"t-SNE of {len(sel)} test items of the hard classes")
        return {"test": {**result, "before_is": before_name, "queries": len(query_idx), "references": len(ref_idx)}}

    def write_summary(self, status: str, **extra) -> dict:
        rows = self.metrics.rows()
        summary = {
            "status": status, "from": str(self.source) if self.source else None, "dim": self.cfg["dim"],
            "miner": self.cfg["miner"], "classes": self.classes, "hard_classes": self.hard,
            "epochs_done": self.epoch, "epochs": self.cfg["epochs"], "best_epoch": self.best_epoch,
            "best_" + self.cfg["monitor"]: self.best,
            "triplets_per_epoch": [int(r["triplets"]) for r in rows],
            "seconds_per_epoch": sum(float(r["seconds"]) for r in rows) / len(rows) if rows else None,
            "train": len(self.train_idx), "val": len(self.val_idx), "split": self.split.as_dict(),
            "device": str(self.device), "precision": precision_name(self.amp), "processes": self.world,
        }
        summary.update(extra)
        atomic_write_json(self.run / "summary.json", summary)
        return summary


def _decayed(params: list, decayed: bool = True) -> list:
    """Weights get weight decay; biases and norm scales (1-D) do not."""
    return [p for p in params if (p.ndim > 1) == decayed]


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    from fashionkit.plots import pyplot, save

    if not rows:
        return
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(epochs, [float(r["train_loss"]) for r in rows])
    axes[0].set_ylabel("triplet loss")
    axes[1].plot(epochs, [int(r["triplets"]) for r in rows])
    axes[1].set_ylabel("mined triplets")
    for key, label in (("val_precision_at_1", "P@1"), ("val_r_precision", "R-precision"), ("val_map_at_r", "MAP@R")):
        axes[2].plot(epochs, [float(r[key]) for r in rows], label=label)
    axes[2].set_ylabel("validation")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


# ---- entry points -------------------------------------------------------------------------------------------

def train(options: dict | None = None, config: str | Path | dict | None = None) -> tuple[Path, dict]:
    """Start a new metric run from options over an optional config; returns ``(run_dir, summary)``."""
    cfg = resolve(TRAIN_OPTIONS, options or {}, config)
    if isinstance(cfg["from"], str) and cfg["from"].lower() == "none":
        cfg["from"] = None  # --from none: from scratch, said explicitly
    validate(cfg)
    distributed.init(select_device(cfg["device"]))  # under torchrun: rank 0 makes the run, the others join it
    if distributed.is_main():
        run, trainer = start_run("metric", cfg, lambda run: MetricTrainer(cfg, distributed.share(run)),
                                 source=cfg["from"])
    else:
        run = distributed.share(None)
        trainer = MetricTrainer(cfg, run)
    return run, trainer.fit()


def resume(run: str | Path) -> tuple[Path, dict]:
    """Continue an interrupted metric run from its ``last.pt`` to the planned epoch count."""
    from fashionkit.metric.model import read_embedder_checkpoint

    run, ckpt, config = resume_point(run, "metric", read_embedder_checkpoint)
    cfg = resolve(TRAIN_OPTIONS, {}, config)
    validate(cfg)
    if distributed.is_main():
        print(f"resuming {run} after epoch {ckpt['epoch']}")
    return run, MetricTrainer(cfg, run, resume=ckpt).fit()


def validate(cfg: dict) -> None:
    """Every option mistake as a one-line UserError before a run directory is made."""
    from fashionkit.classify.checkpoint import weights_path
    from fashionkit.classify.models import MODELS

    validate_options(cfg)
    if cfg["from"]:
        weights_path(open_run(cfg["from"], "classify", what="--from classify run"))
    elif cfg["model"] not in MODELS:
        raise UserError(f"unknown model {cfg['model']!r}; choose one of: {', '.join(MODELS)}")


def validate_options(cfg: dict) -> None:
    """The option mistakes that do not depend on what the run builds on (``--from``): checked before ``metric
    train`` chooses and names a classify run to build on, so that a mistake is the one line it prints."""
    from fashionkit.data.augment import build_augment
    from fashionkit.metric.mining import build_miner

    classes = run_classes(cfg)
    parse_hard_classes(cfg["hard_classes"])
    build_augment(cfg["augment"])
    build_miner(cfg)
    check_range(cfg, "lr", 0, None, "a positive number", low_open=True)
    check_range(cfg, "margin", 0, None, "a positive number", low_open=True)
    check_range(cfg, "trunk_lr_scale", 0, None, "0 or more")
    check_range(cfg, "weight_decay", 0, None, "0 or more")
    bs, m = cfg["batch_size"], cfg["m_per_class"]
    if bs % m:
        raise UserError(f"--batch-size {bs} must be a multiple of --m-per-class {m} (MPerClassSampler)")
    if bs // m < 2:
        raise UserError(f"--batch-size {bs} holds only one class of --m-per-class {m}: triplets need two classes "
                        f"per batch; use --batch-size >= {2 * m}")
    world = distributed.world_size()
    if bs % world:
        raise UserError(f"--batch-size {bs} (the global batch) does not split evenly over {world} processes; "
                        f"use a multiple of {world}")
    if bs // m > len(classes):
        raise UserError(f"--batch-size {bs} / --m-per-class {m} = {bs // m} classes per batch, but the run has only "
                        f"{len(classes)}; use --m-per-class {-(-bs // len(classes))} or a smaller --batch-size")
