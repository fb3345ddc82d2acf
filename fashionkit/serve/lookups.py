"""Models, indexes and the per-run doubt ranking, each loaded or computed once and shared by all requests.

Everything is cached under a key that includes the weights' and index files' modification times, so a run that
is retrained or re-indexed while the page runs is picked up on the next request, and a run that was half-written
is retried rather than remembered broken. One lock per key: concurrent requests for a model being loaded wait
for that one load instead of each loading it. Inference runs on the CPU (the page is a local tool; a look-up is
one image).

The look-up of one image is what ``classify predict`` and ``metric lookup`` do: the same preprocessing
(``read_item_image``), ``predict_probs``, the embedding net and ``RunIndex.search``; the resolver's vote and
decision follow ``metric resolve`` (inverse-distance kNN vote among the hard classes, ``decide`` with the
threshold of the metric run's ``resolve.json`` when it was made for this classifier).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionkit.errors import UserError
from fashionkit.serve.catalog import Catalog, Run

DEFAULT_K = 10


class BrokenRun(UserError):
    """A run the page was asked to use cannot be loaded: shown as an error card."""


class KeyedCache:
    """``get(key, build)``: ``build()`` once per key, under a per-key lock. A failure is remembered too (a broken
    run is not re-read on every request): keys carry the files' modification times, so a repaired run gets a new
    key and is loaded afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Any, threading.Lock] = {}
        self._values: dict[Any, Any] = {}

    def get(self, key, build):
        if key not in self._values:
            with self._lock:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if key not in self._values:
                    try:
                        value = build()
                    except UserError as e:
                        value = _Failed(e)
                    with self._lock:
                        # an older version of the same run (other mtimes) is dropped: one copy per run in memory
                        for old in [k for k in self._values if k[:2] == key[:2]]:
                            del self._values[old]
                        self._values[key] = value
        value = self._values[key]
        if isinstance(value, _Failed):
            raise type(value.error)(*value.error.args)
        return value


@dataclass
class _Failed:
    error: UserError


def _mtime(*paths: Path) -> tuple:
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


@dataclass
class Classifier:
    run: Run
    model: Any
    epoch: int | None


@dataclass
class Embedding:
    run: Run
    net: Any
    index: Any  # fashionkit.metric.index.RunIndex
    hard: list[int]
    classes: list[int]


@dataclass
class Resolver:
    """How ``metric resolve`` decides for this classifier + metric run: ``threshold`` None when no resolve.json
    was made for this pair (the kNN vote is still shown, but nothing is re-decided)."""
    k: int
    threshold: float | None
    source: str


@dataclass
class Ranking:
    """The test split through one classifier (+ metric run), ordered by doubt (smallest top-1/top-2 margin first)."""
    labels: np.ndarray
    probs: np.ndarray  # [N, C] float32
    top1: np.ndarray
    top2: np.ndarray
    margin: np.ndarray
    votes: np.ndarray | None  # kNN vote among the hard classes, -1 when none (or not a candidate)
    resolved: np.ndarray  # the final decision (= top1 without a resolver threshold)
    order: np.ndarray  # item indices, most doubtful first
    seconds: float

    @property
    def changed(self) -> np.ndarray:
        return self.resolved != self.top1


def _broken(run: Run, e: Exception) -> BrokenRun:
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return BrokenRun(f"{run.id} cannot be loaded: {text}")


