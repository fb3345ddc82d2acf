"""Time to accuracy: the wall clock at which a `classify train` recipe's test accuracy first passes 92/93/94/95%.

    .venv/bin/python benchmarks/time_to_accuracy.py [--recipes default,previous,reference] [--isa avx2] [--quick]

Recipes, trained one after another in this one process on this one machine:

  default    `classify train` with no flags: the current default recipe
  previous   the default before it: vgg-small, 25 epochs, batch 128, flip + rotation ±5°, no TTA
  reference  a plain PyTorch loop in the style of torchvision's references/classification: a Dataset applying
             torchvision.transforms.v2 to one image at a time, a DataLoader with 2 workers, fp32, NCHW; the
             default recipe's net (whitened as `classify train` whitens it), optimizer, schedule, loss,
             augmentation and epochs, but none of its speed tricks: no progressive resizing, no TTA, no
             validation

At every epoch end the weights a user would get (last.pt: the averaged ones where the recipe averages) are scored
on the 10,000 test items, with flip TTA where the recipe uses it. That scoring is left off the clock; everything
else (loading the data, training, the recipe's own validation, checkpoints) is on it. The clock starts when the
recipe is called (after Python and torch are imported: about 2 s more from a shell).

--isa avx2 caps torch's kernels at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and
trains in fp32: on an AVX-512 CPU the nearest it gets to the 2-core AVX2-only CPU the targets name; it is still
another CPU, so say which one a figure came from (the JSON records the CPU's name, family, model and widest
vector unit).
--set KEY=VALUE (repeatable) changes an option of the default recipe (and of the reference, which follows it),
to time a variant: --set epochs=12 --set model_opts=width=1.5.
--score-from EPOCH scores the `classify train` recipes from that epoch on only: for a long recipe whose early
epochs cannot pass any threshold.
--quick trains each recipe 2 epochs on 2,000 items: a check that the script works, not a measurement.
Writes benchmarks/results/time_to_accuracy[-quick].json and .png (test accuracy against minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

THRESHOLDS = (0.92, 0.93, 0.94, 0.95)
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# the default of `classify train` before the time-to-accuracy recipe replaced it (every value it depends on)
PREVIOUS_DEFAULT = {"model": "vgg-small", "model_opts": "", "epochs": 25, "batch_size": 128, "lr": 0.1,
                    "augment": "flip-rotate", "ema": 0.0, "tta": False, "resize_from": 0, "label_smoothing": 0.1,
                    "weight_decay": 5e-4, "scheduler": "onecycle", "optimizer": "sgd"}


def cap_isa(isa: str) -> None:
    """--isa avx2: start this script again with torch's kernels capped at AVX2 (the caps are read when torch loads
    its kernels, so they cannot be set from inside a running process)."""
    if isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})


class Clock:
    """Wall clock of one recipe with the test scoring taken off it."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.paused


def test_accuracy(model, test, tta: bool) -> float:
    import torch

    from fashionkit.classify.train import evaluate_loader

    return evaluate_loader(model, test, torch.device("cpu"), None, tta)[1]


def engine_recipe(name: str, options: dict, args, test) -> dict:
    """Train through `classify train` itself; score last.pt on the test split at each epoch end."""
    from fashionkit.classify.checkpoint import load_classifier
    from fashionkit.classify.train import train

    curve, clock = [], Clock()

    def on_epoch_end(row: dict) -> None:
        if row["epoch"] < args.score_from:
            return
        seconds = clock.now()
        paused = time.perf_counter()
        model, _ = load_classifier(run / "weights" / "last.pt")
        acc = test_accuracy(model, test, cfg_tta)
        curve.append({"epoch": row["epoch"], "seconds": round(seconds, 2), "test_acc": acc,
                      "val_acc": row["val_acc"]})
        print(f"  {name} epoch {row['epoch']}: {seconds:.1f} s, test {acc:.4f}", flush=True)
        clock.paused += time.perf_counter() - paused

    opts = {**options, "name": name, "runs_dir": args.runs_dir, "test": False}
    if args.isa == "avx2":
        opts["amp"] = "off"
    if args.quick:
        opts.update(subset=2000, epochs=2)
    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.config import resolve

    cfg_tta = resolve(TRAIN_OPTIONS, opts)["tta"]
    run = Path(args.runs_dir) / "classify" / name  # runs_dir is fresh: the name is free
    clock = Clock()
    _, summary = train(opts, on_epoch_end=on_epoch_end)
    total = clock.now()
    return {"recipe": name, "options": opts, "tta": cfg_tta, "curve": curve, "seconds_total": round(total, 2),
            "precision": summary["precision"], "img_per_s": _mean_rate(run)}


