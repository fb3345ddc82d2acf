"""``detect video`` with and without track-level classes on a ``detect make-video`` clip: frames/s end to end, class
flicker and per-track class accuracy, precision/recall.

    .venv/bin/python benchmarks/track_bench.py --weights runs/detect/<run> --video clip.mp4 \\
        [--metric runs/metric/<run>] [--classifier auto] [--reader auto] [--imgsz 320] [--conf 0.25] \\
        [--min-track-frames 1] [--fill-gaps 0] [--variants per-frame,track-knn] [--repeat 1] \\
        [--out benchmarks/results/track.json]

The clip's ground truth is its .json beside it (``detect make-video`` writes both). Variants, each a full
``detect video`` run (read, infer, draw, encode the annotated video, write the detections):

* ``per-frame``: no tracking; the classes are the detector's, frame by frame;
* ``track-votes``: ``--track --classifier none --metric none``: each track's class from its frames' votes;
* ``track-classifier``: plus the classifier reading each track's crops (``--classifier``, auto: the classify run
  the detector was trained from);
* ``track-reader``: the same with the detector's crop reader instead (``--reader``, auto: RUN/reader from
  ``detect reader``, the bundled detector's own for the bundled one; left out when there is none);
* ``track-knn``: plus the metric run's kNN resolver for unsure tracks of its hard classes (only with ``--metric``),
  with the reader where there is one, else the classifier.

A one-class detector (``detect train --one-class``) names nothing itself: only the variants with a classifier run
(``per-frame``: the classifier auto finds names each box of each frame).

For each: frames/s (the best of ``--repeat`` runs: on a shared machine the best is the least disturbed), the CPU
time per frame (all threads of the process: what a run costs, whatever else shares the cores), the time
spent deciding tracks and writing the second pass, precision/recall at IoU 0.5 with per-frame and with track
classes, and with tracking class flicker (changes per 100 track-frames, and along ground-truth items) and per-track
class accuracy, per-frame vs track-level. The load average before and after is recorded: a figure measured while
other work shared the cores says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faiss_bench import cpu_name  # noqa: E402


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def variants(classifier: str, reader: str | None, metric: str | None) -> dict[str, dict]:
    out = {"per-frame": {"track": False},
           "track-votes": {"track": True, "classifier": "none", "metric": "none"},
           "track-classifier": {"track": True, "classifier": classifier, "metric": "none"}}
    if reader:
        out["track-reader"] = {"track": True, "classifier": reader, "metric": "none"}
    if metric:
        out["track-knn"] = {"track": True, "classifier": reader or classifier, "metric": metric}
    return out


def readers(weights: str, classifier: str, reader: str) -> tuple[str, str | None]:
    """``--classifier`` and ``--reader`` with auto made explicit: the classify run the detector was trained from, and
    its crop reader (None when it has none)."""
    from fashionkit.detect.tracks import auto_runs

    if classifier == "auto":
        classifier = str(auto_runs(Path(weights), reader=False)["classifier"] or "none")
    if reader == "auto":
        found = auto_runs(Path(weights))["classifier"]
        reader = str(found) if found is not None and str(found) != classifier else None
    return classifier, None if reader in (None, "none") else reader


def row(name: str, s: dict) -> dict:
    g = s.get("gt", {})
    r = {"variant": name, "fps": s["fps"], "seconds": s["seconds"], "frames": s["frames_processed"],
         "cpu_ms_per_frame": round(1000 * s["cpu_seconds"] / s["frames_processed"], 1),
         "precision": g.get("precision"), "recall": g.get("recall"),
         "box_precision": g.get("box_precision"), "box_recall": g.get("box_recall")}
    if "tracks" in s:
        t = s["tracks"]
        r.update(tracks=t["count"], resolved=t["resolved"], changed_by_resolver=t["changed_by_resolver"],
                 dropped_short=t["dropped_short"], dropped_unread=t["dropped_unread"], filled_boxes=t["filled_boxes"],
                 classifier=t["classifier"], metric=t["metric"], phase_seconds=t["seconds"])
    if "tracks" in g:
        gt_tracks, track_classes = g["tracks"], g["with_track_classes"]
        r.update(precision_track_classes=track_classes["precision"], recall_track_classes=track_classes["recall"],
                 **{f"{key}_{which}": gt_tracks[which][key] for which in ("per_frame", "track")
                    for key in ("flicker", "gt_flicker", "accuracy", "correct_tracks", "matched_tracks")},
                 unmatched_tracks=gt_tracks["track"]["unmatched_tracks"])
    return r


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | frames/s | CPU ms/frame | P / R (class) | P / R (track class) | flicker per-frame -> track | "
             "per-track accuracy per-frame -> track | tracks (resolved) |", "|---|---:|---:|---|---|---|---|---|"]
    for r in rows:
        tracked = "flicker_per_frame" in r
        lines.append(
            f"| {r['variant']} | {r['fps']} | {r['cpu_ms_per_frame']} | {r['precision']} / {r['recall']} | "
            + (f"{r['precision_track_classes']} / {r['recall_track_classes']} | "
               f"{r['flicker_per_frame']} -> {r['flicker_track']} | {r['accuracy_per_frame']} -> {r['accuracy_track']} "
               f"| {r['tracks']} ({r['resolved']}) |" if tracked else "- | - | - | - |"))
    return "\n".join(lines)


def main() -> None:
    from fashionkit.detect.defaults import VIDEO_OPTIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="detect run directory (or its best.pt / best.onnx)")
    p.add_argument("--video", required=True, help="a `detect make-video` clip; its .json is the ground truth")
    p.add_argument("--classifier", default="auto", help="classify run for the track-classifier variant (auto: the "
                   "one the detector was trained from)")
    p.add_argument("--reader", default="auto", help="crop reader (a classify run) for the track-reader variant "
                   "(auto: the detector's RUN/reader; none: leave the variant out)")
    p.add_argument("--metric", default=None, help="metric run with its index: adds the track-knn variant")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--conf", type=float, default=VIDEO_OPTIONS["conf"].default)
    p.add_argument("--tracker", default=VIDEO_OPTIONS["tracker"].default)
    p.add_argument("--vote-weight", type=float, default=VIDEO_OPTIONS["vote_weight"].default)
    p.add_argument("--resolve-margin", type=float, default=VIDEO_OPTIONS["resolve_margin"].default)
    p.add_argument("--crops", type=int, default=VIDEO_OPTIONS["crops"].default)
    p.add_argument("--min-track-frames", type=int, default=VIDEO_OPTIONS["min_track_frames"].default)
    p.add_argument("--min-read-conf", type=float, default=VIDEO_OPTIONS["min_read_conf"].default)
    p.add_argument("--fill-gaps", type=int, default=VIDEO_OPTIONS["fill_gaps"].default)
    p.add_argument("--gate", default=VIDEO_OPTIONS["gate"].default, help="`detect video --gate`: RUN or none")
    p.add_argument("--max-not-item", type=float, default=VIDEO_OPTIONS["max_not_item"].default)
    p.add_argument("--variants", default=None, help="comma-separated names of the variants to run (none: all)")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest is reported")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work", default="runs/detect/track-bench", help="where each run's outputs go")
    p.add_argument("--out", default="benchmarks/results/track.json")
    args = p.parse_args()

    from fashionkit.config import resolve
    from fashionkit.detect.tracks import is_one_class
    from fashionkit.detect.train import ultralytics_device
    from fashionkit.detect.video import run_video
    from fashionkit.detect.weights import load_detector

    video = Path(args.video)
    gt = video.with_suffix(".json")
    if not gt.is_file():
        raise SystemExit(f"{gt} not found: pass a clip made by `detect make-video` (it writes the .json beside it)")
    # a first ONNX export is not the first run's cost
    one_class = is_one_class(load_detector(args.weights, "auto", ultralytics_device("auto"))[0].names)
    result: dict = {"weights": args.weights, "video": str(video), "imgsz": args.imgsz, "conf": args.conf,
                    "tracker": args.tracker, "crops": args.crops, "vote_weight": args.vote_weight,
                    "resolve_margin": args.resolve_margin, "min_track_frames": args.min_track_frames,
                    "min_read_conf": args.min_read_conf, "fill_gaps": args.fill_gaps, "gate": args.gate,
                    "max_not_item": args.max_not_item,
                    "machine": {"cpu": cpu_name(), "load_before": os.getloadavg()}, "rows": []}
    classifier, reader = readers(args.weights, args.classifier, args.reader)
    chosen = variants(classifier, reader, args.metric)
    if one_class:  # a detector that only finds items runs with a classifier to name them
        chosen = {k: v for k, v in chosen.items() if v.get("classifier") != "none"}
    if args.variants:
        asked = args.variants.split(",")
        unknown = set(asked) - set(chosen)
        if unknown:
            raise SystemExit(f"--variants {args.variants}: no variant {', '.join(sorted(unknown))} here; choose from "
                             f"{', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in asked}
    for name, opts in chosen.items():
        runs = []
        for i in range(args.repeat):
            cfg = resolve(VIDEO_OPTIONS, {"weights": args.weights, "imgsz": args.imgsz, "gt": str(gt),
                                          "conf": args.conf, "tracker": args.tracker, "crops": args.crops,
                                          "vote_weight": args.vote_weight, "resolve_margin": args.resolve_margin,
                                          "min_track_frames": args.min_track_frames, "fill_gaps": args.fill_gaps,
                                          "min_read_conf": args.min_read_conf, "gate": args.gate,
                                          "max_not_item": args.max_not_item, "threads": args.threads,
                                          "out": str(Path(args.work) / f"{name}-{i}"),
                                          **opts})
            start, cpu = time.perf_counter(), cpu_seconds()
            runs.append(run_video(video, cfg, progress=False))
            # CPU time of this process, all its threads: what the run costs whatever else shares the cores
            runs[-1]["cpu_seconds"] = round(cpu_seconds() - cpu, 2)
            print(f"{name} run {i + 1}: {runs[-1]['fps']} frames/s, {runs[-1]['cpu_seconds']} CPU-s "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
        result["rows"].append(row(name, max(runs, key=lambda s: s["fps"])))
    result["machine"]["load_after"] = os.getloadavg()
    result["markdown"] = markdown(result["rows"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"{result['machine']['cpu']}; load average before {result['machine']['load_before'][0]:.1f}, after "
          f"{result['machine']['load_after'][0]:.1f}\nwrote {args.out}")


if __name__ == "__main__":
    main()
