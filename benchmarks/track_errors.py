"""Which tracks ``detect video --track`` named wrong on a ``detect make-video`` clip, as pairs of (the item's class,
the track's class): are the wrong ones the hard classes the resolver is for, or something else?

    .venv/bin/python benchmarks/track_errors.py OUT_DIR [--gt clip.json] [--min-visible 0.5]

OUT_DIR is a ``detect video --track --gt clip.json`` output folder (a ``track_sweep.py`` setting's folder, for
example). Each track is given the ground-truth item it matched most often at IoU 0.5 (``scoring.owner``, the rule
of ``scoring.track_accuracy``), so "right of matched" here is the sweep's "tracks right". Items less visible than
``--min-visible`` are left out, as in the run's own scoring.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

HARD = {0, 2, 4, 6}  # T-shirt/top, pullover, coat, shirt: the metric stage's classes


def main() -> None:
    from fashionkit.data import CLASSES
    from fashionkit.detect.scoring import owner, pair_boxes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a `detect video --track` output folder (detections.jsonl, summary.json)")
    p.add_argument("--gt", default=None, help="the clip's ground truth (default: the one summary.json names)")
    p.add_argument("--min-visible", type=float, default=None, help="default: the run's own (summary.json)")
    args = p.parse_args()

    out = Path(args.out)
    if not (out / "detections.jsonl").is_file() or not (out / "summary.json").is_file():
        raise SystemExit(f"error: {out} holds no detections.jsonl and summary.json: give a `detect video --track` "
                         f"output folder")
    scoring = json.loads((out / "summary.json").read_text()).get("gt") or {}
    gt_file = args.gt or scoring.get("file")
    if not gt_file:
        raise SystemExit(f"error: {out} was not scored against a ground truth: give --gt clip.json")
    min_visible = args.min_visible if args.min_visible is not None else scoring.get("min_visible", 0.5)
    truth = json.loads(Path(gt_file).read_text())

    matched: dict = defaultdict(Counter)  # track -> Counter(item)
    track_class, item_class = {}, {}
    for line in (out / "detections.jsonl").read_text().splitlines():
        frame = json.loads(line)
        items = [g for g in truth[frame["frame"]] if g.get("visible", 1.0) >= min_visible]
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


if __name__ == "__main__":
    main()
