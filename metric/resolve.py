"""``metric resolve``: re-decide the classifier's unsure predictions among the hard classes by a kNN vote.

For an item whose top prediction is a hard class and whose margin (top-1 minus top-2 probability) is under the
threshold, the ``k`` nearest reference items in the embedding space vote, each with weight 1 / distance (an exact
duplicate outvotes everything, as in scikit-learn's ``weights="distance"``); only neighbours of the hard classes
count, and an item with none keeps the classifier's answer. Everything else keeps the classifier's answer.

The threshold is chosen on validation items -- those neither the classifier nor the embedding net trained on
(the val part of both runs' splits) -- as the one with the best overall accuracy (ties: the smaller, i.e. fewer
changes). Their own copies in the index are left out of their votes. The test split is used once, to report
classifier alone vs resolved: overall accuracy, accuracy and per-class F1 on the hard classes, and the confusion
matrix of the hard classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashionkit.errors import UserError

EPS = 1e-6


def probabilities(classifier, images, device, batch_size: int, tta: bool = False) -> np.ndarray:
    """The classifier's softmax probabilities; ``tta``: averaged over the six views ``classify eval --tta`` uses."""
    from fashionkit.classify.predict import predict_probs

    return predict_probs(classifier, images, device, None, batch_size, tta).numpy()


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class and margin (top-1 minus top-2 probability) per row."""
    part = np.sort(probs, 1)
    return probs.argmax(1), part[:, -1] - part[:, -2]


def knn_votes(net, index, images, hard: list[int], k: int, device, batch_size: int,
              exclude: np.ndarray | None = None) -> np.ndarray:
    """The hard class with the largest inverse-distance weight among the ``k`` nearest reference items, or -1
    when none of them is of a hard class. ``exclude[i]``: a dataset index that query ``i`` must not find (its
    own copy in the index)."""
    return weighted_vote(index, *knn_neighbours(net, index, images, k, device, batch_size, exclude), hard)


def knn_neighbours(net, index, images, k: int, device, batch_size: int, exclude: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, rows)`` ``[N, k]`` of each image's ``k`` nearest reference items, nearest first; row -1 (at
    distance inf) where there is none, or where it is the query's own copy ``exclude[i]``."""
    from fashionkit.metric.data import embed

    if len(images) == 0:
        return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
    z = embed(net, images, device, None, batch_size).numpy()
    extra = 1 if exclude is not None else 0
    dist, rows = index.search(z, min(k + extra, index.size))
    valid = rows >= 0
    if exclude is not None:
        valid &= index.source[np.where(valid, rows, 0)] != exclude[:, None]
        keep = np.cumsum(valid, 1) <= k  # the first k that remain
        valid &= keep
    return np.where(valid, dist, np.inf), np.where(valid, rows, -1)


