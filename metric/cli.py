"""``metric ...`` (= ``fashionkit metric ...``): train an embedding, index it, look items up, resolve ambiguities."""

from __future__ import annotations

import argparse
import json

from fashionkit.config import add_options, refuse_flags_with_resume, resolve

_NOT_OPTIONS = ("func", "command", "stage", "resume", "config", "run", "image", "add")


def _given(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}


def cmd_train(args) -> int:
    from fashionkit.metric.train import resume, train

    opts = _given(args)
    if args.resume:
        refuse_flags_with_resume(opts, args.config)
        run, summary = resume(args.resume)
    else:
        run, summary = train(opts, args.config)
    from fashionkit import distributed

    if not distributed.is_main():
        return 0  # under torchrun rank 0 reports
    after = summary.get("test", {}).get("after")
    test = (f", test P@1 {summary['test']['before']['precision_at_1']:.4f} -> {after['precision_at_1']:.4f}"
            if after else "")
    print(f"done: {run} ({summary['status']}, best epoch {summary['best_epoch']}{test})")
    return 0


_ADD_KEEPS = ("device", "data_dir", "batch_size")  # the only options --add uses: the index keeps how it was built


def cmd_index(args) -> int:
    from fashionkit.errors import UserError
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.index import add_to_run_index, build_run_index

    if args.add:
        ignored = sorted(k for k in _given(args) if k not in _ADD_KEEPS)
        if ignored:
            raise UserError(f"--add adds to the index as it was built; drop "
                            f"{', '.join('--' + k.replace('_', '-') for k in ignored)} (or rebuild without --add)")
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
    from fashionkit.metric.defaults import LOOKUP_OPTIONS
    from fashionkit.metric.lookup import format_table, lookup

    opts = resolve(LOOKUP_OPTIONS, args)
    result = lookup(args.run, opts, args.image)
    print(json.dumps(result, indent=2) if opts["json"] else format_table(result))
    return 0


def cmd_resolve(args) -> int:
    from fashionkit.metric.defaults import RESOLVE_OPTIONS
    from fashionkit.metric.resolve import format_report, resolve_run

    print(format_report(resolve_run(args.run, resolve(RESOLVE_OPTIONS, args))))
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
                       "a PNG strip of the query and its neighbours.\n\n"
                       "  metric lookup runs/metric/train --test-index 17 -k 10\n"
                       "  metric lookup runs/metric/train photo.png --json")
    p.add_argument("run", metavar="RUN", help="metric run directory (with an index)")
    p.add_argument("image", metavar="IMAGE", nargs="?", default=None, help="image file to query with")
    _add_options_with_k(p, LOOKUP_OPTIONS)
    p.set_defaults(func=cmd_lookup)

    p = sub.add_parser("resolve", help="re-decide a classifier's unsure hard-class predictions by kNN vote",
                       formatter_class=formatter,
                       description="For test items whose top prediction is a hard class with a top1-top2 "
                       "probability margin under a threshold (swept on the validation split), re-decide among the "
                       "hard classes by a distance-weighted kNN vote. Writes resolve.json and confusion PNGs.\n\n"
                       "  metric resolve runs/metric/train --classifier runs/classify/train")
    p.add_argument("run", metavar="RUN", help="metric run directory (with an index)")
    _add_options_with_k(p, RESOLVE_OPTIONS)
    p.set_defaults(func=cmd_resolve)
