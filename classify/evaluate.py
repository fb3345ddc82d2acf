"""``classify eval`` and ``classify compare``: how good a trained run is, and how runs compare.

eval writes ``RUN/eval/<split>[-last][-tta]/``: ``eval.json`` (accuracy, loss, scikit-learn's per-class report,
confusion matrix, most confused pairs, most confident mistakes), ``predictions.csv`` (every item's prediction and
probabilities), ``confusion.png`` (row-normalised: each row shows where one true class goes) and ``mistakes.png``.

compare reads each run's ``summary.json`` and ``metrics.csv`` (nothing is re-run) into ``compare.md`` and
``compare.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fashionkit.classify.defaults import EVAL_BATCH
from fashionkit.errors import UserError
from fashionkit.runs import atomic_save, atomic_write_json, atomic_write_text, ensure_dir, open_run, read_json


def split_items(cfg: dict, split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(images, labels, indices)`` of ``test`` or of the run's own ``val`` split; ``indices`` point into the
    official split the items come from (test, or train for val)."""
    from fashionkit.data import load_split
    from fashionkit.data.splits import make_splits

    data_dir = data_dir or cfg.get("data_dir")
    if split == "test":
        images, labels = load_split("test", data_dir)
        return images, labels, np.arange(len(labels))
    if split == "val":
        images, labels = load_split("train", data_dir)
        # the same call the run trained with, so these are exactly the items it validated on
        idx = make_splits(labels.numpy(), cfg["val_size"], cfg["seed"], cfg["subset"] or None)[1]
        return images[idx], labels[idx], idx
    raise UserError(f"unknown split {split!r}; use test or val")


def evaluate_run(run: str | Path, split: str = "test", tta: bool = False, weights: str = "best",
                 batch_size: int = EVAL_BATCH, device: str = "auto", amp: str = "off", data_dir: str | None = None,
                 top_errors: int = 25, out: str | Path | None = None) -> dict:
    """Evaluate a classify run on a split; writes eval.json and the plots, returns the eval.json content."""
    from sklearn.metrics import classification_report, confusion_matrix

    from fashionkit.bundled import output_home
    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.device import amp_dtype, keep_freed_memory, select_device

    if top_errors < 0:
        raise UserError(f"--top-errors must be 0 or more, got {top_errors}")
    dev = select_device(device)
    keep_freed_memory()  # as classify train scores: the batches' activations reused, not faulted in again
    model, ckpt, cfg, run = load_run_model(run, dev, weights)
    images, labels, index = split_items(cfg, split, data_dir)
    tag = split + ("-last" if weights == "last" else "") + ("-tta" if tta else "")
    # made before the work, so an unwritable place fails at once; a bundled run's go under the runs root
    out = ensure_dir(out or output_home(run, "classifier") / "eval" / tag)

    probs = predict_probs(model, images, dev, amp_dtype(dev, amp), batch_size, tta)
    y = labels.numpy()
    pred = probs.argmax(1).numpy()
    confidence = probs.max(1).values.numpy()
    # mean negative log-likelihood of the probabilities scored (with --tta: of the averaged ones)
    loss = float(-probs[torch.arange(len(y)), labels].clamp_min(1e-12).log().mean())
    ids = list(range(len(CLASSES)))
    report = classification_report(y, pred, labels=ids, target_names=CLASSES, output_dict=True, zero_division=0)
    report_text = classification_report(y, pred, labels=ids, target_names=CLASSES, digits=4, zero_division=0)
    counts = confusion_matrix(y, pred, labels=ids)
    rates = confusion_matrix(y, pred, labels=ids, normalize="true")

    confused = [{"true": CLASSES[t], "pred": CLASSES[p], "count": int(counts[t, p]),
                 "rate": float(counts[t, p] / counts[t].sum())}
                for t, p in zip(*np.unravel_index(np.argsort(-counts, axis=None, kind="stable"), counts.shape))
                if t != p and counts[t, p] > 0][:10]
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:top_errors]
    source = "test" if split == "test" else "train"
    mistakes = [{"index": int(index[i]), "true": CLASSES[y[i]], "pred": CLASSES[pred[i]],
                 "confidence": float(confidence[i])} for i in worst]

    result = {
        "run": str(run), "weights": weights, "epoch": ckpt.get("epoch"), "model": ckpt["name"], "split": split,
        "index_into": source, "items": len(y), "tta": tta, "device": str(dev), "amp": amp,
        "accuracy": float((pred == y).mean()), "loss": loss, "errors": len(wrong),
        "report": report, "confusion_matrix": counts.tolist(), "confusion_matrix_normalized": rates.tolist(),
        "top_confused": confused, "top_errors": mistakes, "classes": list(CLASSES), "files": {},
    }
    title = (f"{run.name} ({ckpt['name']}, {weights}.pt epoch {ckpt.get('epoch')}) on {tag}: "
             f"acc {result['accuracy']:.4f}")
    result["files"]["confusion"] = str(plot_confusion(rates, CLASSES, out / "confusion.png", title))
    if mistakes:
        result["files"]["mistakes"] = str(plot_mistakes(images[worst], mistakes, source, out / "mistakes.png",
                                                        f"{run.name} on {tag}: the {len(mistakes)} most confident "
                                                        f"mistakes"))
    # every item's prediction, so any number here can be recomputed (or a new one computed) without the model;
    # a CSV, not eval.json, keeps eval.json readable
    result["files"]["predictions"] = str(write_predictions(out / "predictions.csv", index, y, pred, probs))
    result["files"]["eval"] = str(out / "eval.json")
    atomic_write_json(out / "eval.json", result)
    result["report_text"] = report_text
    return result


