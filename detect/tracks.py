"""Track-level classes for ``detect video --track``: one class per tracked item instead of one per frame.

The detector decides each frame on its own, so a tracked coat can read coat, shirt, coat, bag along its way. Here
every track collects

* its frames' votes: the detector's class of each detection, weighted by its confidence;
* a few crops of the item from the original frames (the best ``--crops`` by confidence x size, sampled every few
  frames so they are not near-copies), each made into a 28x28 item the way ``data/images.py`` frames a photo.

When the pass over the input is done, the crops of all tracks go through the classifier (``--classifier``; by
default the detector's crop reader, the classifier fine-tuned on crops of its training scenes: ``detect/reader.py``)
in batches; its mean probabilities and the normalised votes are mixed (``--vote-weight``) into one distribution per
track, whose top class and probability are the track's class and confidence. A track whose class is one of the
metric run's hard classes (T-shirt/top, pullover, coat, shirt by default) and whose top-1 minus top-2 margin is
under ``--resolve-margin`` is re-decided by the metric stage's kNN resolver (``--metric``): its crops are embedded,
the FAISS index gives each crop its ``k`` nearest reference items, and all of them vote with weight 1 / distance
(``metric/resolve.py``'s vote and decision). The track records that it was resolved and by which neighbours.
On a video, a track in whose crops the classifier finds no class with a mean probability of ``--min-read-conf`` or
more is left out (and not looked up by the resolver): on photographs the detector also boxes the picture's own
things, and items seen too poorly to name, and a reader of fashion items spreads its probability over several
classes on both.

A second pass then writes the outputs: detections.jsonl/csv with each detection's per-frame class and its track's
class, and the annotated video (re-read from the input, drawn from the stored detections: decoding and drawing
cost a few milliseconds a frame, inference ten times that) labelled with the track's class.

Before deciding, three clean-ups that only a tracker makes possible (video input): a track that starts within
``--stitch-gap`` frames of another's end, near where that one was heading and of a like size, is joined to it (the
tracker broke an item's track in two: it lets a lost track go after its buffer, or starts a new one when its motion
model points elsewhere); tracks seen in fewer than
``--min-track-frames`` frames are left out (a false detection on the background flashes for a frame or two; an item
stays), and a track's gaps of up to ``--fill-gaps`` frames, where the detector missed an item the tracker kept
following, get boxes interpolated between the detections either side (ByteTrack's own offline interpolation).

A folder of images is a set of unrelated pictures: each detection is a track of its own (no tracker), so each item
still gets the classifier's and the resolver's reading.

A one-class detector (``detect train --one-class``) only finds the items: its votes say that an item is there, not
which, so the classifier's reading alone names each track (and the resolver re-decides it as above); a track it could
not read is left out, since nothing else names it.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashionkit.errors import UserError

CROP_EVERY = 3  # a track offers a crop every 3rd frame: consecutive frames are near-copies
CROP_PAD = 0.1  # of the box's size on each side: the border then shows the background, which fixes the polarity
CROP_MIN_SIDE = 8  # pixels; smaller boxes say nothing the classifier can read
RESOLVE_K = 10  # neighbours per crop, as `metric resolve`'s default


# ---- which classifier and metric run ---------------------------------------------------------------------------

def auto_runs(weights: Path, reader: bool = True) -> dict:
    """What ``--classifier auto`` and ``--metric auto`` mean for the detector ``weights``; the one place that
    decides it. The classifier: the detect run's crop reader (``RUN/reader``, ``detect/reader.py``) if it has one
    (``reader``), else the classify run it was trained ``--from`` (its run.json's classifier_run) if that directory
    still exists. The metric run: the newest one with an index made from that classify run. The gate (``--gate
    auto``): the detect run's ``RUN/gate`` if it has one. The bundled detector: its reader, else the bundled
    classifier, the bundled embedding (made from that classifier) and its gate."""
    from fashionkit import bundled
    from fashionkit.detect.reader import gate_of, reader_of
    from fashionkit.runs import read_json

    chosen: dict = {"classifier": None, "metric": None, "gate": None}
    if bundled.is_bundled(weights):
        for kind in ("classifier", "metric"):
            if bundled.available(kind):
                chosen[kind] = bundled.bundled_run(kind)
        own = reader_of(bundled.bundled_dir("detector")) if reader else None
        chosen["classifier"] = own or chosen["classifier"]
        chosen["gate"] = gate_of(bundled.bundled_dir("detector"))
        return chosen
    run = detect_run_of(weights)
    chosen["gate"] = gate_of(run)
    recorded = (read_json(run / "run.json", missing_ok=True) or {}).get("classifier_run") if run else None
    if recorded:
        rec = Path(recorded)
        # as recorded (relative to where `detect train` ran), or beside the detect run in the same runs root
        for candidate in (rec, run.parent.parent / rec.parent.name / rec.name):
            if (candidate / "run.json").is_file():
                chosen["classifier"] = candidate
                break
    if chosen["classifier"] is not None:
        made_from = chosen["classifier"].resolve()
        metric_runs = [m for m in chosen["classifier"].parent.parent.glob("metric/*/run.json")
                       if (m.parent / "index" / "index.faiss").is_file()
                       and Path(str((read_json(m, missing_ok=True) or {}).get("source") or "/nonexistent"))
                       .resolve() == made_from]
        if metric_runs:
            chosen["metric"] = max(metric_runs, key=lambda m: m.stat().st_mtime).parent
    own = reader_of(run) if reader else None
    chosen["classifier"] = own or chosen["classifier"]
    return chosen


def detect_run_of(weights: Path) -> Path | None:
    """The detect run holding ``weights`` (RUN/ultralytics/weights/best.pt or .onnx), if it is one."""
    weights = Path(weights)
    for parent in (weights, *weights.parents[:3]):
        if parent.is_dir() and (parent / "run.json").is_file():
            return parent
    return None


def choose(cfg: dict, weights: Path, *keys: str) -> list[Path | None]:
    """Each of the options ``keys`` (classifier, metric, gate): a run directory, auto (``auto_runs``) or none."""
    auto = None
    chosen = []
    for key in keys:
        value = str(cfg.get(key) or "none")
        if value.lower() == "auto":
            auto = auto or auto_runs(weights)
            chosen.append(auto[key])
        elif value.lower() == "none":
            chosen.append(None)
        else:
            chosen.append(Path(value))
    return chosen


def choose_runs(cfg: dict, weights: Path) -> tuple[Path | None, Path | None]:
    """``--classifier`` and ``--metric``: a run directory, auto or none."""
    classifier, metric = choose(cfg, weights, "classifier", "metric")
    return classifier, metric


def choose_gate(cfg: dict, weights: Path) -> Path | None:
    """``--gate``: a run directory, auto (the detector's gate, if it has one) or none."""
    return choose(cfg, weights, "gate")[0]


def load_gate(cfg: dict, weights: Path, device) -> tuple[object, Path] | None:
    """``(model, run dir)`` of the ``--gate`` chosen for ``weights`` (``open_gate``), or None."""
    gate = choose_gate(cfg, weights)
    return open_gate(gate, device) if gate is not None else None


@dataclass
class Readers:
    """The models that re-read tracks: classifier, and embedder + index + hard classes of a metric run."""
    device: object
    classifier: object = None
    classifier_run: Path | None = None
    embedder: object = None
    index: object = None
    metric_run: Path | None = None
    hard: list = field(default_factory=list)
    gate: object = None  # a crop reader whose last class is "not an item" (`--gate`)
    gate_run: Path | None = None


def is_one_class(names: dict) -> bool:
    """Whether a detector only finds items (``detect train --one-class``: one class, item) and leaves naming them to
    a classifier."""
    return len(names) == 1


def reading_names(names: dict) -> dict:
    """The classes a detector's items are named with: its own, or a one-class detector's reader's (Fashion-MNIST's
    ten)."""
    from fashionkit.data.fashion_mnist import CLASSES

    return dict(enumerate(CLASSES)) if is_one_class(names) else names


def has_fashion_classes(names: dict) -> bool:
    """Whether a detector's classes (``{index: name}``) are Fashion-MNIST's ten, the classes classify and metric runs
    read."""
    from fashionkit.data.fashion_mnist import CLASSES

    return [names[i] for i in range(len(names))] == list(CLASSES)


def load_readers(classifier_run: Path | None, metric_run: Path | None, names: dict, device) -> Readers:
    """Load and check the classifier and metric runs against the detector's classes; a misfit is a UserError."""
    import torch

    from fashionkit.data.fashion_mnist import CLASSES

    readers = Readers(device)
    if classifier_run is None and metric_run is None:
        return readers
    if not has_fashion_classes(names):
        shown = ", ".join(names[i] for i in range(min(4, len(names))))
        raise UserError(f"the detector's {len(names)} classes ({shown}, ...) are not "
                        f"Fashion-MNIST's ten, which classify and metric runs know; pass --classifier none "
                        f"--metric none")
    if classifier_run is not None:
        model, _, run = open_classifier(classifier_run, device)
        readers.classifier, readers.classifier_run = model, run
    if metric_run is not None:
        from fashionkit.metric.index import open_run_index
        from fashionkit.metric.model import load_embedder
        from fashionkit.runs import open_run

        run = open_run(metric_run, "metric", what="--metric metric run")
        net, ckpt = load_embedder(run, device)
        _output_size(net, torch, what=f"--metric {run}")
        hard = [int(c) for c in ckpt.get("hard_classes", [])]
        if not hard or not set(hard) <= set(range(len(CLASSES))):
            raise UserError(f"--metric {run}: its hard classes {hard} are not among the detector's classes; pass a "
                            f"metric run trained on Fashion-MNIST classes, or none")
        index = open_run_index(run, ckpt["model_hash"], device)
        readers.embedder, readers.index, readers.metric_run, readers.hard = net, index, run, hard
    return readers


def open_gate(path: Path, device) -> tuple[object, Path]:
    """``(model, run dir)`` of ``--gate``: a classify run of Fashion-MNIST's ten classes and "not an item" (`detect
    reader --background`); another is a UserError."""
    import torch

    from fashionkit.data.fashion_mnist import CLASSES

    model, _, run = open_classifier(path, device, "--gate", ", or none")
    if _output_size(model, torch, what="--gate") != len(CLASSES) + 1:
        raise UserError(f"--gate {run}: its model reads the ten classes only, with no class for what is not an item; "
                        f"pass a gate made by `detect reader RUN --background 2 --role gate` (RUN/gate), or none")
    return model, run


def open_classifier(path: Path, device, flag: str = "--classifier", alternative: str = ", or none"
                    ) -> tuple[object, dict, Path]:
    """``(model, run config, run dir)`` of a classify run that reads 28x28 crops into Fashion-MNIST's ten classes;
    another is a UserError naming ``flag`` (and ``alternative`` to passing one)."""
    import torch

    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.runs import open_run

    run = open_run(path, "classify", what=f"{flag} classify run")
    model, _, cfg, run = load_run_model(run, device)
    classes = _output_size(model, torch, what=flag)
    if classes not in (len(CLASSES), len(CLASSES) + 1):  # + 1: a crop reader's "not an item" (`detect reader
        # --background`), whose probability the readings below leave out of the ten
        raise UserError(f"{flag} {run}: its model has {classes} outputs, not the detector's {len(CLASSES)} classes; "
                        f"pass a classify run trained on Fashion-MNIST's ten classes{alternative}")
    return model, cfg, run


def _output_size(model, torch, what: str = "--classifier") -> int:
    """The width of the model's output for one 28x28 item; a model made for another input is a UserError."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    except RuntimeError as e:
        raise UserError(f"{what}: the model does not take 28x28 items, which `detect video` crops the items to "
                        f"({str(e).splitlines()[0]}); pass a run trained on Fashion-MNIST's 28x28 images") from None
    return int(out.shape[-1])


# ---- crops -----------------------------------------------------------------------------------------------------

def crop_grey(frame: np.ndarray, box, pad: float = CROP_PAD) -> np.ndarray | None:
    """The grey pixels of ``box`` (xyxy) in a BGR ``frame``, padded by ``pad`` of its size on each side (clipped
    to the frame); None when the box is too small to read."""
    import cv2

    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if min(w, h) < CROP_MIN_SIDE:
        return None
    H, W = frame.shape[:2]
    x1, x2 = max(0, int(x1 - pad * w)), min(W, int(np.ceil(x2 + pad * w)))
    y1, y2 = max(0, int(y1 - pad * h)), min(H, int(np.ceil(y2 + pad * h)))
    return cv2.cvtColor(frame[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)


def crop_item(grey: np.ndarray):
    """A grey crop -> uint8 ``[28, 28]`` framed like a Fashion-MNIST item (``data.images.to_item``). The item may be
    lighter or darker than the ground around it (scenes paste both): the side its centre lies on decides, and the
    crop is made a light item on black before ``to_item`` trims and scales it."""
    from fashionkit.data.images import to_item

    g = grey.astype(np.float32)
    border = np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]))
    h, w = g.shape
    centre = np.median(g[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w])
    item = g - border if centre >= border else border - g
    return to_item(np.clip(item, 0, None))


def cut_crops(frames: list[np.ndarray], boxes: list[list]) -> tuple[list, list[tuple[int, int]]]:
    """Each box (xyxy) of each frame cut out as a track's crops are: ``(items, owners)``, the 28x28 items and each
    one's ``(frame, box)``; a box too small to read has none."""
    items, owners = [], []
    for f, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
        for j, box in enumerate(frame_boxes):
            grey = crop_grey(frame, box)
            if grey is not None:
                items.append(crop_item(grey))
                owners.append((f, j))
    return items, owners


def read_crops(frames: list[np.ndarray], boxes: list[list], classifier, device, n_classes: int,
               crops: tuple[list, list] | None = None) -> list[np.ndarray]:
    """Each box (xyxy) of each frame cut out as a track's crops are (or ``crops``, ``cut_crops``' of them) and read by
    ``classifier``, all of them in one batch: per frame an array ``[boxes, n_classes]`` of class probabilities, NaN
    where a box is too small to read. A reader's "not an item" (a last, extra output) is left out: what it takes from
    the classes lowers them all."""
    import torch

    from fashionkit.classify.predict import predict_probs

    items, owners = crops if crops is not None else cut_crops(frames, boxes)
    probs = [np.full((len(b), n_classes), np.nan) for b in boxes]
    if items:
        for (f, j), p in zip(owners, predict_probs(classifier, torch.stack(items), device).numpy()):
            probs[f][j] = p[:n_classes]
    return probs


def read_boxes(frames: list[np.ndarray], found: list[list[dict]], readers: Readers, names: dict,
               min_conf: float = 0.0) -> list[list[dict]]:
    """A one-class detector's detections named frame by frame (``detect video --no-track``): each box of each frame
    read by the classifier (``read_crops``); its class is the reading's top one, its confidence the box's times that
    class's probability. A box too small to read, or in which the classifier finds no class with a probability of
    ``min_conf`` or more, is left out: nothing else names it."""
    probs = read_crops(frames, [[d["box"] for d in dets] for dets in found], readers.classifier, readers.device,
                       len(names))
    named: list[list[dict]] = [[] for _ in found]
    for f, (dets, frame_probs) in enumerate(zip(found, probs)):
        for d, p in zip(dets, frame_probs):
            if np.isnan(p).any():  # too small to read
                continue
            c = int(np.argmax(p))
            if not is_unread(float(p[c]), min_conf):  # the test drop_unread applies to a track's reading
                named[f].append({**d, "class_id": c, "class_name": names[c],
                                 "conf": round(d["conf"] * float(p[c]), 4)})
    return named


# ---- collecting tracks -----------------------------------------------------------------------------------------

@dataclass
class Track:
    track_id: int
    votes: np.ndarray  # summed detector confidence per class
    counts: np.ndarray  # frames per detector class
    crops: list = field(default_factory=list)  # (score, frame index, grey crop), the best --crops
    seen: dict = field(default_factory=dict)  # frame index -> its detection, in frame order (gaps are filled from it)

    @property
    def frames(self) -> int:
        return len(self.seen)

    @property
    def first(self) -> int:
        return next(iter(self.seen))

    @property
    def last(self) -> int:
        return next(reversed(self.seen))


class TrackCollector:
    """Per track: votes and crops, fed frame by frame. ``new_ids``: every detection is a track of its own (a folder
    of unrelated images)."""

    def __init__(self, num_classes: int, crops: int, new_ids: bool = False):
        self.num_classes, self.max_crops, self.new_ids = num_classes, crops, new_ids
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def add(self, index: int, frame: np.ndarray, dets: list[dict]) -> None:
        for d in dets:
            if self.new_ids:
                d["track_id"] = self._next_id
                self._next_id += 1
            tid = d.get("track_id")
            if tid is None:
                continue
            track = self.tracks.get(tid)
            if track is None:
                track = self.tracks[tid] = Track(tid, np.zeros(self.num_classes), np.zeros(self.num_classes, int))
            track.votes[d["class_id"]] += d["conf"]
            track.counts[d["class_id"]] += 1
            track.seen[index] = d
            if self.max_crops and (track.frames - 1) % CROP_EVERY == 0:
                self._offer(track, index, frame, d)

    def _offer(self, track: Track, index: int, frame: np.ndarray, d: dict) -> None:
        x1, y1, x2, y2 = d["box"]
        score = d["conf"] * float(np.sqrt(max(x2 - x1, 0) * max(y2 - y1, 0)))
        H, W = frame.shape[:2]
        if x1 <= 1 or y1 <= 1 or x2 >= W - 1 or y2 >= H - 1:
            score *= 0.5  # cut by the frame's edge: a partial item
        if len(track.crops) >= self.max_crops and score <= min(c[0] for c in track.crops):
            return
        grey = crop_grey(frame, d["box"])
        if grey is None:
            return
        if len(track.crops) >= self.max_crops:
            track.crops.remove(min(track.crops, key=lambda c: c[0]))
        track.crops.append((score, index, grey))


# ---- deciding --------------------------------------------------------------------------------------------------

def mix(votes: np.ndarray, probs: np.ndarray | None, vote_weight: float) -> np.ndarray:
    """One class distribution per track from the detector's confidence-weighted votes ``[T, C]`` and the
    classifier's mean probabilities over the track's crops ``[T, C]`` (None, or NaN rows: no classifier reading).
    A one-class detector's votes ``[T, 1]`` say that an item is there, not which: the reading alone names it (a row
    it did not read gets an even distribution)."""
    votes = np.asarray(votes, float)
    if votes.shape[1] == 1 and probs is not None:
        votes, vote_weight = np.ones((len(votes), np.shape(probs)[1])), 0.0
    total = votes.sum(1, keepdims=True)
    p_votes = np.divide(votes, total, out=np.full_like(votes, 1.0 / votes.shape[1]), where=total > 0)
    if probs is None:
        return p_votes
    probs = np.asarray(probs, float)
    read = ~np.isnan(probs).any(1, keepdims=True)
    return np.where(read, vote_weight * p_votes + (1 - vote_weight) * np.nan_to_num(probs), p_votes)


def decide_tracks(collector: TrackCollector, readers: Readers, names: dict, vote_weight: float,
                  resolve_margin: float, k: int = RESOLVE_K, batch_size: int = 256,
                  skip_resolve_under: float = 0.0, frame_names: dict | None = None) -> dict[int, dict]:
    """Each track's class (one of ``names``), confidence and how it was reached (see the module doc). Tracks whose
    classifier reading is under ``skip_resolve_under`` (``--min-read-conf``: ``drop_unread`` will leave them out) are
    not looked up. ``frame_names``: the detector's own classes, when they are not ``names`` (a one-class
    detector)."""
    import torch

    from fashionkit.classify.predict import predict_probs
    from fashionkit.metric.resolve import decide, knn_neighbours, top2, weighted_vote

    tracks = list(collector.tracks.values())
    if not tracks:
        return {}
    votes = np.stack([t.votes for t in tracks])
    reading = readers.classifier is not None or readers.embedder is not None
    crop_of = [(i, c) for i, t in enumerate(tracks) for c in t.crops] if reading else []  # (track, crop), flat
    items = torch.stack([crop_item(c[2]) for _, c in crop_of]) if crop_of else torch.zeros(0, 28, 28,
                                                                                            dtype=torch.uint8)
    owners = np.array([i for i, _ in crop_of], int)  # each crop's track
    probs = None
    not_item_of = np.full(len(tracks), np.nan)  # the classifier's own "not an item", where it has one
    if readers.classifier is not None:
        crop_probs = predict_probs(readers.classifier, items, readers.device, batch_size=batch_size).numpy()
        # a crop reader with a "not an item" class (the last): its share is left out of the classes, so a track
        # the reader takes for background is read under --min-read-conf and left out
        probs = track_means(crop_probs[:, :len(names)], owners, len(tracks))
        if crop_probs.shape[1] > len(names):
            not_item_of = track_means(crop_probs[:, len(names)], owners, len(tracks))
    not_item = np.full(len(tracks), np.nan)  # the gate's mean "not an item" over each track's crops
    if readers.gate is not None and crop_of:
        gate_probs = predict_probs(readers.gate, items, readers.device, batch_size=batch_size).numpy()[:, -1]
        not_item = track_means(gate_probs, owners, len(tracks))
    mixed = mix(votes, probs, vote_weight)
    top1, margin = top2(mixed)
    # the classifier's own class and confidence per track (None where it read no crop), as drop_unread sees them
    none = {"class_id": None, "conf": None}
    reading_of = ([none] * len(tracks) if probs is None else
                  [none if np.isnan(p).any() else {"class_id": int(np.argmax(p)), "conf": round(float(p.max()), 4)}
                   for p in probs])
    resolver_votes = np.full(len(tracks), -1)
    neighbours: dict[int, list] = {}
    if readers.embedder is not None:
        left_out = {i for i, r in enumerate(reading_of) if is_unread(r["conf"], skip_resolve_under)}
        ask = [i for i in range(len(tracks)) if top1[i] in readers.hard and margin[i] < resolve_margin
               and tracks[i].crops and i not in left_out]
        asking = set(ask)
        asked = [n for n, (i, _) in enumerate(crop_of) if i in asking]
        dist, rows = knn_neighbours(readers.embedder, readers.index, items[torch.as_tensor(asked, dtype=torch.long)],
                                    min(k, readers.index.size), readers.device, batch_size)
        owners = np.array([crop_of[n][0] for n in asked], int)
        for i in ask:
            d, r = dist[owners == i].reshape(1, -1), rows[owners == i].reshape(1, -1)  # all its crops' neighbours
            resolver_votes[i] = weighted_vote(readers.index, d, r, readers.hard)[0]
            neighbours[i] = nearest(readers.index, d[0], r[0], k, names)
    final = decide(top1, margin, resolver_votes, readers.hard, resolve_margin)
    resolved = np.isin(top1, readers.hard) & (margin < resolve_margin) & (resolver_votes >= 0)
    decisions = {}
    for i, t in enumerate(tracks):
        c = int(final[i])
        decisions[t.track_id] = {
            "track_id": t.track_id, "frames": t.frames, "first_frame": t.first, "last_frame": t.last,
            "class_id": c, "class_name": names[c], "conf": round(float(mixed[i, c]), 4),
            "margin": round(float(margin[i]), 4), "before_resolve_class_id": int(top1[i]),
            "frame_classes": {(frame_names or names)[j]: int(n) for j, n in enumerate(t.counts) if n},
            "vote_class_id": int(np.argmax(t.votes)) if len(t.votes) > 1 else None,  # one class: no vote on which
            "classifier_class_id": reading_of[i]["class_id"], "classifier_conf": reading_of[i]["conf"],
            "classifier_not_item": None if np.isnan(not_item_of[i]) else round(float(not_item_of[i]), 4),
            "gate_not_item": None if np.isnan(not_item[i]) else round(float(not_item[i]), 4),
            "crops": len(t.crops),
            "resolved": bool(resolved[i]),
            "resolver_class_id": int(resolver_votes[i]) if resolver_votes[i] >= 0 else None,
            "neighbours": neighbours.get(i, []),
        }
    return decisions


def track_means(values: np.ndarray, owners: np.ndarray, tracks: int) -> np.ndarray:
    """Per track, the mean of its crops' rows of ``values`` (``[crops, ...]``, crop n of track ``owners[n]``); NaN
    for a track without crops."""
    out = np.full((tracks, *values.shape[1:]), np.nan)
    for i in np.unique(owners):
        out[i] = values[owners == i].mean(0)
    return out


def nearest(index, dist: np.ndarray, rows: np.ndarray, k: int, names: dict) -> list[dict]:
    """The ``k`` nearest distinct reference items among a track's crops' neighbours."""
    seen, out = set(), []
    for n in np.argsort(dist, kind="stable"):
        if rows[n] < 0 or len(out) >= k:
            continue
        source = int(index.source[rows[n]])
        if source in seen:
            continue
        seen.add(source)
        label = int(index.labels[rows[n]])
        out.append({"dataset_index": source, "split": "train", "class_id": label, "class_name": names[label],
                    "distance": round(float(dist[n]), 4)})
    return out


# ---- the outputs ---------------------------------------------------------------------------------------------

def gap_fills(collector: TrackCollector, stride: int, max_gap: int) -> dict[int, list[dict]]:
    """Boxes for the frames where a track lost its item for at most ``max_gap`` processed frames and found it again:
    linear interpolation between the detections on either side, as ByteTrack's own offline post-processing does (a
    detector misses an item for a frame or two under blur or overlap while the tracker still follows it). Each filled
    detection carries the class and confidence of the detection before the gap and ``"interpolated": true``.
    Returns frame index -> the detections to add there."""
    fills: dict[int, list[dict]] = {}
    if max_gap <= 0:
        return fills
    for t in collector.tracks.values():
        frames = list(t.seen)
        for a, b in zip(frames, frames[1:]):
            if not 1 < (b - a) // stride <= max_gap + 1:
                continue
            box_a, box_b = np.array(t.seen[a]["box"]), np.array(t.seen[b]["box"])
            for f in range(a + stride, b, stride):
                w = (f - a) / (b - a)
                fills.setdefault(f, []).append({
                    **{k: t.seen[a][k] for k in ("class_id", "class_name", "conf", "track_id")},
                    "box": [round(float(v), 1) for v in (1 - w) * box_a + w * box_b], "interpolated": True})
    return fills


class BoxesBefore:
    """The detector's boxes before the tracker, kept for `first_boxes` where it may read them: the frame before each
    track's first, and the latest frame (a track may start on the next). Any other frame's boxes are let go as the
    video goes on, so a long video does not hold every frame's boxes to the end of the first pass."""

    def __init__(self, stride: int):
        self.stride = stride
        self.boxes: dict[int, np.ndarray] = {}  # frame index -> [N, 6] x1 y1 x2 y2 conf class
        self._needed: set[int] = set()
        self._known = 0  # tracks of the collector already looked at (it only adds them during the first pass)
        self._waiting: list[int] = []  # the latest frame of the batch before, not yet decided

    def add(self, indices: list[int], boxes: list[np.ndarray], collector: TrackCollector) -> None:
        """Keep the boxes of frames ``indices`` (in order, already in ``collector``), and let go of those no track
        needs. A track first seen in this batch starts in it, so the frame before its first is this batch's or the
        one waiting from the batch before: only those are decided here, not every frame kept so far."""
        self.boxes.update(zip(indices, boxes))
        for t in itertools.islice(collector.tracks.values(), self._known, None):
            self._needed.add(t.first - self.stride)
        self._known = len(collector.tracks)
        for f in [*self._waiting, *indices[:-1]]:
            if f not in self._needed:
                del self.boxes[f]
        self._waiting = indices[-1:]


def first_boxes(collector: TrackCollector, raw: dict[int, np.ndarray], stride: int, names: dict
                ) -> dict[int, list[dict]]:
    """The box each track had in the frame before its first. BoT-SORT confirms a new track on its second frame and
    ultralytics reports confirmed tracks only, so every track that starts after the input's first frame loses the
    detection that started it. ``raw``: frame index -> the detector's boxes there before the tracker, ``[N, 6]`` x1
    y1 x2 y2 conf class (``names``: the class names). The one overlapping the track's first box most, at IoU 0.5 or
    more, and no box of another track in that frame, is put back with the track's id. Returns frame index -> the
    detections to add there (as ``gap_fills``, but the detector's own boxes: ``interpolated`` false)."""
    from fashionkit.detect.scoring import box_iou
    from fashionkit.detect.video import detection

    followed: dict[int, list] = {}  # frame -> the boxes tracks have there
    for t in collector.tracks.values():
        for f, d in t.seen.items():
            followed.setdefault(f, []).append(d["box"])
    added: dict[int, list[dict]] = {}
    for t in collector.tracks.values():
        f = t.first - stride
        boxes = raw.get(f)
        if boxes is None or not len(boxes):
            continue
        fit = box_iou(boxes[:, :4], np.array([t.seen[t.first]["box"]], float))[:, 0]
        taken = box_iou(boxes[:, :4], np.array(followed.get(f, []), float).reshape(-1, 4)).max(1, initial=0.0)
        fit[taken >= 0.5] = 0.0
        best = int(np.argmax(fit))
        if fit[best] >= 0.5:
            *box, conf, c = boxes[best]
            added.setdefault(f, []).append({**detection(box, conf, c, names), "track_id": t.track_id,
                                            "interpolated": False})
    return added


STITCH_DISTANCE = 0.5  # of the earlier track's box size: how far from where it was heading the later one may start
STITCH_SIZE = 1.5  # the two boxes' sizes may differ by this factor at most


def centre_and_size(box) -> tuple[np.ndarray, float]:
    """The centre ``[x, y]`` of an xyxy box and its size, the square root of its area."""
    b = np.asarray(box, float)
    return (b[:2] + b[2:]) / 2, float(np.sqrt(np.prod(b[2:] - b[:2])))


def stitch(collector: TrackCollector, max_gap: int, stride: int = 1) -> dict[int, int]:
    """Join tracks the tracker broke: a track that starts at most ``max_gap`` processed frames after another ended,
    near where the other was heading (its last box moved on at its last velocity, within ``STITCH_DISTANCE`` of its
    size) and of a like size, continues it. Offline, like ``gap_fills``: the tracker has to decide at once and lets a
    lost track go after its buffer, or starts a new one when its motion model points elsewhere. Returns the joined
    track ids -> the id they continue (the earlier one; ``collector`` keeps only that track, with both parts' frames,
    votes and best crops)."""
    alias: dict[int, int] = {}
    if max_gap <= 0:
        return alias
    for later in sorted(collector.tracks.values(), key=lambda t: t.first):
        start_centre, size_later = centre_and_size(later.seen[later.first]["box"])
        best, best_cost = None, STITCH_DISTANCE
        for earlier in collector.tracks.values():
            gap = later.first - earlier.last
            if earlier is later or not 0 < gap <= max_gap * stride:
                continue
            # its velocity over its last five frames (all of them if it has fewer)
            back, last = next(itertools.islice(reversed(earlier.seen), 4, None), earlier.first), earlier.last
            back_centre, _ = centre_and_size(earlier.seen[back]["box"])
            last_centre, size = centre_and_size(earlier.seen[last]["box"])
            velocity = (last_centre - back_centre) / (last - back) if last > back else 0.0
            if not size or not 1 / STITCH_SIZE <= size_later / size <= STITCH_SIZE:
                continue
            cost = float(np.linalg.norm(last_centre + velocity * gap - start_centre)) / size
            if cost < best_cost:
                best, best_cost = earlier, cost
        if best is None:
            continue
        best.votes += later.votes
        best.counts += later.counts
        best.seen.update(later.seen)  # every frame of the later track comes after the earlier one's last
        best.crops = sorted(best.crops + later.crops, key=lambda c: -c[0])[:collector.max_crops]
        # no chains to follow: tracks go in order of their first frame, so nothing has joined ``later`` yet, and
        # ``best``, already past its own turn, is never joined to another after this
        del collector.tracks[later.track_id]
        alias[later.track_id] = best.track_id
    return alias


def drop_short(collector: TrackCollector, min_frames: int) -> set[int]:
    """Take the tracks seen in fewer than ``min_frames`` frames out of ``collector`` (a false detection flashes for
    a frame or two; an item stays) and return their ids."""
    short = {tid for tid, t in collector.tracks.items() if t.frames < min_frames}
    for tid in short:
        del collector.tracks[tid]
    return short


def is_unread(classifier_conf: float | None, min_conf: float) -> bool:
    """Whether ``drop_unread`` leaves a track out: the classifier read its crops (a confidence, not None) and found
    no class at ``min_conf`` or more. One test for both it and ``decide_tracks``'s skip of the resolver."""
    return classifier_conf is not None and classifier_conf < min_conf


def drop_unread(decisions: dict[int, dict], min_conf: float, unnamed: bool = False,
                max_not_item: float | None = None) -> set[int]:
    """Take the tracks in whose crops the classifier found no class with a mean probability of ``min_conf`` or
    more out of ``decisions`` and return their ids. On photographs the detector also boxes the picture's own things, and
    names items too small, blurred or covered to see; the reader, trained on fashion items, spreads its probability
    over several classes on both. Tracks it did not read (no classifier, no crop big enough) stay, unless
    ``unnamed`` (a one-class detector: nothing else names them). With ``max_not_item``, so do the tracks the gate
    (``--gate``) calls not an item with at least that mean probability."""
    unread = {tid for tid, t in decisions.items() if is_unread(t["classifier_conf"], min_conf)
              or (unnamed and t["classifier_conf"] is None)
              or (max_not_item is not None and t.get("gate_not_item") is not None
                  and t["gate_not_item"] >= max_not_item)}
    for tid in unread:
        del decisions[tid]
    return unread


def label(d: dict, decisions: dict[int, dict]) -> dict:
    """A detection with its track's class added (the per-frame fields stay as they are)."""
    t = decisions.get(d.get("track_id"))
    return {**d, "track_class_id": t["class_id"] if t else None, "track_class_name": t["class_name"] if t else None,
            "track_conf": t["conf"] if t else None, "track_resolved": t["resolved"] if t else None,
            "interpolated": bool(d.get("interpolated", False))}


def draw(image: np.ndarray, dets: list[dict], names: dict) -> np.ndarray:
    """Boxes labelled with the track's class (``id:3 coat 0.71``, ``+kNN`` when the resolver decided it), in the
    style of ultralytics' ``Results.plot``; a detection without a track keeps its own class."""
    from ultralytics.utils.plotting import Annotator, colors

    annotator = Annotator(image, line_width=2, example=str(names))
    for d in reversed(dets):
        c = d["track_class_id"] if d.get("track_class_id") is not None else d["class_id"]
        if d.get("track_class_id") is not None:
            text = f"id:{d['track_id']} {d['track_class_name']} {d['track_conf']:.2f}"
            text += " +kNN" if d["track_resolved"] else ""
        else:
            text = f"{d['class_name']} {d['conf']:.2f}"
        annotator.box_label(d["box"], text, color=colors(c, True))
    return annotator.result()


def labelled_frames(lines_path: Path, source, decisions: dict[int, dict], names: dict, frames: bool,
                    fills: dict[int, list[dict]] | None = None, dropped: set[int] = frozenset(),
                    joined: dict[int, int] | None = None) -> Iterator[tuple[dict, str, np.ndarray | None]]:
    """The second pass: each stored line with its track classes added, the ``fills`` of its frame (``gap_fills``,
    ``first_boxes``) added and the detections of ``dropped`` tracks left out, and (``frames``) its frame re-read from
    the input and drawn."""
    images = iter(_reread(source)) if frames else None
    fills, joined = fills or {}, joined or {}
    with Path(lines_path).open() as f:
        for text in f:
            line = json.loads(text)
            dets = line["detections"] + fills.get(line["frame"], [])
            for d in dets:  # a stitched track's later part carries the id of the track it continues
                if d.get("track_id") in joined:
                    d["track_id"] = joined[d["track_id"]]
            line["detections"] = [label(d, decisions) for d in dets if d.get("track_id") not in dropped]
            name = line.get("source") or f"frame {line['frame']}"
            image = None
            if images is not None:
                for index, _, frame in images:
                    if index == line["frame"]:
                        image = draw(frame, line["detections"], names)
                        break
            yield line, name, image


def _reread(source) -> Iterator[tuple[int, str, np.ndarray]]:
    import cv2

    from fashionkit.detect.video import Source, to_bgr8

    if source.kind == "video":
        yield from Source.open(source.path, source.stride, source.max_frames)
        return
    for i, file in enumerate(source.files[:: source.stride]):
        image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if image is not None:  # unreadable ones were warned about and skipped in the first pass
            yield i * source.stride, file.name, to_bgr8(image)


def summary(decisions: dict[int, dict], readers: Readers, cfg: dict, seconds: dict, dropped: int = 0,
            filled: int = 0, stitched: int = 0, unread: int = 0, untracked: int = 0, first: int = 0) -> dict:
    rows = sorted(decisions.values(), key=lambda t: t["track_id"])
    return {
        "stitch_gap": cfg["stitch_gap"], "stitched": stitched,
        "min_track_frames": cfg["min_track_frames"], "dropped_short": dropped, "dropped_untracked_boxes": untracked,
        "min_read_conf": cfg["min_read_conf"], "dropped_unread": unread,
        "gate": str(readers.gate_run) if readers.gate_run else None, "max_not_item": cfg["max_not_item"],
        "fill_gaps": cfg["fill_gaps"], "filled_boxes": filled, "first_boxes_put_back": first,
        "classifier": str(readers.classifier_run) if readers.classifier_run else None,
        "metric": str(readers.metric_run) if readers.metric_run else None,
        "hard_classes": readers.hard, "vote_weight": cfg["vote_weight"], "resolve_margin": cfg["resolve_margin"],
        "crops_per_track": cfg["crops"], "k": RESOLVE_K if readers.metric_run else None,
        "count": len(rows), "resolved": sum(t["resolved"] for t in rows),
        "changed_by_resolver": sum(t["class_id"] != t["before_resolve_class_id"] for t in rows),
        "crops_read": sum(t["crops"] for t in rows) if readers.classifier_run or readers.metric_run else 0,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "items": rows,
    }


def format_lines(s: dict) -> list[str]:
    lines = []
    t = s.get("tracks")
    if t:
        readers = [f"classifier {t['classifier']}" if t["classifier"] else "no classifier",
                   f"kNN resolver {t['metric']}" if t["metric"] else "no kNN resolver",
                   *([f"gate {t['gate']}"] if t.get("gate") else [])]
        lines.append(f"tracks: {t['count']} items, one class each ({', '.join(readers)}); {t['resolved']} resolved "
                     f"by kNN; {t['seconds']['decide']:.2f}s deciding, {t['seconds']['second_pass']:.2f}s writing")
        if t.get("dropped_short") or t.get("filled_boxes") or t.get("dropped_untracked_boxes") \
                or t.get("first_boxes_put_back"):
            untracked = (f", {t['dropped_untracked_boxes']} boxes left out that no track followed"
                         if t.get("dropped_untracked_boxes") else "")
            first = (f", {t['first_boxes_put_back']} tracks' first boxes put back (the tracker confirms a track on "
                     f"its second frame)" if t.get("first_boxes_put_back") else "")
            lines.append(f"tracks: {t['dropped_short']} left out (seen in fewer than {t['min_track_frames']} frames)"
                         f"{untracked}, {t['filled_boxes']} boxes filled into gaps of up to {t['fill_gaps']} frames"
                         f"{first}")
        if t.get("dropped_unread"):
            gate = f", or the gate called them not an item ({t['max_not_item']} or more)" if t.get("gate") else ""
            lines.append(f"tracks: {t['dropped_unread']} left out (the classifier found no class with probability "
                         f"{t['min_read_conf']} or more: not a fashion item, or seen too poorly to name{gate})")
    g = s.get("gt", {}).get("tracks")
    if g:
        a, b = g["per_frame"], g["track"]
        lines.append(f"track classes vs ground truth: flicker {a['flicker']} -> {b['flicker']} changes per 100 "
                     f"track-frames ({a['gt_flicker']} -> {b['gt_flicker']} along ground-truth items); per-track "
                     f"accuracy {a['accuracy']} -> {b['accuracy']} ({g['track']['matched_tracks']} tracks matched, "
                     f"{g['track']['unmatched_tracks']} false)")
    return lines


def check_options(cfg: dict) -> None:
    if not 0 <= cfg["vote_weight"] <= 1 or not 0 <= cfg["resolve_margin"] <= 1 or not 0 <= cfg["min_read_conf"] <= 1 \
            or not 0 <= cfg["max_not_item"] <= 1:
        raise UserError(f"--vote-weight {cfg['vote_weight']}, --resolve-margin {cfg['resolve_margin']}, "
                        f"--min-read-conf {cfg['min_read_conf']} and --max-not-item {cfg['max_not_item']} "
                        f"must lie in [0, 1]")


def note(readers: Readers, cfg: dict) -> None:
    if readers.classifier is None and str(cfg.get("classifier")).lower() == "auto":
        print("note: --classifier auto found no classify run for this detector (its run.json names none, or that "
              "directory is gone); track classes come from the detector's votes alone", file=sys.stderr)
