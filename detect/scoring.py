"""Scoring ``detect video`` against the ground truth of a ``detect make-video`` clip (its .json: per frame, boxes
with ``track_id``, ``class_id``, ``box`` and ``visible``).

Per frame (``Score``): precision and recall at IoU 0.5, with and without the class, matched greedily, most
confident detection first (as VOC/COCO do).

Per track (``TrackScore``, with ``--track``), how steady and how right the classes of tracked items are:

* class flicker: class changes from one frame of a predicted track to its next, per 100 track-frames;
  and the same along each ground-truth item (the classes of the detections matched to it, frame after frame), which
  also counts a change where the tracker lost an item and a new track picked it up with another class;
* per-track class accuracy: each predicted track is assigned the ground-truth item it matches most often at IoU 0.5
  (class-agnostic), and scores the share of those matched frames in which its class is that item's class: with
  per-frame classes a fraction, with the track-level decision (one class per track) 0 or 1. The mean over tracks
  is the accuracy; tracks that never match an item (false tracks) are counted apart.

Both are computed for the per-frame classes (``class_id``) and for the track-level decision (``track_class_id``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashionkit.errors import UserError

IOU_MATCH = 0.5


def box_area(a: np.ndarray) -> np.ndarray:
    """Areas of ``[N, 4]`` xyxy boxes."""
    return np.prod(a[:, 2:] - a[:, :2], axis=1)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas, ``[N, M]``, of ``[N, 4]`` and ``[M, 4]`` xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``[N, 4]`` and ``[M, 4]`` xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = box_intersection(a, b)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter + 1e-9)


def _boxes(items: list[dict]) -> np.ndarray:
    return np.array([x["box"] for x in items], float).reshape(-1, 4)


@dataclass
class Score:
    """True/false positives and misses at IoU 0.5, counted both with and without the class."""
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tp_box: int = 0  # class-agnostic: the box is right, whatever the class
    fp_box: int = 0
    fn_box: int = 0

    def add(self, dets: list[dict], gt: list[dict], min_visible: float) -> None:
        for agnostic in (False, True):
            tp, fp, fn = match(dets, gt, min_visible, agnostic)
            if agnostic:
                self.tp_box, self.fp_box, self.fn_box = self.tp_box + tp, self.fp_box + fp, self.fn_box + fn
            else:
                self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn

    def result(self) -> dict:
        return {"iou": IOU_MATCH, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "precision": ratio(self.tp, self.tp + self.fp), "recall": ratio(self.tp, self.tp + self.fn),
                "box_precision": ratio(self.tp_box, self.tp_box + self.fp_box),
                "box_recall": ratio(self.tp_box, self.tp_box + self.fn_box)}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 5) if b else None


def match(dets: list[dict], gt: list[dict], min_visible: float, agnostic: bool = False) -> tuple[int, int, int]:
    """Greedy matching, most confident detection first, each ground-truth box used once (as in VOC/COCO).
    Ground truth less visible than ``min_visible`` is "ignore": a detection on it is neither right nor wrong."""
    dets = sorted(dets, key=lambda d: -d["conf"])
    care = [g for g in gt if g.get("visible", 1.0) >= min_visible]
    ignore = [g for g in gt if g.get("visible", 1.0) < min_visible]
    iou = box_iou(_boxes(dets), _boxes(care))
    iou_ignore = box_iou(_boxes(dets), _boxes(ignore))
    used = np.zeros(len(care), bool)
    tp = fp = 0
    for i, d in enumerate(dets):
        ok = iou[i] >= IOU_MATCH
        if not agnostic:
            ok &= np.array([g["class_id"] == d["class_id"] for g in care], bool)
        ok &= ~used
        if ok.any():
            used[np.argmax(np.where(ok, iou[i], -1))] = True
            tp += 1
        elif not (iou_ignore[i] >= IOU_MATCH).any():
            fp += 1
    return tp, fp, int((~used).sum())


def pair_boxes(dets: list[dict], gt: list[dict]) -> list[int | None]:
    """For each detection, the index of the ground-truth box it matches at IoU 0.5 whatever the class (greedy, most
    confident first, each box once), or None."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["conf"])
    iou = box_iou(_boxes(dets), _boxes(gt))
    used = np.zeros(len(gt), bool)
    pairs: list[int | None] = [None] * len(dets)
    for i in order:
        ok = (iou[i] >= IOU_MATCH) & ~used
        if ok.any():
            j = int(np.argmax(np.where(ok, iou[i], -1)))
            used[j] = True
            pairs[i] = j
    return pairs


