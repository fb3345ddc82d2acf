"""How well a crop reader names the items of `detect make-data` scenes, and the test mAP50 it allows: the
ground-truth boxes themselves, each read as ``detect eval`` reads a detector's box, scored as a detector with
perfect boxes would be. No detector can score above that with this reader naming its boxes (``detect eval``'s
second score), so it says how much of the gap to a mAP target is the reading and how much the boxes.

    .venv/bin/python benchmarks/reader_ceiling.py [--reader RUN] [--data DIR] [--out results.json]

Each box is cut as a track's crop is (``tracks.crop_grey`` + ``tracks.crop_item``) and read once (the reading of
``detect eval`` and ``detect video``) and with six TTA views; it counts under every class with at least
``reader.MIN_SHARE`` of the reading, at that share as its confidence (a perfect detector is sure of the box).
Boxes too small to read count as missed. Accuracy is split by the hard classes (T-shirt/top, pullover, coat,
shirt), by the box's longer side in the frame, and by whether the box touches the frame's border (an item cut by
the edge).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIZES = (0, 30, 45, 65, 100, 150)  # longer side of the box in the frame, px: bins from each to the next


def main() -> None:
    import numpy as np
    import torch
    from faiss_bench import cpu_name  # the CPU as every benchmark names it
    from ultralytics.utils.metrics import ap_per_class

    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import parse_classes
    from fashionkit.detect.reader import MIN_SHARE, scene_boxes
    from fashionkit.detect.tracks import crop_grey, crop_item, open_classifier
    from fashionkit.detect.train import data_yaml
    from fashionkit.metric.defaults import HARD_CLASSES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reader", default="fashionkit/models/detector/reader",
                   help="classify run that reads the crops (a detect run's reader/)")
    p.add_argument("--data", default="runs/detect/bundled-data", help="a `detect make-data` dataset")
    p.add_argument("--splits", default="val,test")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args()
    device = torch.device("cpu")
    model, _, run = open_classifier(Path(a.reader), device)
    data = data_yaml(a.data)
    result = {"reader": str(run), "data": str(data), "command": " ".join(sys.argv), "cpu": cpu_name(), "splits": {}}
    for split in a.splits.split(","):
        classes, items, sides, edges = [], [], [], []
        for frame, boxes in scene_boxes(data, split):
            H, W = frame.shape[:2]
            for c, x1, y1, x2, y2 in boxes:
                classes.append(c)
                grey = crop_grey(frame, (x1, y1, x2, y2))
                items.append(None if grey is None else crop_item(grey))
                sides.append(max(x2 - x1, y2 - y1))
                edges.append(min(x1, y1, W - x2, H - y2) < 1.5)
        classes, sides, edges = np.array(classes), np.array(sides), np.array(edges)
        read = np.array([i is not None for i in items])
        x = torch.stack([i for i in items if i is not None])
        hard = np.isin(classes, parse_classes(HARD_CLASSES))  # the metric stage's classes
        out = {"boxes": len(classes), "readable": int(read.sum())}
        for views, tta in (("one view", False), ("six views", True)):
            probs = predict_probs(model, x, device, tta=tta).numpy()
            right = np.zeros(len(classes), bool)
            right[read] = probs.argmax(1) == classes[read]
            box, cls = np.nonzero(probs >= MIN_SHARE)
            tp = (cls == classes[read][box])[:, None]
            ap50 = ap_per_class(tp, probs[box, cls], cls.astype(float), classes.astype(float))[5][:, 0]

            def acc(mask, right=right):
                return {"n": int(mask.sum()), "accuracy": round(float(right[mask].mean()), 4) if mask.any() else None}

            out[views] = {
                "mAP50 of the ground-truth boxes read": round(float(ap50.mean()), 4),
                "accuracy": round(float(right.mean()), 4),
                "hard classes": acc(hard), "other classes": acc(~hard),
                "at the frame edge": acc(edges), "inside the frame": acc(~edges),
                "by longer side (px)": {f"{lo}-{hi}" if hi else f"{lo}+": acc((sides >= lo) & (sides < (hi or 1e9)))
                                        for lo, hi in zip(SIZES, (*SIZES[1:], None))},
            }
            print(f"{split} ({views}): {out['readable']} of {out['boxes']} boxes readable; accuracy "
                  f"{out[views]['accuracy']:.4f} (hard classes {out[views]['hard classes']['accuracy']:.4f}, "
                  f"others {out[views]['other classes']['accuracy']:.4f}; at the frame edge "
                  f"{out[views]['at the frame edge']['accuracy']:.4f}, inside "
                  f"{out[views]['inside the frame']['accuracy']:.4f}); mAP50 of the ground-truth boxes read "
                  f"{out[views]['mAP50 of the ground-truth boxes read']:.4f}", flush=True)
        result["splits"][split] = out
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
