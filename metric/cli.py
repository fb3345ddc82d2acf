"""``metric ...`` (= ``fashionkit metric ...``): train an embedding, index it, look items up, resolve ambiguities."""

from __future__ import annotations

import argparse
import json

from fashionkit.config import add_options, flag, refuse_flags_with_resume, resolve

_NOT_OPTIONS = ("func", "command", "stage", "resume", "config", "run", "image", "inputs", "add")


def _given(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}


def cmd_train(args) -> int:
    from fashionkit.metric.defaults import TRAIN_OPTIONS
    from fashionkit.metric.train import resume, train, validate_options

    opts = _given(args)
    if args.resume:
        refuse_flags_with_resume(opts, args.config)
        run, summary = resume(args.resume)
    else:
        if "from" not in opts and not _config_sets_from(args.config):
            validate_options(resolve(TRAIN_OPTIONS, opts, args.config))  # a mistake first, before the line below
            opts["from"] = str(default_source(opts.get("runs_dir")))
        run, summary = train(opts, args.config)
    from fashionkit import distributed

    if not distributed.is_main():
        return 0  # under torchrun rank 0 reports
    after = summary.get("test", {}).get("after")
    test = (f", test P@1 {summary['test']['before']['precision_at_1']:.4f} -> {after['precision_at_1']:.4f}"
            if after else "")
    print(f"done: {run} ({summary['status']}, best epoch {summary['best_epoch']}{test})")
    return 0


def _config_sets_from(config: str | None) -> bool:
    from fashionkit.config import load_yaml

    return bool(config) and "from" in load_yaml(config)


def default_source(runs_dir: str | None):
    """What ``metric train`` builds on when no --from is given: the newest finished classify run under the runs
    root, else the bundled classifier; one line says which (the pipeline is classifier first, embedding second)."""
    import sys

    from fashionkit import bundled
    from fashionkit.runs import newest_run, read_json, runs_root

    how = "pass --from RUN for another, or --from none to train from scratch"
    run = newest_run("classify", runs_dir)
    if run is not None:
        acc = (read_json(run / "summary.json", missing_ok=True) or {}).get("test_acc")
        figure = f" (test accuracy {acc:.4f})" if isinstance(acc, float) else ""
        print(f"building on the newest classify run {run}{figure}; {how}", file=sys.stderr, flush=True)
        return run
    run = bundled.bundled_run("classifier")
    print(f"building on the bundled classifier ({bundled.headline('classifier')}): no finished classify run in "
          f"{runs_root(runs_dir) / 'classify'}; {how}", file=sys.stderr, flush=True)
    return run


_ADD_KEEPS = ("device", "data_dir", "batch_size")  # the only options --add uses: the index keeps how it was built


def cmd_index(args) -> int:
    from fashionkit.errors import UserError
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.index import add_to_run_index, build_run_index

    if args.add:
        ignored = sorted(k for k in _given(args) if k not in _ADD_KEEPS)
        if ignored:
            raise UserError(f"--add adds to the index as it was built; drop "
                            f"{', '.join(flag(k) for k in ignored)} (or rebuild without --add)")
        meta = add_to_run_index(args.run, args.add, resolve(INDEX_OPTIONS, args))
        print(f"added {meta['last_add']['images']} images in {meta['last_add']['seconds']:.1f}s -> {args.run}/index/ "
              f"now holds "
              f"{meta['count']} vectors ({meta['kind']}, model {meta['model_hash'][:12]})")
        return 0
    meta = build_run_index(args.run, resolve(INDEX_OPTIONS, args))
    params = ", ".join(f"{k} {v}" for k, v in meta["params"].items() if v is not None)
    print(f"indexed {meta['count']} {meta['dim']}-d vectors ({meta['kind']}{', ' + params if params else ''}; "
          f"built on the {meta['built_on']}) in {meta['embed_seconds']:.1f}s embedding + {meta['build_seconds']:.2f}s "
          f"building -> {args.run}/index/ (model {meta['model_hash'][:12]})")
    return 0


def cmd_lookup(args) -> int:
    from fashionkit.bundled import split_run
    from fashionkit.metric.defaults import LOOKUP_OPTIONS
    from fashionkit.metric.lookup import format_table, lookup

    opts = resolve(LOOKUP_OPTIONS, args)
    run, rest = split_run(args.inputs, args.run, "metric", most=1)
    result = lookup(run, opts, rest[0] if rest else None)
    print(json.dumps(result, indent=2) if opts["json"] else format_table(result))
    return 0


def cmd_resolve(args) -> int:
    from fashionkit.bundled import announce
    from fashionkit.metric.defaults import RESOLVE_OPTIONS
    from fashionkit.metric.resolve import format_report, resolve_run

    opts = resolve(RESOLVE_OPTIONS, args)
    run = args.run
    if run is None:  # the bundled embedding; and the classifier it was built on unless one is named
        run = announce("metric")
        if opts["classifier"] is None:
            opts["classifier"] = str(announce("classifier"))
    print(format_report(resolve_run(run, opts)))
    return 0