def load_gt(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ground truth not found: {path} (made by `detect make-video` next to the .mp4)")
    try:
        frames = json.loads(path.read_text())
        ok = isinstance(frames, list) and all(isinstance(f, list) for f in frames)
        ok = ok and all({"class_id", "box"} <= set(b) for f in frames for b in f)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a `detect make-video` ground truth (a JSON list of frames of boxes)")
    return frames


# ---- tracks ---------------------------------------------------------------------------------------------------

def class_changes(sequences: dict) -> tuple[int, int]:
    """``(changes, frames)`` over class sequences (one list per track, in frame order): a change is a frame whose
    class differs from the track's previous frame's."""
    changes = sum(sum(a != b for a, b in zip(seq, seq[1:])) for seq in sequences.values())
    return changes, sum(len(seq) for seq in sequences.values())


def flicker(sequences: dict) -> float | None:
    """Class changes per 100 track-frames."""
    changes, frames = class_changes(sequences)
    return round(100 * changes / frames, 3) if frames else None


def owner(matches: Counter) -> int:
    """The ground-truth item a track follows: the one it matched most often (ties: the smaller id)."""
    return min(matches.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def track_accuracy(records: list[tuple], key: int) -> dict:
    """Per-track class accuracy from ``records`` = ``(track_id, gt_track_id or None, gt_class, class...)`` (one per
    tracked detection; ``key`` the position of the class to judge). Each track is assigned the ground-truth item
    it matched most often (ties: the smaller id); it scores the share of those frames with the right class."""
    matched: dict = defaultdict(Counter)
    tracks = set()
    for r in records:
        tracks.add(r[0])
        if r[1] is not None:
            matched[r[0]][r[1]] += 1
    owners = {t: owner(c) for t, c in matched.items()}
    right: dict = defaultdict(int)
    frames: dict = defaultdict(int)
    for r in records:
        if r[1] is not None and owners.get(r[0]) == r[1]:
            frames[r[0]] += 1
            right[r[0]] += r[key] == r[2]
    shares = [right[t] / frames[t] for t in frames]
    return {"accuracy": round(float(np.mean(shares)), 5) if shares else None,
            "correct_tracks": sum(right[t] == frames[t] for t in frames),
            "matched_tracks": len(frames), "unmatched_tracks": len(tracks) - len(frames)}


@dataclass
class TrackScore:
    """Collects every tracked detection of a run against the ground truth; ``result()`` gives flicker and
    per-track accuracy for the per-frame classes and for the track-level decision."""
    records: list = field(default_factory=list)  # (track_id, gt_track_id, gt_class, frame class, track class)
    frames: list = field(default_factory=list)  # (gt_track_id, frame class, track class), frame after frame

    def add(self, dets: list[dict], gt: list[dict]) -> None:
        pairs = pair_boxes(dets, gt)
        for d, j in zip(dets, pairs):
            track_class = d.get("track_class_id", d["class_id"])
            if j is not None:
                self.frames.append((gt[j].get("track_id", -1), d["class_id"], track_class))
            if d.get("track_id") is None:
                continue
            g = gt[j] if j is not None else None
            self.records.append((d["track_id"], None if g is None else g.get("track_id", -1),
                                 None if g is None else g["class_id"], d["class_id"], track_class))

    def result(self) -> dict:
        out = {}
        for name, pos in (("per_frame", 3), ("track", 4)):
            by_track: dict = defaultdict(list)
            for r in self.records:
                by_track[r[0]].append(r[pos])
            along_gt: dict = defaultdict(list)
            for g, *classes in self.frames:
                along_gt[g].append(classes[pos - 3])
            out[name] = {"flicker": flicker(by_track), "changes": class_changes(by_track)[0],
                         "gt_flicker": flicker(along_gt), "gt_changes": class_changes(along_gt)[0],
                         **track_accuracy(self.records, pos)}
        out["tracks"] = len({r[0] for r in self.records})
        out["track_frames"] = len(self.records)
        return out


def with_track_classes(dets: list[dict]) -> list[dict]:
    """Detections judged by their track's class (where they have one) instead of their own."""
    return [{**d, "class_id": d["track_class_id"]} if d.get("track_class_id") is not None else d for d in dets]
