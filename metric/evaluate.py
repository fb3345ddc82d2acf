"""Retrieval figures with PML's ``AccuracyCalculator``, and the before/after t-SNE plot.

precision@1: the nearest reference item has the query's class. R-precision: of the R nearest (R = the number of
reference items of the query's class), the fraction of the same class. MAP@R: mean average precision over those
R, rewarding same-class items that come first. Both embeddings are compared as unit vectors (cosine), so the
classifier's features are judged by the same geometry the metric net is trained for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
           "mean_average_precision_at_r": "map_at_r"}


def retrieval_metrics(query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor | None = None,
                      reference_labels: torch.Tensor | None = None, chunk: int = 1000) -> dict[str, float]:
    """precision@1, R-precision and MAP@R of ``query`` against ``reference`` (against itself, leaving each query
    out, when ``reference`` is None)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    # k = the largest class count in the reference, as R-precision and MAP@R need R neighbours per query
    calc = AccuracyCalculator(include=tuple(METRICS), k="max_bin_count", device=torch.device("cpu"))
    query, query_labels = F.normalize(query.float(), dim=1), query_labels.cpu()
    if reference is None:
        got = calc.get_accuracy(query, query_labels)
        return {METRICS[k]: float(v) for k, v in got.items()}
    reference = F.normalize(reference.float(), dim=1)
    # the figures are means over queries, so chunks of queries combine exactly; a chunk keeps the k-NN result
    # (chunk x R indices and distances) small where R is 6000 per class on the full reference set
    totals, n = {k: 0.0 for k in METRICS.values()}, len(query)
    for start in range(0, n, chunk):
        q, ql = query[start:start + chunk], query_labels[start:start + chunk]
        got = calc.get_accuracy(q, ql, reference, reference_labels.cpu(), ref_includes_query=False)
        for key, value in got.items():
            totals[METRICS[key]] += float(value) * len(q)
    return {k: v / n for k, v in totals.items()}


def tsne(embeddings: torch.Tensor, seed: int = 0):
    from sklearn.manifold import TSNE

    x = F.normalize(embeddings.float(), dim=1).numpy()
    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(panels: list[tuple[str, torch.Tensor]], labels: torch.Tensor, path, seed: int = 0,
              title: str = "") -> None:
    """Side-by-side t-SNE maps of the same items under different embeddings, coloured by class."""
    from fashionkit.data import CLASSES
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5.2), squeeze=False)
    labels = labels.numpy()
    classes = sorted(set(labels.tolist()))
    cmap = plt.get_cmap("tab10")
    for ax, (name, emb) in zip(axes[0], panels):
        xy = tsne(emb, seed)
        for c in classes:
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.7, color=cmap(c % 10), label=CLASSES[c])
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)
