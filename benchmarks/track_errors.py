"""Which tracks ``detect video --track`` named wrong on a ``detect make-video`` clip, as pairs of (the item's class,
the track's class): are the wrong ones the hard classes the resolver is for, or something else? And which items
the run's boxes missed, by the item's size at the detector's input: is recall lost on small items or everywhere?

    .venv/bin/python benchmarks/track_errors.py OUT_DIR [--gt clip.json] [--min-visible 0.5]

OUT_DIR is a ``detect video --track --gt clip.json`` output folder (a ``track_sweep.py`` setting's folder, for
example). Each track is given the ground-truth item it matched most often at IoU 0.5 (``scoring.owner``, the rule
of ``scoring.track_accuracy``), so "right of matched" here is the sweep's "tracks right". Items less visible than
``--min-visible`` are left out, as in the run's own scoring. An item's size is the short side of its box, scaled
as the frame is for the detector (``imgsz`` over the frame's long side, from summary.json; frame pixels where the
run does not say); a missed item either had no output box within IoU 0.1 ("nothing there") or only ones that
overlap it too little ("box off"), and "at the edge" means its box touches the frame's border (cut by it).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from fashionkit.data.fashion_mnist import parse_classes
from fashionkit.metric.defaults import HARD_CLASSES

HARD = set(parse_classes(HARD_CLASSES))  # T-shirt/top, pullover, coat, shirt: the metric stage's classes
SIZES = [0, 10, 15, 20, 30, 45, 70, 100]  # short side at the detector's input, px: bins from each to the next (last:
# and above); the realistic scenes' items start at about 20 px (`detect make-data --help`)


def size_bin(short: float) -> str:
    i = max(k for k, lo in enumerate(SIZES) if short >= lo)
    return f"{SIZES[i]}-{SIZES[i + 1]}" if i + 1 < len(SIZES) else f"{SIZES[i]}+"


def main() -> None:
    import numpy as np

    from fashionkit.data import CLASSES
    from fashionkit.detect.scoring import box_iou, owner, pair_boxes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a `detect video --track` output folder (detections.jsonl, summary.json)")
    p.add_argument("--gt", default=None, help="the clip's ground truth (default: the one summary.json names)")
    p.add_argument("--min-visible", type=float, default=None, help="default: the run's own (summary.json)")
    args = p.parse_args()

    out = Path(args.out)
    if not (out / "detections.jsonl").is_file() or not (out / "summary.json").is_file():
        raise SystemExit(f"error: {out} holds no detections.jsonl and summary.json: give a `detect video --track` "
                         f"output folder")
    summary = json.loads((out / "summary.json").read_text())
    scoring = summary.get("gt") or {}
    gt_file = args.gt or scoring.get("file")
    if not gt_file:
        raise SystemExit(f"error: {out} was not scored against a ground truth: give --gt clip.json")
    min_visible = args.min_visible if args.min_visible is not None else scoring.get("min_visible", 0.5)
    truth = json.loads(Path(gt_file).read_text())
    width, height = summary.get("video_size") or (0, 0)
    scale = summary["imgsz"] / max(width, height) if summary.get("imgsz") and width else 1.0
    seen: dict = defaultdict(Counter)  # size bin -> Counter(found / nothing there / box off, and at the edge)

    matched: dict = defaultdict(Counter)  # track -> Counter(item)
    track_class, item_class = {}, {}
    for line in (out / "detections.jsonl").read_text().splitlines():
        frame = json.loads(line)
        items = [g for g in truth[frame["frame"]] if g.get("visible", 1.0) >= min_visible]
        found = {j for j in pair_boxes(frame["detections"], items) if j is not None}
        boxes = np.array([d["box"] for d in frame["detections"]], float).reshape(-1, 4)
        overlap = box_iou(np.array([g["box"] for g in items], float).reshape(-1, 4), boxes)
        for j, g in enumerate(items):
            x0, y0, x1, y1 = g["box"]
            at = seen[size_bin(min(x1 - x0, y1 - y0) * scale)]
            at["items"] += 1
            if j in found:
                at["found"] += 1
                continue
            at["box off" if boxes.size and overlap[j].max() >= 0.1 else "nothing there"] += 1
            at["missed at the edge"] += bool(x0 <= 0 or y0 <= 0 or (width and (x1 >= width - 1 or y1 >= height - 1)))
        dets = [d for d in frame["detections"] if d.get("track_id") is not None]
        for d, j in zip(dets, pair_boxes(dets, items)):
            track_class[d["track_id"]] = d["track_class_id"]
            if j is not None:
                matched[d["track_id"]][items[j]["track_id"]] += 1
                item_class[items[j]["track_id"]] = items[j]["class_id"]

    wrong: Counter = Counter()
    for track, items in matched.items():
        item = owner(items)
        if track_class[track] != item_class[item]:
            wrong[(item_class[item], track_class[track])] += 1
    n_wrong = sum(wrong.values())
    hard = sum(n for (a, b), n in wrong.items() if a in HARD and b in HARD)
    print(f"{out}: {len(matched) - n_wrong} of {len(matched)} matched tracks named right; {n_wrong} wrong, {hard} of "
          f"them within the hard classes (T-shirt/top, pullover, coat, shirt)")
    for (a, b), n in wrong.most_common():
        print(f"  {n:3d}  {CLASSES[a]} named {CLASSES[b]}")
    unit = f"px at imgsz {summary['imgsz']}" if scale != 1.0 else "px of the frame"
    total = sum(c["items"] for c in seen.values())
    print(f"boxes found (IoU 0.5, any class) by the item's short side ({unit}): "
          f"{sum(c['found'] for c in seen.values())} of {total} item-frames")
    print(f"  {'size':>7} {'items':>6} {'recall':>7} {'nothing there':>14} {'box off':>8} {'missed at the edge':>19}")
    for key in sorted(seen, key=lambda k: float(k.split('-')[0].rstrip('+'))):
        c = seen[key]
        print(f"  {key:>7} {c['items']:6d} {c['found'] / c['items']:7.3f} {c['nothing there']:14d} {c['box off']:8d} "
              f"{c['missed at the edge']:19d}")


if __name__ == "__main__":
    main()
