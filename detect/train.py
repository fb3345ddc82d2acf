"""``detect train``: fine-tune a YOLO detector whose backbone starts from a classify run, with ultralytics' trainer.

Our run directory ``<runs>/detect/<name>/`` holds ``config.yaml``, ``run.json``, ``model.yaml`` (the detector's
ultralytics YAML), ``summary.json`` and, in ``ultralytics/``, the ultralytics run itself: ``weights/best.pt`` and
``last.pt``, ``results.csv``, ``args.yaml`` and its plots. ``test/`` holds the test-split evaluation of best.pt,
``test/boxes/`` the same with classes ignored, and ``test/read/`` the same with each box's class read by the run's
crop reader (``reader/``, made after training).
The trainer does the loss, augmentation, EMA, metrics, plots, early stopping and checkpoints; we only hand it the
prepared model, freeze the copied backbone for the first epochs, and measure the training speed.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fashionkit.config import resolve, save_yaml
from fashionkit.detect.defaults import TRAIN_OPTIONS
from fashionkit.errors import UserError
from fashionkit.runs import atomic_write_json, new_run_dir, runs_root, write_run_info

ULTRALYTICS_DIR = "ultralytics"  # the ultralytics run inside ours


def data_yaml(data: str | None) -> Path:
    """``--data``: a make-data directory or its data.yaml (default: make-data's default output)."""
    path = Path(data) if data else runs_root() / "detect" / "data"
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        hint = "" if data else " (no --data given)"
        raise UserError(f"dataset not found: {path}{hint}; make one with `detect make-data --out DIR` and pass "
                        f"--data DIR")
    return path


def dataset_info(path: Path) -> dict:
    from fashionkit.config import load_yaml

    info = load_yaml(path)
    names = info.get("names")
    if not names or "train" not in info or "val" not in info:
        raise UserError(f"{path} is not a detection dataset YAML (needs train, val and names); make one with "
                        f"`detect make-data`")
    root = dataset_root(path, info)
    for split in ("train", "val"):
        if not (root / info[split]).exists():
            raise UserError(f"{path}: the {split} images {root / info[split]} are missing; re-run `detect make-data`")
    return info


def dataset_root(path: Path, info: dict) -> Path:
    """The folder a data.yaml's split paths are relative to: its ``path``, itself relative to the YAML's folder."""
    root = Path(info.get("path") or path.parent)
    return root if root.is_absolute() else path.parent / root


def check_options(cfg: dict) -> None:
    if not cfg["from"]:
        raise UserError("--from is required: a classify run directory, none, or a model YAML such as yolov8n.yaml")
    if cfg["imgsz"] < 64 or cfg["imgsz"] % 32:
        raise UserError(f"--imgsz {cfg['imgsz']}: use a multiple of 32, at least 64 (e.g. 320)")
    if not 0 < cfg["fraction"] <= 1:
        raise UserError(f"--fraction {cfg['fraction']}: give a fraction in (0, 1]")


def gpu_list(name: str) -> str | None:
    """``--device 0,1,...``: the GPUs of ultralytics' multi-GPU (DDP) mode, checked against this machine; None for
    a single device."""
    text = str(name).replace(" ", "")
    if "," not in text:
        return None
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--device {name}: several GPUs are given as CUDA indices, e.g. --device 0,1") from None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2 or max(ids) >= count or len(set(ids)) != len(ids):
        have = "no CUDA GPU" if count == 0 else f"{count} CUDA GPU{'s' if count > 1 else ''} (0-{count - 1})"
        raise UserError(f"--device {name} trains on {len(ids)} GPUs (ultralytics DDP), but this machine has {have}; "
                        f"use --device cpu, or one GPU with --device 0")
    return ",".join(map(str, ids))


INITIAL_MODEL = "initial.pt"  # the prepared detector every DDP worker starts from


def save_initial_model(run: Path, model) -> Path:
    """Write the prepared detector (backbone copied from the classifier) as an ultralytics checkpoint,
    ``RUN/initial.pt``, in float32 so no weight is rounded: with several GPUs, ultralytics starts new processes
    that rebuild the trainer from its arguments, and ``model=RUN/initial.pt`` makes every one of them load these
    weights (through ``TransferTrainer.get_model``) instead of a random init from the YAML."""
    import copy

    import torch

    from fashionkit.runs import atomic_save

    state = {"model": copy.deepcopy(model).float().cpu(), "train_args": {}, "fashionkit": "initial detector"}
    return atomic_save(lambda tmp: torch.save(state, tmp), run / INITIAL_MODEL)


def ultralytics_device(name: str) -> str:
    from fashionkit.device import select_device

    device = select_device(name)
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type


def keep_threads(owner, threads: int) -> int:
    """Make torch use ``threads`` CPU threads (0: every core this process may use) in ultralytics' train, val and
    predict; returns the number in use.

    ultralytics' device selection sets torch to ``cpu_count - 1`` threads (1 on a 2-core machine) every time a
    trainer, validator or predictor starts, to leave a core for data-loader workers; but on the CPU it loads data in
    the main process (workers=0), so that core sits idle. On a quiet 2-core Zen 3, `detect train` ran at 4.07
    training images/s with 1 thread and 7.21 with 2. Callbacks that run after each of those selections put our
    number back. On a busy shared machine ``--threads 1`` can be the better choice: OpenMP threads wait at barriers
    for a descheduled sibling."""
    import torch

    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def apply(_=None) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    for event in ("on_pretrain_routine_end", "on_train_start", "on_val_start", "on_predict_start"):
        owner.add_callback(event, apply)
    apply()
    return threads


def extra_args(text: str) -> dict[str, Any]:
    from fashionkit.classify.train import parse_model_opts

    extra = parse_model_opts(text) if text else {}
    reserved = {"model", "data", "project", "name", "exist_ok", "save_dir", "resume"}
    bad = sorted(set(extra) & reserved)
    if bad:
        raise UserError(f"--extra cannot set {', '.join(bad)}: fashionkit manages them")
    return extra


def train(options: dict | None = None, config: str | Path | dict | None = None) -> tuple[Path, dict]:
    """Train a detector from options (flags) over an optional config; returns ``(run_dir, summary)``."""
    from fashionkit.detect.model import gflops, model_source, use_ultralytics

    cfg = resolve(TRAIN_OPTIONS, options or {}, config)
    check_options(cfg)
    gpus = gpu_list(cfg["device"])  # before anything slow: a CPU-only machine hears it at once
    data = data_yaml(cfg["data"])
    info = dataset_info(data)
    nc = 1 if cfg["one_class"] else len(info["names"])
    extra = extra_args(cfg["extra"])
    device = gpus or ultralytics_device(cfg["device"])
    use_ultralytics()
    source = model_source(cfg["from"], nc, cfg["stem"], cfg["width"], cfg["classifier_model"])  # errors before mkdir
    run = new_run_dir("detect", cfg["name"], cfg["runs_dir"])
    save_yaml(cfg, run / "config.yaml")
    write_run_info(run, "detect", "train", source=source.kind, classifier_run=source.classifier_run)
    save_yaml(source.yaml, run / "model.yaml")

    model = source.model
    frozen = frozen_layers(source)
    freeze_epochs = cfg["freeze_epochs"] if frozen else 0
    # several GPUs: ultralytics' DDP workers rebuild the trainer from these arguments, so they get the prepared model
    # as a file; one process gets it as the module itself
    initial = save_initial_model(run, model) if gpus else run / "model.yaml"
    args = {
        "model": str(initial), "data": str(data), "epochs": cfg["epochs"], "imgsz": cfg["imgsz"],
        "batch": cfg["batch"], "device": device, "workers": cfg["workers"], "patience": cfg["patience"],
        "close_mosaic": cfg["close_mosaic"], "warmup_epochs": cfg["warmup_epochs"], "optimizer": cfg["optimizer"],
        "fraction": cfg["fraction"],
        "cache": "ram" if cfg["cache"] else False, "plots": cfg["plots"], "seed": cfg["seed"],
        # absolute project + exist_ok: ultralytics writes exactly into RUN/ultralytics (a relative project would
        # land under its own runs_dir setting, e.g. runs/detect/runs/...)
        "project": str(run.resolve()), "name": ULTRALYTICS_DIR, "exist_ok": True, "verbose": True,
        **({"time": cfg["minutes"] / 60} if cfg["minutes"] else {}),
        **({"lr0": cfg["lr0"]} if cfg["lr0"] else {}),
        **({"freeze": frozen} if freeze_epochs else {}),
        **({"single_cls": True} if cfg["one_class"] else {}),  # ultralytics names its one class "item"
        **extra,
    }
    try:
        trainer = make_trainer(args, model, frozen if freeze_epochs else [], freeze_epochs)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # nothing trained yet: leave no half-made run behind
        raise
    threads = keep_threads(trainer, cfg["threads"])
    params = sum(p.numel() for p in model.parameters())
    flops = gflops(model, (cfg["imgsz"], cfg["imgsz"]))
    print(f"run {run}: {source.description}; {params:,} parameters, {flops:.2f} GFLOPs at {cfg['imgsz']}x"
          f"{cfg['imgsz']}; data {data}", flush=True)
    base = {"source": source.kind, "from": cfg["from"], "description": source.description, "params": params,
            "gflops": round(flops, 3), "imgsz": cfg["imgsz"], "data": str(data), "device": device,
            "threads": threads if device == "cpu" else None}
    try:
        trainer.train()
    except KeyboardInterrupt:
        write_summary(run, trainer, base, "interrupted")
        print(f"\ninterrupted: checkpoints so far are in {trainer.wdir}", file=sys.stderr)
        raise
    summary = write_summary(run, trainer, base, end_status(trainer))
    if cfg["test"] and "test" in info and Path(trainer.best).is_file():
        summary["test"] = evaluate_with_boxes(trainer.best, data, "test", cfg["imgsz"], cfg["batch"], device,
                                              run / "test", cfg["plots"], cfg["threads"], cfg["one_class"])
        atomic_write_json(run / "summary.json", summary)
    if cfg["reader_epochs"] and source.classifier_run and summary["best"]:
        from fashionkit.detect.defaults import READER_OPTIONS
        from fashionkit.detect.reader import format_summary, train_reader

        reader_cfg = resolve(READER_OPTIONS, {"epochs": cfg["reader_epochs"], "from": source.classifier_run,
                                              "data": str(data),
                                              "seed": cfg["seed"], "threads": cfg["threads"]})
        try:
            reader, reader_summary = train_reader(run, reader_cfg, made_by="detect train")
        except UserError as e:  # the detector is made and kept; only the reader is missing
            print(f"note: no crop reader: {e}; `detect video --track` reads crops with the classifier itself",
                  file=sys.stderr)
            return run, summary
        summary["reader"] = {"dir": str(reader), "accuracy_tta": reader_summary["accuracy_tta"],
                             "seconds": reader_summary["seconds"]["total"]}
        atomic_write_json(run / "summary.json", summary)
        print(format_summary(reader, reader_summary), flush=True)
        if "test" in summary:  # the test mAP again, each box's class re-read by the new reader
            import torch

            from fashionkit.detect.defaults import EVAL_OPTIONS
            from fashionkit.detect.reader import evaluate_read
            from fashionkit.detect.tracks import open_classifier

            model = open_classifier(reader, torch.device("cpu"))[0]
            summary["test"]["read"] = evaluate_read(trainer.best, model, reader, data, "test", cfg["imgsz"],
                                                    cfg["batch"], device, run / "test" / "read",
                                                    EVAL_OPTIONS["vote_weight"].default, cfg["plots"], cfg["threads"])
            atomic_write_json(run / "summary.json", summary)
    return run, summary


def frozen_layers(source) -> list[int]:
    """The backbone layers --freeze-epochs freezes: the classifier's trunk, or with --from none its random-init
    twin. Both variants get the same schedule so that the benchmark's comparison differs in the weights only: a
    frozen first epoch is also a fast one (280 s against 506 s trained, quiet Zen 3), which decided much of
    the 15-minute figures when only one variant had it. A stock YAML has no such trunk, and a trained detector (--from
    a detect run) is fine-tuned whole from the first step."""
    from fashionkit.detect.model import YAML_KEY

    return list(range(source.yaml[YAML_KEY]["trunk_end"] + 1)) if source.kind in ("classifier", "none") else []


def transfer_trainer_class():
    """ultralytics' DetectionTrainer, except that a model it builds from a checkpoint (``RUN/initial.pt``, in a DDP
    worker) gets back the BatchNorm eps of the copied trunk, which DetectionModel's init resets to 1e-3 and a
    state dict does not carry. Defined at module level so DDP workers, which import the trainer's class by name,
    get it too."""
    if not _TRANSFER_TRAINER:
        from ultralytics.models.yolo.detect import DetectionTrainer

        from fashionkit.detect.model import YAML_KEY, conv_bn

        class _TransferTrainer(DetectionTrainer):
            def get_model(self, cfg=None, weights=None, verbose=True):
                model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
                info = model.yaml.get(YAML_KEY) if isinstance(model.yaml, dict) else None
                if info:
                    for index, eps in zip(info["transfer"], info["bn_eps"]):
                        conv_bn(model, index)[1].eps = eps
                return model

        _TransferTrainer.__name__ = _TransferTrainer.__qualname__ = "TransferTrainer"
        _TransferTrainer.__module__ = __name__
        _TRANSFER_TRAINER.append(_TransferTrainer)
    return _TRANSFER_TRAINER[0]


_TRANSFER_TRAINER: list = []  # made on first use (importing ultralytics is slow): transfer_trainer_class()


def __getattr__(name: str):
    if name == "TransferTrainer":  # `from fashionkit.detect.train import TransferTrainer` in a DDP worker
        return transfer_trainer_class()
    raise AttributeError(name)


def make_trainer(args: dict, model, frozen: list[int], freeze_epochs: int):
    """An ultralytics DetectionTrainer that trains ``model`` (already built and initialised), with the layers
    ``frozen`` frozen for the first ``freeze_epochs`` epochs, and a per-epoch training-speed record."""
    trainer = transfer_trainer_class()(overrides=args)
    trainer.model = model  # a ready nn.Module: setup_model() keeps it instead of building one from args.model
    trainer.fashionkit_speed = []  # (epoch, images, seconds) of each training epoch

    def epoch_start(tr) -> None:
        tr.fashionkit_t0 = time.perf_counter()
        tr.fashionkit_batches = 0
        if frozen and tr.epoch == freeze_epochs:
            names = tuple(f"model.{i}." for i in frozen)
            for name, p in tr.model.named_parameters():
                if name.startswith(names) and p.dtype.is_floating_point:
                    p.requires_grad_(True)
            # _model_train() keeps the BatchNorms of these names in eval mode: from now on they adapt too
            tr.freeze_layer_names = [n for n in tr.freeze_layer_names if n not in names]
            print(f"epoch {tr.epoch + 1}: unfreezing the backbone (layers 0-{frozen[-1]})", flush=True)

    def batch_end(tr) -> None:
        tr.fashionkit_batches += 1

    def epoch_end(tr) -> None:
        seconds = time.perf_counter() - tr.fashionkit_t0
        # batches, not the dataset size: --minutes cuts the last epoch short (the batch that hits the limit
        # breaks out before on_train_batch_end, so this undercounts that epoch by one batch at most)
        images = min(tr.fashionkit_batches * tr.batch_size, len(tr.train_loader.dataset))
        if not hasattr(tr, "fashionkit_speed"):  # a DDP worker's own trainer (its figures stay in the worker)
            tr.fashionkit_speed = []
        tr.fashionkit_speed.append((tr.epoch + 1, images, seconds))

    trainer.add_callback("on_train_epoch_start", epoch_start)
    trainer.add_callback("on_train_batch_end", batch_end)
    trainer.add_callback("on_train_epoch_end", epoch_end)
    return trainer


def end_status(trainer) -> str:
    """finished (all planned epochs), early_stopped (patience ran out) or time_limit (--minutes ran out)."""
    done, stopper = trainer.epoch + 1, trainer.stopper
    if done >= trainer.epochs:
        return "finished"
    return "early_stopped" if done - stopper.best_epoch >= stopper.patience else "time_limit"


def _box_metrics(metrics: dict | None) -> dict:
    names = {"metrics/precision(B)": "precision", "metrics/recall(B)": "recall", "metrics/mAP50(B)": "mAP50",
             "metrics/mAP50-95(B)": "mAP50-95"}
    return {short: round(float(metrics[key]), 5) for key, short in names.items() if metrics and key in metrics}


def write_summary(run: Path, trainer, base: dict, status: str) -> dict:
    speed = getattr(trainer, "fashionkit_speed", [])
    stopper = getattr(trainer, "stopper", None)
    images = sum(s[1] for s in speed)
    seconds = sum(s[2] for s in speed)
    best = Path(trainer.best)
    summary = {
        "status": status, **base,
        "epochs_done": len(speed), "epochs_planned": trainer.epochs,
        "best_epoch": getattr(stopper, "best_epoch", None),
        "best": str(best.relative_to(run.resolve())) if best.is_file() else None,
        "last": str(Path(trainer.last).relative_to(run.resolve())) if Path(trainer.last).is_file() else None,
        "val": _box_metrics(trainer.metrics),
        "train_images_per_s": round(images / seconds, 2) if seconds else None,
        "train_seconds": round(seconds, 3),  # 3 decimals: tiny test runs take under a second
        "epoch_seconds": [round(s[2], 1) for s in speed],
    }
    atomic_write_json(run / "summary.json", summary)
    return summary


def metric_dict(metrics, split: str) -> dict:
    """The figures of an ultralytics validation kept in summary.json and eval.json."""
    box = metrics.box
    names = metrics.names
    per_class = {names[int(c)]: round(float(box.maps[int(c)]), 5) for c in box.ap_class_index}
    return {"split": split, "images": int(getattr(metrics, "seen", 0) or 0) or None,
            "precision": round(float(box.mp), 5), "recall": round(float(box.mr), 5),
            "mAP50": round(float(box.map50), 5), "mAP50-95": round(float(box.map), 5),
            "mAP50-95_per_class": per_class}


def evaluate_with_boxes(weights: str | Path, data: str | Path, split: str, imgsz: int, batch: int, device: str,
                        out: Path, plots: bool, threads: int, one_class: bool) -> dict:
    """``evaluate`` with the detector's classes, and with classes ignored under ``boxes`` (plots in ``out/boxes``):
    what ``detect train`` and ``detect eval`` report. A one-class detector's own class is the boxes alone: scored
    once."""
    result = evaluate(weights, data, split, imgsz, batch, device, out, plots, threads, boxes_alone=one_class)
    result["boxes"] = dict(result) if one_class else evaluate(weights, data, split, imgsz, batch, device,
                                                              out / "boxes", plots, threads, boxes_alone=True)
    return result


def evaluate(weights: str | Path, data: str | Path, split: str, imgsz: int, batch: int, device: str, out: Path,
             plots: bool = True, threads: int = 0, boxes_alone: bool = False) -> dict:
    """mAP of a detector on a dataset split with ultralytics' validator; plots go to ``out``. ``boxes_alone``:
    classes ignored (ultralytics' ``single_cls``), so the score is the boxes' alone: set against the score with
    classes, it says whether finding the items or naming them holds a detector back."""
    from ultralytics import YOLO

    out = Path(out).resolve()
    model = YOLO(str(weights))
    keep_threads(model, threads)
    metrics = model.val(data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, single_cls=boxes_alone,
                        plots=plots, project=str(out.parent), name=out.name, exist_ok=True, verbose=False)
    result = metric_dict(metrics, split)
    if boxes_alone:
        del result["mAP50-95_per_class"]  # one class, named after the first: not a per-class figure
    print(f"{split}{', boxes alone (classes ignored)' if boxes_alone else ''}: mAP50 {result['mAP50']:.4f}  mAP50-95 "
          f"{result['mAP50-95']:.4f}  precision {result['precision']:.4f}  recall {result['recall']:.4f}", flush=True)
    return result