def weighted_vote(index, dist: np.ndarray, rows: np.ndarray, hard: list[int]) -> np.ndarray:
    """Per row of neighbours (``rows`` into the index's sidecar, -1 for none), the hard class with the largest sum
    of 1 / distance, or -1 when no neighbour is of a hard class."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    valid = rows >= 0
    labels = np.where(valid, index.labels[np.where(valid, rows, 0)], -1)
    weights = np.where(valid, 1.0 / (dist + EPS), 0.0)
    scores = np.stack([np.where(labels == c, weights, 0.0).sum(1) for c in hard], 1)
    votes = np.asarray(hard)[scores.argmax(1)]
    return np.where(scores.max(1) > 0, votes, -1)


def decide(top1: np.ndarray, margin: np.ndarray, votes: np.ndarray, hard: list[int], threshold: float) -> np.ndarray:
    replace = np.isin(top1, hard) & (margin < threshold) & (votes >= 0)
    return np.where(replace, votes, top1)


def report(labels: np.ndarray, pred: np.ndarray, hard: list[int]) -> dict:
    from sklearn.metrics import precision_recall_fscore_support

    from fashionkit.data import CLASSES

    on_hard = np.isin(labels, hard)
    confusion = [[int(((labels == t) & (pred == p)).sum()) for p in hard] for t in hard]
    other = [int(((labels == t) & ~np.isin(pred, hard)).sum()) for t in hard]
    prec, rec, f1, _ = precision_recall_fscore_support(labels, pred, labels=hard, zero_division=0)
    return {
        "accuracy": float((pred == labels).mean()), "hard_accuracy": float((pred[on_hard] == labels[on_hard]).mean()),
        "confusion": confusion, "predicted_other": other,
        "per_class": {CLASSES[c]: {"precision": float(p), "recall": float(r), "f1": float(f)}
                      for c, p, r, f in zip(hard, prec, rec, f1)},
    }


def thresholds(step: float) -> list[float]:
    if not 0 < step <= 1:
        raise UserError(f"--sweep-step must lie in (0, 1], got {step}")
    return [round(t, 6) for t in np.arange(0.0, 1.0 + step / 2, step)]


def sweep(labels, top1, margin, votes, hard, step: float) -> tuple[float, list[dict]]:
    rows, on_hard = [], np.isin(labels, hard)
    for t in thresholds(step):
        pred = decide(top1, margin, votes, hard, t)
        rows.append({"threshold": t, "accuracy": float((pred == labels).mean()),
                     "hard_accuracy": float((pred[on_hard] == labels[on_hard]).mean()),
                     "re_decided": int((pred != top1).sum())})
    best = max(rows, key=lambda r: (r["accuracy"], -r["threshold"]))
    return best["threshold"], rows


def resolve_run(run: str | Path, opts: dict) -> dict:
    from fashionkit.classify.checkpoint import load_classifier
    from fashionkit.data import CLASSES, load_split
    from fashionkit.device import select_device
    from fashionkit.metric.data import Split, classify_split, partition
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder
    from fashionkit.runs import atomic_write_json, ensure_dir, open_run

    run = open_run(run, "metric")
    if not opts["classifier"]:
        raise UserError("--classifier RUN is required: the classify run whose predictions are re-decided")
    classifier_run = open_run(opts["classifier"], "classify", what="--classifier classify run")
    if opts["threshold"] is not None and not 0 <= opts["threshold"] <= 1:
        raise UserError(f"--threshold must lie in [0, 1] (a probability margin), got {opts['threshold']}")
    thresholds(opts["sweep_step"])
    device, bs = select_device(opts["device"]), opts["batch_size"]
    net, ckpt = load_embedder(run, device)
    index = open_run_index(run, ckpt["model_hash"], device)
    k = opts["k"]
    index.check_k(k)
    hard = list(ckpt["hard_classes"])
    classifier, _ = load_classifier(classifier_run, device)

    train_images, train_labels = load_split("train", opts["data_dir"])
    test_images, test_labels = load_split("test", opts["data_dir"])
    val = np.flatnonzero((partition(train_labels, classify_split(classifier_run)) == "val")
                         & (partition(train_labels, Split(**ckpt["split"])) == "val"))
    if np.isin(train_labels.numpy()[val], hard).sum() < 20:
        raise UserError(f"the classifier {classifier_run} and the metric run {run} share only {len(val)} validation "
                        f"items (their train/val splits differ), too few to choose a threshold; use the classify run "
                        f"the metric run was trained --from, or pass --threshold")

    def decide_inputs(images, exclude=None):
        top1, margin = top2(probabilities(classifier, images, device, bs, opts["tta"]))
        candidates = np.flatnonzero(np.isin(top1, hard))
        votes = np.full(len(top1), -1)
        votes[candidates] = knn_votes(net, index, images[torch.as_tensor(candidates)], hard, k, device, bs,
                                      None if exclude is None else exclude[candidates])
        return top1, margin, votes

    val_labels = train_labels.numpy()[val]
    val_top1, val_margin, val_votes = decide_inputs(train_images[torch.as_tensor(val)], exclude=val)
    chosen, rows = sweep(val_labels, val_top1, val_margin, val_votes, hard, opts["sweep_step"])
    source = "validation sweep"
    if opts["threshold"] is not None:
        chosen, source = opts["threshold"], "--threshold"

    labels = test_labels.numpy()
    top1, margin, votes = decide_inputs(test_images)
    resolved = decide(top1, margin, votes, hard, chosen)
    changed = resolved != top1
    from fashionkit.bundled import output_home

    out = ensure_dir(opts["out"] or output_home(run, "metric"))
    result = {
        "metric_run": str(run), "classifier": str(classifier_run), "tta": opts["tta"], "k": k,
        "index": index.meta["kind"],
        "model_hash": ckpt["model_hash"], "hard_classes": hard, "hard_class_names": [CLASSES[c] for c in hard],
        "threshold": chosen, "threshold_source": source,
        "validation": {"items": len(val), "hard_items": int(np.isin(val_labels, hard).sum()),
                       "classifier": report(val_labels, val_top1, hard),
                       "resolved": report(val_labels, decide(val_top1, val_margin, val_votes, hard, chosen), hard),
                       "sweep": rows},
        "test": {"items": len(labels), "classifier": report(labels, top1, hard), "resolved": report(labels, resolved,
                                                                                                  hard),
                 "re_decided": int(changed.sum()), "fixed": int((changed & (resolved == labels)).sum()),
                 "broken": int((changed & (top1 == labels)).sum())},
    }
    for key in ("classifier", "resolved"):
        name = f"resolved (threshold {chosen:.2f})" if key == "resolved" else "classifier alone"
        plot_confusion(result["test"][key], hard, out / f"confusion_{key}.png",
                       f"{name}: hard-class accuracy {result['test'][key]['hard_accuracy']:.4f}")
    result["pngs"] = [str(out / "confusion_classifier.png"), str(out / "confusion_resolved.png")]
    atomic_write_json(out / "resolve.json", result)
    result["json"] = str(out / "resolve.json")
    return result


def plot_confusion(rep: dict, hard: list[int], path: Path, title: str) -> None:
    from fashionkit.data import CLASSES
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    cm = np.array(rep["confusion"])
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(cm, cmap="Blues")
    names = [CLASSES[c] for c in hard]
    ax.set_xticks(range(len(hard)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(hard)), [f"{n} (+{o} other)" if o else n for n, o in zip(names, rep["predicted_other"])])
    for i in range(len(hard)):
        for j in range(len(hard)):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def format_report(result: dict) -> str:
    t = result["test"]
    names = result["hard_class_names"]
    lines = [f"threshold {result['threshold']:.2f} ({result['threshold_source']}, "
             f"{result['validation']['items']} validation items); k = {result['k']}; {result['index']} index"
             + ("; classifier with six-view TTA" if result.get("tta") else ""), "",
             f"{'test':<22}{'classifier':>12}{'resolved':>12}"]
    for key, name in (("accuracy", "overall accuracy"), ("hard_accuracy", "hard-class accuracy")):
        lines.append(f"{name:<22}{t['classifier'][key]:>12.4f}{t['resolved'][key]:>12.4f}")
    for n in names:
        lines.append(f"{'F1 ' + n:<22}{t['classifier']['per_class'][n]['f1']:>12.4f}"
                     f"{t['resolved']['per_class'][n]['f1']:>12.4f}")
    lines += [f"re-decided {t['re_decided']} test items: {t['fixed']} fixed, {t['broken']} broken", ""]
    width = max(len(n) for n in names)
    for key in ("classifier", "resolved"):
        lines.append(f"confusion ({key}; rows true, columns predicted):")
        lines.append(" " * (width + 2) + "".join(f"{n:>13}" for n in names) + f"{'other':>13}")
        for n, row, other in zip(names, t[key]["confusion"], t[key]["predicted_other"]):
            lines.append(f"{n:<{width + 2}}" + "".join(f"{v:>13}" for v in row) + f"{other:>13}")
    lines += ["", f"wrote {result['json']} and {', '.join(result['pngs'])}"]
    return "\n".join(lines)
