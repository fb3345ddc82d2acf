"""Ambiguous items: the test items the classifier is least sure of, their nearest neighbours in the embedding, and
the resolver's decision, as a picture grid and a table.

    .venv/bin/python demos/ambiguous.py                       # the bundled classifier + embedding (about 30 s)
    .venv/bin/python demos/ambiguous.py --classifier runs/classify/train --metric runs/metric/train -n 16
    .venv/bin/python demos/ambiguous.py --tiny                # CI: 2,000 test items, 6 shown

"Least sure" is the smallest margin between the classifier's two most probable classes (the quantity the resolver
thresholds), among the items it predicts as one of the metric run's hard classes (the ones the resolver can
re-decide, and the ones the embedding was trained to separate; ``--all-classes`` ranks every test item). For each
item the ``k`` nearest reference items of the metric run's FAISS index are shown nearest first, and the resolver's
decision is the one ``metric resolve`` makes: among the hard classes, an item predicted as a hard class with a
margin under the threshold is re-decided by the distance-weighted kNN vote. The threshold is the metric run's own
(its resolve.json, chosen on validation items), or ``--threshold``.

Writes ``--out``/ambiguous.png (one row per item: the item, then its neighbours), ambiguous.md and ambiguous.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def ambiguous_items(classifier_run: str | Path, metric_run: str | Path, n: int = 12, k: int = 8,
                    threshold: float | None = None, test_subset: int = 0, data_dir=None,
                    all_classes: bool = False) -> dict:
    """The ``n`` test items of smallest top-1/top-2 margin, their ``k`` neighbours and the resolver's decision."""
    from fashionkit.classify.checkpoint import load_classifier
    from fashionkit.data import CLASSES, load_split
    from fashionkit.errors import UserError
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder
    from fashionkit.metric.resolve import knn_votes, probabilities, top2
    from fashionkit.runs import open_run, read_json

    classifier_run, metric_run = open_run(classifier_run, "classify"), open_run(metric_run, "metric")
    net, ckpt = load_embedder(metric_run)
    index = open_run_index(metric_run, ckpt["model_hash"])
    index.check_k(k)
    hard = list(ckpt["hard_classes"])
    if threshold is None:
        saved = read_json(metric_run / "resolve.json", missing_ok=True) or {}
        threshold = saved.get("threshold")
        if threshold is None:
            raise UserError(f"{metric_run} has no resolve.json (run `metric resolve {metric_run} --classifier "
                            f"{classifier_run}`), so no validated threshold; or pass --threshold")
    classifier, _ = load_classifier(classifier_run)
    images, labels = load_split("test", data_dir)
    rows = np.arange(len(labels))
    if test_subset:
        rows = np.random.default_rng(0).choice(len(labels), min(test_subset, len(labels)), replace=False)
        rows.sort()
    probs = probabilities(classifier, images[torch.as_tensor(rows)], "cpu", 1000)
    top1, margin = top2(probs)
    ranked = np.where(np.isin(top1, hard) | all_classes, margin, np.inf)
    order = np.argsort(ranked, kind="stable")[:min(n, int(np.isfinite(ranked).sum()))]
    if len(order) == 0:
        raise UserError(f"the classifier predicts none of the {len(rows)} test items as a hard class "
                        f"({', '.join(CLASSES[c] for c in hard)}); pass --all-classes to rank every item")
    picked = images[torch.as_tensor(rows[order])]
    votes = knn_votes(net, index, picked, hard, k, "cpu", 1000)
    from fashionkit.metric.data import embed

    dist, nearest = index.search(embed(net, picked, "cpu").numpy(), k)
    items = []
    for j, i in enumerate(order):
        second = int(np.argsort(probs[i])[-2])
        first = int(top1[i])
        re_decide = first in hard and margin[i] < threshold and votes[j] >= 0
        decision = int(votes[j]) if re_decide else first
        items.append({
            "test_index": int(rows[i]), "true": CLASSES[int(labels[rows[i]])],
            "classifier": CLASSES[first], "p": round(float(probs[i, first]), 4),
            "second": CLASSES[second], "p_second": round(float(probs[i, second]), 4),
            "margin": round(float(margin[i]), 4), "vote": CLASSES[int(votes[j])] if votes[j] >= 0 else None,
            "resolver": CLASSES[decision], "re_decided": bool(re_decide),
            "neighbours": [{"class": CLASSES[int(index.labels[r])], "distance": round(float(d), 4),
                            "train_index": int(index.source[r])} for d, r in zip(dist[j], nearest[j]) if r >= 0],
        })
    return {"classifier": str(classifier_run), "metric": str(metric_run), "threshold": threshold, "k": k,
            "ranked": "every test item" if all_classes else "test items predicted as a hard class",
            "hard_classes": [CLASSES[c] for c in hard], "test_items": len(rows), "items": items}