def _mean_rate(run: Path) -> float:
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return round(sum(float(r["img_per_s"]) for r in rows) / len(rows), 1)


def reference_recipe(args, test) -> dict:
    """The default recipe as a plain loop (torchvision references style); same net and hyperparameters."""
    import torch
    from loader_bench import PerImage  # the per-image Dataset the loader and engine benchmarks compare against
    from torch import nn
    from torchvision.transforms import v2

    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.classify.optim import build_optimizer, build_scheduler
    from fashionkit.classify.train import model_from_config
    from fashionkit.config import resolve
    from fashionkit.data import load_split
    from fashionkit.data.loader import MEAN, STD
    from fashionkit.data.splits import make_splits

    cfg = resolve(TRAIN_OPTIONS, {**args.overrides, **({"subset": 2000, "epochs": 2} if args.quick else {})})
    per_image = {"flip-crop": [v2.RandomHorizontalFlip(), v2.RandomCrop(28, padding=2)],
                 "flip-crop-erase": [v2.RandomHorizontalFlip(), v2.RandomCrop(28, padding=2), v2.RandomErasing()],
                 "flip-rotate": [v2.RandomHorizontalFlip(), v2.RandomRotation(5)],
                 "flip": [v2.RandomHorizontalFlip()], "none": []}
    if cfg["augment"] not in per_image:
        raise SystemExit(f"reference: no per-image version of augmentation {cfg['augment']!r}")
    if cfg["final_augment_epochs"]:  # the plain loop keeps one transform for the whole run
        raise SystemExit("reference: --set final_augment has no reference version; time the reference without it")
    clock = Clock()
    torch.manual_seed(cfg["seed"])
    images, labels = load_split("train")
    train_idx, _ = make_splits(labels.numpy(), cfg["val_size"], cfg["seed"], cfg["subset"] or None)
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), *per_image[cfg["augment"]],
                            v2.Normalize([MEAN], [STD])])
    idx = torch.as_tensor(train_idx)
    dataset = PerImage(images[idx], labels[idx], transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=True, num_workers=2,
                                         drop_last=True, persistent_workers=True)
    model = model_from_config(cfg)
    if model.options.get("whiten"):
        from fashionkit.classify.models import whiten_first_conv
        from fashionkit.data.loader import normalize, to_float

        whiten_first_conv(model, normalize(to_float(images[torch.as_tensor(train_idx[:5000])])))
    opt = build_optimizer(cfg["optimizer"], model, cfg["lr"], cfg["momentum"], cfg["nesterov"], cfg["weight_decay"],
                          cfg["muon_lr"], cfg["norm_lr"])
    sched, per_batch = build_scheduler(cfg["scheduler"], opt, cfg["epochs"], len(loader), cfg["lr"])
    ema = None
    if cfg["ema"]:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    curve, seen = [], 0
    for epoch in range(cfg["epochs"]):
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None and per_batch:
                sched.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(y)
        seconds = clock.now()
        paused = time.perf_counter()
        acc = test_accuracy(ema.module if ema is not None else model, test, False)
        curve.append({"epoch": epoch + 1, "seconds": round(seconds, 2), "test_acc": acc})
        print(f"  reference epoch {epoch + 1}: {seconds:.1f} s, test {acc:.4f}", flush=True)
        clock.paused += time.perf_counter() - paused
    total = clock.now()
    return {"recipe": "reference", "options": {k: cfg[k] for k in ("model", "model_opts", "epochs", "batch_size",
                                                                   "lr", "augment", "ema", "tta")},
            "tta": False, "curve": curve, "seconds_total": round(total, 2), "precision": "fp32",
            "img_per_s": round(seen / total, 1)}


def first_passing(curve: list[dict]) -> dict:
    """Seconds at which test accuracy first reached each threshold (None: never)."""
    return {f"{t:.0%}": next((c["seconds"] for c in curve if c["test_acc"] >= t), None) for t in THRESHOLDS}


