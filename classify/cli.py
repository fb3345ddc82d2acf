"""``classify ...`` (= ``fashionkit classify ...``): train, list models, evaluate, inspect, compare, predict."""

from __future__ import annotations

from fashionkit.config import add_options


def cmd_train(args) -> int:
    from fashionkit.classify.train import resume, train

    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "stage", "resume", "config")}
    if args.resume:
        if opts:
            from fashionkit.errors import UserError

            raise UserError(f"--resume continues a run with its saved config; drop the other flags "
                            f"({', '.join('--' + k.replace('_', '-') for k in opts)})")
        run, summary = resume(args.resume)
    else:
        run, summary = train(opts, args.config)
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
