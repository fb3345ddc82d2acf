"""``detect video --track`` over a grid of confidence threshold, shortest track kept, longest gap filled, inference
size, crops per track, vote weight, tracker config, class-agnostic NMS, stitching gap and the reader's least
confidence, on a ``detect make-video`` clip: how `--conf`, `--min-track-frames`, `--fill-gaps`, `--imgsz`, `--crops`,
`--vote-weight`, `--tracker`, `--agnostic-nms`, `--stitch-gap` and `--min-read-conf` were chosen.

    .venv/bin/python benchmarks/track_sweep.py --video runs/detect/val-clip.mp4 \\
        [--weights fashionkit/models/detector] [--metric fashionkit/models/metric] \\
        [--conf 0.25,0.15,0.1] [--min-track-frames 1,3,6] [--fill-gaps 0,5,15] [--imgsz 320,416] \\
        [--crops 4,8] [--vote-weight 0.2,0.5] [--tracker bytetrack.yaml,botsort.yaml,my.yaml] \\
        [--agnostic-nms true,false] [--stitch-gap 0,60] [--min-read-conf 0,0.45] [--out benchmarks/results/x.json]

Every other option is `detect video`'s default (the crop reader, resolver margin). Choose on a
validation clip (`detect make-video ... --split val`), then confirm on the test clip. Per setting: precision /
recall at IoU 0.5 with the per-frame class, with the track's class and for boxes alone; tracks matched to an item,
named right, and false; tracks left out and boxes filled in. No annotated video is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def main() -> None:
    from fashionkit.detect.defaults import VIDEO_OPTIONS  # light: the defaults module imports nothing heavy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="a `detect make-video` clip; its .json is the ground truth")
    p.add_argument("--weights", default="fashionkit/models/detector")
    p.add_argument("--metric", default="fashionkit/models/metric")
    p.add_argument("--conf", default="0.25")
    p.add_argument("--min-track-frames", default="1,3")
    p.add_argument("--fill-gaps", default="0,5")
    p.add_argument("--imgsz", default="320", help="inference sizes (multiples of 32)")
    p.add_argument("--crops", default=str(VIDEO_OPTIONS["crops"].default), help="crops read per track")
    p.add_argument("--vote-weight", default=str(VIDEO_OPTIONS["vote_weight"].default),
                   help="weight of the detector's votes against the crop reader")
    p.add_argument("--tracker", default=str(VIDEO_OPTIONS["tracker"].default),
                   help="tracker configs: ultralytics' names (bytetrack.yaml, botsort.yaml) or YAML files")
    p.add_argument("--stitch-gap", default=str(VIDEO_OPTIONS["stitch_gap"].default),
                   help="longest gap (frames) a broken track is joined across; 0 = off")
    p.add_argument("--min-read-conf", default=str(VIDEO_OPTIONS["min_read_conf"].default),
                   help="tracks the reader names no class with this mean probability are left out; 0 = off")
    p.add_argument("--gate", default=VIDEO_OPTIONS["gate"].default,
                   help="`detect video --gate`: a reader with a class for what is not an item (RUN) or none")
    p.add_argument("--max-not-item", type=float, default=VIDEO_OPTIONS["max_not_item"].default)
    p.add_argument("--agnostic-nms", default=str(VIDEO_OPTIONS["agnostic_nms"].default).lower(),
                   help="non-maximum suppression across classes: true, false or both (true,false)")
    p.add_argument("--work", default="runs/detect/track-sweep", help="where each run's outputs go")
    p.add_argument("--out", default="benchmarks/results/track_sweep.json")
    args = p.parse_args()

    from fashionkit.config import resolve
    from fashionkit.detect.video import run_video

    video = Path(args.video)
    grid = itertools.product([float(c) for c in args.conf.split(",")],
                             [int(m) for m in args.min_track_frames.split(",")],
                             [int(f) for f in args.fill_gaps.split(",")],
                             [int(i) for i in args.imgsz.split(",")],
                             [int(c) for c in args.crops.split(",")],
                             [float(w) for w in args.vote_weight.split(",")],
                             [t.strip() for t in args.tracker.split(",") if t.strip()],
                             [a.strip().lower() in ("true", "on", "1") for a in args.agnostic_nms.split(",")],
                             [int(g) for g in args.stitch_gap.split(",")],
                             [float(r) for r in args.min_read_conf.split(",")])
    rows = []
    default_tracker, default_agnostic = VIDEO_OPTIONS["tracker"].default, VIDEO_OPTIONS["agnostic_nms"].default
    default_read = VIDEO_OPTIONS["min_read_conf"].default
    for conf, min_frames, fill, imgsz, crops, vote, tracker, agnostic, stitch, read in grid:
        out = Path(args.work) / (f"{video.stem}-conf{conf}-min{min_frames}-fill{fill}-imgsz{imgsz}-crops{crops}"
                                 f"-vote{vote}" + ("" if tracker == default_tracker else f"-{Path(tracker).stem}")
                               + ("" if agnostic == default_agnostic else f"-agnostic{agnostic}")
                               + (f"-stitch{stitch}" if stitch else "")
                               + ("" if read == default_read else f"-read{read}"))
        cfg = resolve(VIDEO_OPTIONS, {"weights": args.weights, "metric": args.metric, "track": True, "conf": conf,
                                      "imgsz": imgsz, "crops": crops, "vote_weight": vote,
                                      "min_track_frames": min_frames, "fill_gaps": fill, "save_video": False,
                                      "tracker": tracker, "agnostic_nms": agnostic, "stitch_gap": stitch,
                                      "min_read_conf": read, "gate": args.gate, "max_not_item": args.max_not_item,
                                      "gt": str(video.with_suffix(".json")), "out": str(out)})
        s = run_video(video, cfg, progress=False)
        g, t = s["gt"], s["tracks"]
        track = g["tracks"]["track"]
        rows.append({"conf": conf, "min_track_frames": min_frames, "fill_gaps": fill, "imgsz": imgsz,
                     "crops": crops, "vote_weight": vote, "tracker": tracker,
                     "agnostic_nms": agnostic, "stitch_gap": stitch, "min_read_conf": read,
                     "precision": g["precision"], "recall": g["recall"],
                     "precision_track_classes": g["with_track_classes"]["precision"],
                     "recall_track_classes": g["with_track_classes"]["recall"],
                     "box_precision": g["box_precision"], "box_recall": g["box_recall"],
                     "tracks_matched": track["matched_tracks"], "tracks_right": track["correct_tracks"],
                     "tracks_false": track["unmatched_tracks"], "per_track_accuracy": track["accuracy"],
                     "dropped_short": t["dropped_short"], "filled_boxes": t["filled_boxes"], "stitched": t["stitched"],
                     "dropped_unread": t["dropped_unread"], "fps": s["fps"]})
        r = rows[-1]
        nms = "NMS across classes" if agnostic else "NMS per class"
        print(f"conf {conf} min {min_frames} fill {fill} imgsz {imgsz} crops {crops} vote {vote} {tracker} {nms} "
              f"stitch {stitch} read {read}: P/R track class {r['precision_track_classes']} / "
              f"{r['recall_track_classes']}, "
              f"boxes {r['box_precision']} / {r['box_recall']}, tracks right {r['tracks_right']} of "
              f"{r['tracks_matched']}, "
              f"{r['tracks_false']} false, {r['fps']} f/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"video": str(video), "weights": args.weights, "metric": args.metric,
                                          "gate": args.gate, "max_not_item": args.max_not_item, "rows": rows},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