def write_predictions(path: Path, index: np.ndarray, labels: np.ndarray, pred: np.ndarray, probs: torch.Tensor
                      ) -> Path:
    """``index,label,pred,confidence,p0..p9``: one row per item (class ids; names are eval.json's ``classes``)."""
    table = np.column_stack([index, labels, pred, probs.max(1).values.numpy(), probs.numpy()])
    header = "index,label,pred,confidence," + ",".join(f"p{c}" for c in range(probs.shape[1]))
    fmt = ["%d", "%d", "%d"] + ["%.6f"] * (1 + probs.shape[1])
    return atomic_save(lambda tmp: np.savetxt(tmp, table, fmt=fmt, delimiter=",", header=header, comments=""), path)


def plot_confusion(rates: np.ndarray, classes, path: Path, title: str) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    from fashionkit.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 8))
    ConfusionMatrixDisplay(rates, display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", values_format=".2f", xticks_rotation=45, colorbar=True, text_kw={"fontsize": 8})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (each row sums to 1)")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def plot_mistakes(images: torch.Tensor, mistakes: list[dict], source: str, path: Path, title: str,
                  cols: int = 8) -> Path:
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    rows = math.ceil(len(mistakes) / cols)
    cols = min(cols, len(mistakes))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.55, rows * 1.95 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, m in zip(axes.flat, images, mistakes):
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{source} #{m['index']}\ntrue {m['true']}\npred {m['pred']} {m['confidence']:.2f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def format_confused(confused: list[dict]) -> str:
    if not confused:
        return "no confusions: every item was classified correctly"
    width = max(len(f"{c['true']} -> {c['pred']}") for c in confused)
    lines = [f"{'true -> predicted':<{width}}  {'count':>6}  {'rate':>6}"]
    lines += [f"{c['true'] + ' -> ' + c['pred']:<{width}}  {c['count']:>6}  {c['rate']:>6.3f}" for c in confused]
    return "\n".join(lines)


# ---- compare ------------------------------------------------------------------------------------------------

COLUMNS = ("run", "model", "params", "s/epoch", "best val loss", "best val acc", "test acc", "best epoch")


def run_row(run: Path) -> tuple[dict, list[dict]]:
    """One table row and the metrics.csv rows of a run; summary.json values where it has them (a run killed
    before writing one still has its metrics.csv)."""
    from fashionkit.runs import MetricsCSV

    summary = read_json(run / "summary.json", missing_ok=True) or {}
    epochs = MetricsCSV(run / "metrics.csv").rows()
    val_loss = [float(r["val_loss"]) for r in epochs]
    val_acc = [float(r["val_acc"]) for r in epochs]
    seconds = [float(r["seconds"]) for r in epochs]
    model = summary.get("model")
    if model is None and (run / "config.yaml").is_file():
        from fashionkit.config import load_yaml

        model = load_yaml(run / "config.yaml").get("model")
    best_epoch = summary.get("best_epoch") or (int(epochs[int(np.argmin(val_loss))]["epoch"]) if epochs else None)
    return {
        "run": run.name, "path": str(run), "model": model, "params": summary.get("params"),
        "s/epoch": summary.get("seconds_per_epoch") or (sum(seconds) / len(seconds) if seconds else None),
        "best val loss": min(val_loss, default=None), "best val acc": max(val_acc, default=None),
        "test acc": summary.get("test_acc"), "best epoch": best_epoch, "status": summary.get("status", "unknown"),
    }, epochs


def compare_runs(runs: list[str | Path], out: str | Path = "compare") -> tuple[list[dict], str, dict]:
    """``(rows, markdown table, files written)`` for classify runs; writes compare.md and compare.png."""
    if not runs:
        raise UserError("give at least one classify run directory to compare")
    paths = [open_run(r, "classify") for r in runs]
    out = ensure_dir(out)
    rows, curves = [], []
    for path in paths:
        row, epochs = run_row(path)
        rows.append(row)
        curves.append(epochs)
    names = [r["run"] for r in rows]
    for row in rows:  # runs of the same name from different roots: tell them apart by path
        if names.count(row["run"]) > 1:
            row["run"] = row["path"]
    table = markdown_table(rows)
    files = {"table": str(atomic_write_text(out / "compare.md", "# classify runs\n\n" + table + "\n"))}
    if any(curves):
        files["plot"] = str(plot_compare(rows, curves, out / "compare.png"))
    return rows, table, files


def markdown_table(rows: list[dict]) -> str:
    def cell(key: str, value) -> str:
        if value is None:
            return "-"
        if key == "params":
            return f"{value:,}"
        if key == "s/epoch":
            return f"{value:.1f}"
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("run", "model") else "---:"
                                                              for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot_compare(rows: list[dict], curves: list[list[dict]], path: Path) -> Path:
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row, epochs in zip(rows, curves):
        if not epochs:
            continue
        x = [int(e["epoch"]) for e in epochs]
        label = f"{row['run']} ({row['model']})"
        ax_acc.plot(x, [float(e["val_acc"]) for e in epochs], marker="o", markersize=3, label=label)
        ax_loss.plot(x, [float(e["val_loss"]) for e in epochs], marker="o", markersize=3, label=label)
    for ax, name in ((ax_acc, "validation accuracy"), (ax_loss, "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
