"""``classify ...`` (= ``fashionkit classify ...``): train, list models, evaluate, inspect, compare, predict."""

from __future__ import annotations

from fashionkit.classify.defaults import EVAL_BATCH
from fashionkit.config import Opt, add_options, flag, refuse_flags_with_resume, resolve
from fashionkit.device import AMP_CHOICES, DEVICE_HELP

# where eval and inspect read the items from: the run's own --data-dir first, then where classify train looks
RUN_DATA_DIR = Opt(None, "directory holding the Fashion-MNIST idx files; none: the run's, else $FASHIONKIT_DATA, "
                   "/usr/share/datasets/fashion-mnist or the user cache", type=str)
WEIGHTS = Opt("best", "which checkpoint of the run: best (best validation) or last (last epoch)",
              choices=("best", "last"))

EVAL_OPTIONS = {
    "split": Opt("test", "test (the official 10k) or val (the run's own validation items)", choices=("test", "val")),
    "tta": Opt(False, "test-time augmentation: average the probabilities of the image and its mirror image, each "
                      "also shifted a pixel both ways"),
    "weights": WEIGHTS,
    "batch_size": Opt(EVAL_BATCH, "images per forward pass", least=1),  # said before eval makes its folder
    "device": Opt("auto", DEVICE_HELP),
    "amp": Opt("off", "precision: off (fp32, exact, as train's final test), auto, bf16, fp16",
               choices=AMP_CHOICES),
    "top_errors": Opt(25, "most confident mistakes shown in mistakes.png and listed in eval.json"),
    "out": Opt(None, "output directory; none means RUN/eval/<split>[-last][-tta] (for the bundled classifier "
                 "<runs>/bundled/classifier/eval/...)", type=str),
    "data_dir": RUN_DATA_DIR,
}

INSPECT_OPTIONS = {
    "image": Opt(None, "image file to show the feature maps for (any format; framed like Fashion-MNIST)", type=str),
    "index": Opt(None, "or: index of a dataset item (of --split)", type=int),
    "split": Opt("test", "split --index refers to", choices=("test", "train")),
    "layers": Opt(3, "feature maps of the first K convolutions of the trunk"),
    "out": Opt(None, "output directory; none means RUN/inspect (for the bundled classifier "
                 "<runs>/bundled/classifier/inspect)", type=str),
    "weights": WEIGHTS,
    "device": Opt("auto", DEVICE_HELP),
    "data_dir": RUN_DATA_DIR,
}

COMPARE_OPTIONS = {
    "out": Opt("compare", "output directory for compare.md and compare.png"),
}

PREDICT_OPTIONS = {
    "top_k": Opt(3, "classes listed per image, most probable first"),
    "json": Opt(False, "print one JSON document instead of text"),
    "tta": Opt(False, "average the probabilities of the image and its mirror image, each also shifted a pixel "
                      "both ways"),
    "weights": WEIGHTS,
    "device": Opt("auto", DEVICE_HELP),
}

SEARCH_OPTIONS = {
    "space": Opt(None, "YAML search space, one line per option: `lr: {low: 0.001, high: 0.3, log: true}`, "
                 "`dropout: {low: 0.1, high: 0.5}`, `fc_layers: {low: 1, high: 3}`, `optimizer: [sgd, adamw]` "
                 "(see demos/search_space.yaml)", type=str),
    "trials": Opt(None, "trials per stage (required with --space); with --grid: at most this many grid points, "
                  "none = the whole grid", type=int, least=1),
    "stages": Opt(2, "random-search stages: stage 1 samples the full space, each later stage the region of the "
                  "previous stage's --top-k trials", least=1),
    "top_k": Opt(5, "best trials of a stage that bound the next stage's ranges and choices", least=1),
    "margin": Opt(0.25, "a narrowed range extends this share of the top-k's span beyond it on each side "
                  "(on log scale for log ranges)"),
    "budget_minutes": Opt(0.0, "wall-time cap: no trial starts after it and a running trial stops at its next "
                          "epoch end; --resume continues later (0 = no cap)"),
    "prune": Opt(True, "stop a trial whose validation accuracy is below the median of the stage's earlier trials "
                 "at the same epoch (Optuna's MedianPruner)"),
    "prune_startup": Opt(5, "trials a stage completes before it starts pruning", least=0),
    "prune_warmup": Opt(2, "epochs every trial trains before it can be pruned", least=1),
}