def draw(result: dict, path: Path, data_dir=None) -> Path:
    """One row per item: the test image, then its neighbours; the row says truth, classifier and resolver."""
    from fashionkit.data import load_split
    from fashionkit.plots import pyplot, save

    test_images, _ = load_split("test", data_dir)
    train_images, _ = load_split("train", data_dir)
    items, k = result["items"], result["k"]
    plt = pyplot()
    fig, axes = plt.subplots(len(items), k + 1, figsize=(1.25 * (k + 1) + 2.6, 1.45 * len(items) + 0.5),
                             squeeze=False)
    for r, item in enumerate(items):
        tiles = [(test_images[item["test_index"]], "item")]
        tiles += [(train_images[nb["train_index"]], f"{nb['class']}\nd={nb['distance']:.2f}")
                  for nb in item["neighbours"]]
        for c in range(k + 1):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles):
                ax.imshow(tiles[c][0].numpy(), cmap="gray", vmin=0, vmax=255)
                ax.set_title(tiles[c][1], fontsize=7)
            else:
                ax.axis("off")
        right = item["resolver"] == item["true"]
        axes[r][0].set_ylabel(f"true {item['true']}\nclassifier {item['classifier']} {item['p']:.2f}\n"
                              f"vs {item['second']} {item['p_second']:.2f}\n"
                              f"resolver {item['resolver']} {'✓' if right else '✗'}",
                              fontsize=7, rotation=0, ha="right", va="center",
                              color="darkgreen" if right else "darkred")
    fig.suptitle(f"The {len(items)} {result['ranked']} the classifier is least sure of, with their {k} nearest "
                 f"neighbours (resolver threshold {result['threshold']:.2f})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def table(result: dict) -> str:
    lines = ["| test item | true | classifier (p) | second (p) | margin | kNN vote | resolver | neighbours |",
             "|---:|---|---|---|---:|---|---|---|"]
    for it in result["items"]:
        counts: dict[str, int] = {}
        for nb in it["neighbours"]:
            counts[nb["class"]] = counts.get(nb["class"], 0) + 1
        nbs = ", ".join(f"{c} {v}" for c, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        mark = " (re-decided)" if it["re_decided"] else ""
        lines.append(f"| {it['test_index']} | {it['true']} | {it['classifier']} ({it['p']:.2f}) | {it['second']} "
                     f"({it['p_second']:.2f}) | {it['margin']:.3f} | {it['vote'] or '-'} | {it['resolver']}{mark} | "
                     f"{nbs} |")
    return "\n".join(lines)


def run(classifier: str | None, metric: str | None, out: str | Path, n: int, k: int, threshold: float | None,
        test_subset: int = 0, all_classes: bool = False) -> dict:
    from fashionkit.bundled import announce
    from fashionkit.runs import atomic_write_json, atomic_write_text, ensure_dir

    out = ensure_dir(out)
    metric = metric or announce("metric")
    classifier = classifier or announce("classifier")
    result = ambiguous_items(classifier, metric, n, k, threshold, test_subset, all_classes=all_classes)
    result["png"] = str(draw(result, out / "ambiguous.png"))
    result["markdown"] = table(result)
    atomic_write_text(out / "ambiguous.md", result["markdown"] + "\n")
    atomic_write_json(out / "ambiguous.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    from fashionkit.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--classifier", default=None, help="classify run (default: the bundled classifier)")
    p.add_argument("--metric", default=None, help="metric run with an index (default: the bundled embedding)")
    p.add_argument("-n", type=int, default=12, help="items shown (default: 12)")
    p.add_argument("-k", type=int, default=8, help="neighbours per item (default: 8)")
    p.add_argument("--threshold", type=float, default=None, help="resolver margin threshold (default: the metric "
                   "run's, from its resolve.json)")
    p.add_argument("--all-classes", action="store_true", help="rank every test item, not only those predicted as "
                   "a hard class")
    p.add_argument("--out", default="demo-ambiguous", help="output directory (default: ./demo-ambiguous)")
    p.add_argument("--tiny", action="store_true", help="CI: 2,000 test items (all classes ranked: a tiny "
                   "classifier may predict no hard class), 6 shown, 5 neighbours")
    args = p.parse_args(argv)
    n, k, subset = (6, 5, 2000) if args.tiny else (args.n, args.k, 0)
    try:
        result = run(args.classifier, args.metric, args.out, n, k, args.threshold, subset,
                     args.all_classes or args.tiny)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"\nwrote {result['png']}, {Path(args.out) / 'ambiguous.md'} and {Path(args.out) / 'ambiguous.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