def plot(results: list[dict], path: Path) -> None:
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot([c["seconds"] / 60 for c in r["curve"]], [100 * c["test_acc"] for c in r["curve"]], "o-", ms=3,
                label=f"{r['recipe']} ({r['precision']})")
    for t in THRESHOLDS:
        ax.axhline(100 * t, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("minutes (test scoring off the clock)")
    ax.set_ylabel("test accuracy, %")
    ax.set_ylim(88, 96)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="default,previous,reference", help="comma-separated: default, previous, "
                   "reference")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: cap torch's kernels at AVX2 and train in fp32")
    p.add_argument("--quick", action="store_true", help="2 epochs on 2,000 items: checks the script, measures nothing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the default recipe (and the reference) to change, e.g. epochs=12")
    p.add_argument("--score-from", type=int, default=1, metavar="EPOCH",
                   help="score `classify train` recipes on the test split from this epoch on (a wide net's six-view "
                        "TTA scoring takes about a minute: off the clock, but on the wall)")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary directory)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/time_to_accuracy[-quick].json)")
    args = p.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in ("default", "previous", "reference")]
    if unknown:
        sys.exit(f"time_to_accuracy: unknown recipe {unknown[0]!r}; choose from default, previous, reference")
    cap_isa(args.isa)
    import yaml

    from fashionkit.classify.defaults import TRAIN_OPTIONS
    from fashionkit.errors import UserError

    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"time_to_accuracy: --set {item!r} is not KEY=VALUE")
        name = key.strip().replace("-", "_")
        if name not in TRAIN_OPTIONS:
            sys.exit(f"time_to_accuracy: --set {name!r} is no option of classify train; see classify train --help")
        parsed = value if name == "model_opts" else yaml.safe_load(value)
        try:  # read as `classify train` reads it (amp=off: the word, not YAML's False)
            args.overrides[name] = TRAIN_OPTIONS[name].convert(name, parsed)
        except UserError as e:
            sys.exit(f"time_to_accuracy: {e}")
    out = Path(args.out or f"benchmarks/results/time_to_accuracy{'-quick' if args.quick else ''}.json")

    import torch

    from fashionkit.classify.defaults import EVAL_BATCH
    from fashionkit.data import load_split
    from fashionkit.data.loader import BatchLoader
    from fashionkit.device import keep_freed_memory

    # before any recipe, so every one (the reference too) runs on the allocator `classify train` sets up for itself
    kept_freed_memory = keep_freed_memory()
    images, labels = load_split("test")
    test = BatchLoader(images, labels, EVAL_BATCH)  # scored off the clock, as classify train scores
    tmp = None
    if args.runs_dir is None:
        tmp = tempfile.TemporaryDirectory()
        args.runs_dir = tmp.name
    else:  # a fresh folder inside it, so each recipe's run directory has the recipe's name
        Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
        args.runs_dir = tempfile.mkdtemp(prefix="time-to-accuracy-", dir=args.runs_dir)

    results = []
    for recipe in recipes:
        print(f"{recipe}:", flush=True)
        try:
            if recipe == "reference":
                results.append(reference_recipe(args, test))
            else:
                results.append(engine_recipe(recipe, args.overrides if recipe == "default" else PREVIOUS_DEFAULT,
                                             args, test))
        except UserError as e:  # a bad --set value: the product's own one-line message
            sys.exit(f"time_to_accuracy: {e}")
        results[-1]["first_passing"] = first_passing(results[-1]["curve"])
    ref = next((r for r in results if r["recipe"] == "reference"), None)
    for r in results:
        if ref is not None:
            r["speedup_vs_reference"] = {
                k: round(ref["first_passing"][k] / v, 2) if v and ref["first_passing"][k] else None
                for k, v in r["first_passing"].items()}
        best = max((c["test_acc"] for c in r["curve"]), default=None)
        print(f"{r['recipe']:10s} total {r['seconds_total']:7.1f} s  best test {best:.4f}  first passing: "
              + "  ".join(f"{k} {'-' if v is None else f'{v:.0f} s'}" for k, v in r["first_passing"].items()))
    from faiss_bench import cpu_name  # the CPU as every benchmark names it

    result = {"cpu": {"model_name": cpu_name()}, "isa": args.isa, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "kept_freed_memory": kept_freed_memory, "quick": args.quick,
              "thresholds": list(THRESHOLDS),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(out)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