def search_train_options() -> dict[str, Opt]:
    """classify train's options as the fixed options of every search trial, with defaults suited to trials."""
    from fashionkit.classify.defaults import TRAIN_OPTIONS

    return {**TRAIN_OPTIONS,
            "patience": Opt(3, "early stopping of each trial after this many epochs without improvement (0 = off)"),
            "monitor": Opt("val_acc", "what early stopping and each trial's best.pt follow",
                           choices=("val_loss", "val_acc")),
            "test": Opt(False, "also evaluate every trial on the test split (never used for scoring)"),
            "name": Opt(None, "search run name (default: search, search2, ...)", type=str)}


def cmd_train(args) -> int:
    from fashionkit.classify.train import resume, train
    from fashionkit.distributed import is_main

    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "stage", "resume", "config")}
    if args.resume:
        refuse_flags_with_resume(opts, args.config)
        run, summary = resume(args.resume)
    else:
        run, summary = train(opts, args.config)
    if not is_main():  # under torchrun rank 0 reports
        return 0
    test = f", test acc {summary['test_acc']:.4f}" if "test_acc" in summary else ""
    print(f"done: {run} ({summary['status']}, best epoch {summary['best_epoch']}{test})")
    return 0


def cmd_models(args) -> int:
    from fashionkit.classify.models import model_table

    rows = model_table()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'params':>10}  {'MFLOPs':>8}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['params']:>10,}  {r['mflops']:>8.1f}  {r['description']}")
    return 0


def cmd_eval(args) -> int:
    from fashionkit.classify.evaluate import evaluate_run, format_confused

    cfg = resolve(EVAL_OPTIONS, args)
    r = evaluate_run(args.run, **cfg)
    tta = ", TTA" if r["tta"] else ""
    print(f"{r['run']} ({r['model']}, {r['weights']}.pt epoch {r['epoch']}) on {r['split']} ({r['items']} items{tta})")
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  errors {r['errors']}\n")
    print(r["report_text"])
    print("most confused (rate = share of the true class):")
    print(format_confused(r["top_confused"]))
    print()
    for path in r["files"].values():
        print(f"wrote {path}")
    return 0


def cmd_inspect(args) -> int:
    from fashionkit.classify.inspect import inspect_run

    r = inspect_run(args.run, **resolve(INSPECT_OPTIONS, args))
    truth = f" (true: {r['label']})" if r["label"] else ""
    print(f"{r['item']}: predicted {r['pred']} {r['probability']:.3f}{truth}; feature maps of "
          f"{', '.join(r['layers'])} ({len(r['layers'])} of {r['conv_layers']} convolutions)")
    for path in r["files"].values():
        print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from fashionkit.classify.evaluate import compare_runs

    _, table, files = compare_runs(args.runs, **resolve(COMPARE_OPTIONS, args))
    print(table)
    for path in files.values():
        print(f"wrote {path}")
    return 0


def cmd_predict(args) -> int:
    import json

    from fashionkit.bundled import split_run
    from fashionkit.classify.predict import format_predictions, predict_files
    from fashionkit.errors import UserError

    cfg = resolve(PREDICT_OPTIONS, args)
    as_json = cfg.pop("json")
    run, images = split_run(args.inputs, args.run, "classifier")
    if not images:
        raise UserError(f"no image given: classify predict [RUN] IMAGE... (got only the run {run})")
    results = predict_files(run, images, **cfg)
    print(json.dumps(results, indent=2) if as_json else format_predictions(results))
    return 0


def cmd_search(args) -> int:
    from fashionkit.classify.search import resume_search, search
    from fashionkit.errors import UserError

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "stage", "resume", "config", "grid")}
    if args.resume:
        extra = [k for k in given if k != "budget_minutes"]
        extra += ["config"] * bool(args.config) + ["grid"] * bool(args.grid)
        if extra:
            raise UserError(f"--resume continues a search with its saved settings; drop the other flags "
                            f"({', '.join(flag(k) for k in extra)}); only --budget-minutes may "
                            f"change")
        budget = resolve(SEARCH_OPTIONS, given, {})["budget_minutes"] if given else None
        run, result = resume_search(args.resume, budget_minutes=budget)
    else:
        run, result = search(resolve(search_train_options(), given, args.config), resolve(SEARCH_OPTIONS, given, {}),
                             grid=args.grid)
    best = result.get("best")
    if best:
        print(f"best: {best['trial']} val acc {best['val_acc']:.4f} ({result['status']}); "
              f"train it: classify train --config {run / 'best.yaml'}")
    return 0