def _add_options_with_k(parser, options) -> None:
    """As add_options, with ``-k`` as the short form of ``--k``."""
    add_options(parser, {name: opt for name, opt in options.items() if name != "k"})
    opt = options["k"]
    parser.add_argument("-k", "--k", dest="k", type=int, metavar="K", default=argparse.SUPPRESS,
                        help=f"{opt.help} (default: {opt.default})")


def register(sub, formatter) -> None:
    from fashionkit.metric.defaults import INDEX_OPTIONS, LOOKUP_OPTIONS, RESOLVE_OPTIONS, TRAIN_OPTIONS

    p = sub.add_parser("train", help="train a triplet-loss embedding on a classifier's trunk",
                       formatter_class=formatter,
                       description="Train an embedding net (a classify run's convolutional trunk + a projection "
                       "head, L2-normalised) with PML TripletMarginLoss on batches from MPerClassSampler, into "
                       "runs/metric/<name>/: config.yaml, weights/{best,last}.pt, metrics.csv (with mined triplets "
                       "per epoch), curves.png, tsne.png, summary.json (test precision@1, R-precision, MAP@R of the "
                       "classifier's features and of the embedding).\n\n"
                       "Without --from it builds on the newest finished classify run under the runs root, else on "
                       "the classifier bundled with fashionkit, and says which; --from none trains from scratch.\n\n"
                       "  metric train --hard-classes 0,2,4,6\n"
                       "  metric train --from runs/classify/train --hard-classes 0,2,4,6")
    add_options(p, TRAIN_OPTIONS)
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue an interrupted metric run to its planned epoch count")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("index", help="build the FAISS index of a metric run's reference set",
                       formatter_class=formatter,
                       description="Embed the reference set (the 60k training items of the run's classes) and "
                       "write RUN/index/: index.faiss, index.npz (ids, labels, split, dataset index, model hash), "
                       "vectors.npy (ivfpq with re-ranking: the exact vectors, memory-mapped at look-up) and "
                       "index.json. With --add, embed image files (or the images in directories) and add them to the "
                       "existing index in chunks of --batch-size.\n\n"
                       "  metric index runs/metric/train --index ivfpq --pq-m 32 --rerank 100\n"
                       "  metric index runs/metric/train --add catalogue/ more/shoe.jpg")
    p.add_argument("run", metavar="RUN", help="metric run directory")
    add_options(p, INDEX_OPTIONS)
    p.add_argument("--add", nargs="+", metavar="FILE", default=None,
                   help="image files or directories to embed and add to the run's existing index (built by the "
                   "same weights), instead of rebuilding it")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("lookup", help="the k nearest reference items of an image or dataset item",
                       formatter_class=formatter,
                       description="Print the k nearest reference items (class, distance, dataset index) and write "
                       "a PNG strip of the query and its neighbours. Without a run, the embedding and index "
                       "bundled with fashionkit are used (a line on stderr says so) and the strip goes to "
                       "<runs>/bundled/metric/lookups/.\n\n"
                       "  metric lookup photo.png\n"
                       "  metric lookup runs/metric/train --test-index 17 -k 10\n"
                       "  metric lookup runs/metric/train photo.png --json")
    p.add_argument("inputs", metavar="[RUN] [IMAGE]", nargs="*", default=[],
                   help="a metric run directory with an index (optional; none: the bundled one), then the image "
                   "file to query with (or use --test-index / --train-index)")
    p.add_argument("--run", metavar="RUN", default=None, help="metric run directory (same as a first RUN argument)")
    _add_options_with_k(p, LOOKUP_OPTIONS)
    p.set_defaults(func=cmd_lookup)

    p = sub.add_parser("resolve", help="re-decide a classifier's unsure hard-class predictions by kNN vote",
                       formatter_class=formatter,
                       description="For test items whose top prediction is a hard class with a top1-top2 "
                       "probability margin under a threshold (swept on the validation split), re-decide among the "
                       "hard classes by a distance-weighted kNN vote. Writes resolve.json and confusion PNGs.\n\n"
                       "Without RUN this is the ambiguous-items look-up of the bundled models: the bundled embedding "
                       "and index re-decide the bundled classifier's unsure items (or those of --classifier), and "
                       "the outputs go to <runs>/bundled/metric/. demos/ambiguous.py shows the items themselves "
                       "with their neighbours.\n\n"
                       "  metric resolve\n"
                       "  metric resolve runs/metric/train --classifier runs/classify/train")
    p.add_argument("run", metavar="RUN", nargs="?", default=None,
                   help="metric run directory with an index (none: the bundled embedding and classifier)")
    _add_options_with_k(p, RESOLVE_OPTIONS)
    p.set_defaults(func=cmd_resolve)