class Lookups:
    def __init__(self, catalog: Catalog, data_dir: str | None = None):
        self.catalog = catalog
        self.data_dir = data_dir
        self._cache = KeyedCache()

    # ---- data ---------------------------------------------------------------------------------------------------

    def split(self, name: str):
        """``(images uint8 [N, 28, 28] tensor, labels int64 numpy)`` of the official split, loaded once."""
        def load():
            from fashionkit.data import load_split

            images, labels = load_split(name, self.data_dir)
            return images, labels.numpy()
        return self._cache.get(("split", name), load)

    # ---- models -------------------------------------------------------------------------------------------------

    def classifier(self, run: Run) -> Classifier:
        if run.error:
            raise BrokenRun(f"{run.id} cannot be used: {run.error}")
        weights = run.path / "weights" / "best.pt"

        def load():
            from fashionkit.classify.checkpoint import load_run_model

            try:
                model, ckpt, _, _ = load_run_model(run.path, "cpu")
            except Exception as e:  # UserError, or anything torch/pickle raise on a damaged file
                raise _broken(run, e) from None
            return Classifier(run, model, ckpt.get("epoch"))
        return self._cache.get(("classifier", str(run.path), _mtime(weights, run.path / "config.yaml")), load)

    def embedding(self, run: Run) -> Embedding:
        if run.error:
            raise BrokenRun(f"{run.id} cannot be used: {run.error}")
        from fashionkit.metric.index import index_paths

        weights = run.path / "weights" / "best.pt"

        def load():
            from fashionkit.metric.index import open_run_index
            from fashionkit.metric.model import load_embedder

            try:
                net, ckpt = load_embedder(run.path, "cpu")
                index = open_run_index(run.path, ckpt["model_hash"], "cpu")
            except Exception as e:
                raise _broken(run, e) from None
            classes = list(ckpt.get("classes") or run.summary.get("classes") or range(10))
            hard = list(ckpt.get("hard_classes") or run.summary.get("hard_classes") or classes)
            return Embedding(run, net, index, hard, classes)
        return self._cache.get(("embedding", str(run.path), _mtime(weights, *index_paths(run.path))), load)

    def resolver(self, classifier: Run, metric: Run) -> Resolver:
        r = metric.extra.get("resolve") or {}
        threshold = r.get("threshold")
        made_for = r.get("classifier")
        same = made_for is not None and (
            os.path.realpath(made_for) == str(classifier.path)
            or (not Path(made_for).is_absolute() and os.path.realpath(metric.path.parent / made_for)
                == str(classifier.path))
            or (metric.bundled and classifier.bundled))
        if isinstance(threshold, (int, float)) and same:
            return Resolver(int(r.get("k") or DEFAULT_K), float(threshold), f"resolve.json of {metric.id}")
        why = "no resolve.json in the metric run" if not r else f"its resolve.json was made for {made_for}"
        return Resolver(int(r.get("k") or DEFAULT_K), None, why)

    # ---- the doubt ranking ----------------------------------------------------------------------------------------

    def ranking(self, classifier: Run, metric: Run | None) -> Ranking:
        clf = self.classifier(classifier)
        emb = self.embedding(metric) if metric is not None else None
        key = ("ranking", f"{classifier.path}|{metric.path if metric else ''}", id(clf), id(emb),
               metric.extra.get("resolve", {}).get("threshold") if metric else None)
        return self._cache.get(key, lambda: self._rank(clf, emb, metric))

    def _rank(self, clf: Classifier, emb: Embedding | None, metric: Run | None) -> Ranking:
        import torch

        from fashionkit.classify.predict import predict_probs
        from fashionkit.metric.resolve import decide, knn_votes

        start = time.perf_counter()
        images, labels = self.split("test")
        probs = predict_probs(clf.model, images, torch.device("cpu")).numpy()
        if probs.shape[1] != 10:
            raise BrokenRun(f"{clf.run.id} predicts {probs.shape[1]} classes, not Fashion-MNIST's 10")
        part = np.argsort(probs, 1)
        top1, top2 = part[:, -1], part[:, -2]
        margin = probs[np.arange(len(probs)), top1] - probs[np.arange(len(probs)), top2]
        votes, resolved = None, top1.copy()
        if emb is not None:
            resolver = self.resolver(clf.run, metric)
            candidates = np.flatnonzero(np.isin(top1, emb.hard))
            votes = np.full(len(top1), -1)
            if len(candidates):
                k = min(resolver.k, emb.index.size)
                votes[candidates] = knn_votes(emb.net, emb.index, images[torch.as_tensor(candidates)], emb.hard, k,
                                              torch.device("cpu"), 1000)
            if resolver.threshold is not None:
                resolved = decide(top1, margin, votes, emb.hard, resolver.threshold)
        order = np.argsort(margin, kind="stable")
        return Ranking(labels, probs.astype(np.float32), top1, top2, margin, votes, resolved, order,
                       time.perf_counter() - start)

    # ---- one item -------------------------------------------------------------------------------------------------

    def look_up(self, image, classifier: Run | None, metric: Run | None, k: int = DEFAULT_K,
                exclude_source: int | None = None) -> dict:
        """What the classifier and the metric run say about one uint8 ``[28, 28]`` item: top probabilities, the
        ``k`` nearest reference items (``exclude_source``: a training item's own copy is left out) and the
        resolver's vote and decision."""
        import torch

        from fashionkit.data import CLASSES

        out: dict[str, Any] = {"classifier": None, "metric": None, "probabilities": [], "neighbours": [],
                               "resolver": None}
        image = torch.as_tensor(image, dtype=torch.uint8).reshape(1, 28, 28)
        top1 = margin = None
        if classifier is not None:
            from fashionkit.classify.predict import predict_probs

            clf = self.classifier(classifier)
            probs = predict_probs(clf.model, image, torch.device("cpu"))[0].numpy()
            ranked = np.argsort(-probs, kind="stable")
            out["classifier"] = classifier.id
            out["probabilities"] = [{"class": int(c), "class_name": CLASSES[c],
                                     "probability": round(float(probs[c]), 6)} for c in ranked]
            top1, margin = int(ranked[0]), float(probs[ranked[0]] - probs[ranked[1]])
            out["prediction"] = {"class": top1, "class_name": CLASSES[top1], "margin": round(margin, 6)}
        if metric is not None:
            emb = self.embedding(metric)
            out["metric"] = metric.id
            out["index_classes"] = [CLASSES[c] for c in emb.classes]
            out["neighbours"], vote = self._neighbours(emb, image, k, exclude_source,
                                                       self.resolver(classifier, metric).k if classifier else k)
            if classifier is not None:
                from fashionkit.metric.resolve import decide

                resolver = self.resolver(classifier, metric)
                decision = top1
                if resolver.threshold is not None:
                    decision = int(decide(np.array([top1]), np.array([margin]), np.array([vote]), emb.hard,
                                          resolver.threshold)[0])
                out["resolver"] = {
                    "hard_classes": [CLASSES[c] for c in emb.hard], "k": resolver.k,
                    "vote": CLASSES[vote] if vote >= 0 else None, "threshold": resolver.threshold,
                    "threshold_source": resolver.source, "decision": CLASSES[decision],
                    "changed": decision != top1,
                    "applies": top1 in emb.hard and resolver.threshold is not None and margin < resolver.threshold,
                }
        return out

    def _neighbours(self, emb: Embedding, image, k: int, exclude_source: int | None, vote_k: int
                    ) -> tuple[list[dict], int]:
        import torch

        from fashionkit.data import CLASSES
        from fashionkit.metric.data import embed
        from fashionkit.metric.resolve import EPS

        if not 1 <= k <= 100:
            raise UserError(f"k must lie between 1 and 100, got {k}")
        want = min(max(k, vote_k) + (exclude_source is not None), emb.index.size)
        z = embed(emb.net, image, torch.device("cpu")).numpy()
        dist, rows = emb.index.search(z, want)
        found = [(float(d), int(r)) for d, r in zip(dist[0], rows[0])
                 if r >= 0 and (exclude_source is None or int(emb.index.source[r]) != exclude_source)]
        # the vote of `metric resolve` (knn_votes): weight 1/distance, hard-class neighbours only; computed here
        # from the neighbours already found, so the item is embedded and searched once
        scores = {c: 0.0 for c in emb.hard}
        for d, r in found[:vote_k]:
            label = int(emb.index.labels[r])
            if label in scores:
                scores[label] += 1.0 / (d + EPS)
        vote = max(emb.hard, key=lambda c: scores[c]) if any(v > 0 for v in scores.values()) else -1
        neighbours = [{"rank": rank, "class": int(emb.index.labels[r]), "class_name": CLASSES[int(emb.index.labels[r])],
                       "distance": round(d, 6), "dataset_index": int(emb.index.source[r]),
                       "split": str(emb.index.split[r])}
                      for rank, (d, r) in enumerate(found[:k], 1)]
        return neighbours, vote