def register(sub, formatter) -> None:
    from fashionkit.classify.defaults import TRAIN_OPTIONS

    p = sub.add_parser("train", help="train a classifier (the main job)", formatter_class=formatter,
                       description="Train a classifier into runs/classify/<name>/: config.yaml, "
                       "weights/{best,last}.pt, metrics.csv, curves.png, summary.json. "
                       "Flags override --config YAML values.")
    add_options(p, TRAIN_OPTIONS)
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue an interrupted run directory to its planned epoch count")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the registered models with parameters and MFLOPs per image",
                       formatter_class=formatter)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="evaluate a run: accuracy, per-class report, confusion matrix, worst mistakes",
                       formatter_class=formatter,
                       description="Evaluate a classify run on the test split or its own validation split. Prints "
                       "accuracy, loss, the per-class report and the most confused pairs; writes eval.json, "
                       "confusion.png and mistakes.png into RUN/eval/<split>/.")
    p.add_argument("run", metavar="RUN", help="classify run directory (runs/classify/<name>)")
    add_options(p, EVAL_OPTIONS)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="plot a CNN's first-layer filters and its feature maps for one image",
                       formatter_class=formatter,
                       description="Write filters.png (the first convolution's kernels), input.png and one "
                       "features_<k>_<layer>.png per convolution for --image PATH or --index N.")
    p.add_argument("run", metavar="RUN", help="classify run directory of a convolutional model")
    add_options(p, INSPECT_OPTIONS)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compare", help="table and validation curves of several runs", formatter_class=formatter,
                       description="One markdown table (model, params, seconds/epoch, best validation loss and "
                       "accuracy, test accuracy, best epoch) and the validation curves of all runs overlaid.")
    p.add_argument("runs", metavar="RUN", nargs="+", help="classify run directories")
    add_options(p, COMPARE_OPTIONS)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="classify image files with a trained run (or the bundled classifier)",
                       formatter_class=formatter,
                       description="Top-k classes with probabilities for each image file (PNG, JPEG, ...; colour "
                       "or grey, light or dark background: each is framed like a Fashion-MNIST item first). "
                       "Without a run, the classifier bundled with fashionkit is used, and a line on stderr says "
                       "so.\n\n"
                       "  classify predict photo.jpg\n"
                       "  classify predict runs/classify/train photo.jpg shirt.png")
    p.add_argument("inputs", metavar="[RUN] IMAGE", nargs="+",
                   help="a classify run directory (optional; none: the bundled classifier), then image files")
    p.add_argument("--run", metavar="RUN", default=None, help="classify run directory (same as a first RUN "
                   "argument)")
    add_options(p, PREDICT_OPTIONS)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("search", help="coarse-to-fine random search or grid over classify train options (Optuna)",
                       formatter_class=formatter,
                       description="Hyperparameter search into runs/classify/<name>/ (default name: search). Stage 1 "
                       "samples the --space file's full ranges at random; stage 2 narrows every numeric range to the "
                       "span of stage 1's --top-k trials (plus --margin) and keeps only the choices they used (one "
                       "choice left = fixed). --grid runs every combination instead. Space keys are classify train "
                       "options (lr, weight_decay, momentum, dropout, optimizer, sam, activation, batch_size, "
                       "augment, ...) or options of --model (fc_layers for vgg models, width, ...). Other options come "
                       "from --config and flags and hold for every trial.\n\n"
                       "Each trial is a classify run in <search>/classify/s<stage>-t<number>/, scored by its best "
                       "validation accuracy (the test split is not used), with early stopping (--patience) and "
                       "median pruning. State lives in <search>/study.db: --resume continues a killed search and "
                       "never re-runs finished trials. Results: trials.md, trials.csv, best.yaml (for classify train "
                       "--config), ranges.json and scores.png, history.png, ranges.png.\n\n"
                       "example: classify search --model vgg-small --space demos/search_space.yaml --trials 8 "
                       "--epochs 3 --subset 8000\n"
                       "         classify search --model simple --grid activation=relu,elu,tanh optimizer=sgd,adamw")
    p.add_argument("--grid", nargs="+", metavar="OPTION=V1,V2", default=None,
                   help="run every combination of these values instead of a random search, e.g. "
                   "--grid activation=relu,leaky_relu,elu,selu,tanh optimizer=adam,sgd")
    p.add_argument("--resume", metavar="SEARCH", default=None,
                   help="continue an interrupted search directory (optionally with a new --budget-minutes)")
    add_options(p, {**SEARCH_OPTIONS, **search_train_options()})
    p.set_defaults(func=cmd_search)
