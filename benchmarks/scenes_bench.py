"""Procedural vs realistic training, judged on both kinds of test scenes and on a realistic video.

    .venv/bin/python benchmarks/scenes_bench.py \\
        --run realistic=runs/detect/bundled-detector --run realistic@15=runs/detect/bundled-detector@15 \\
        --run procedural@15=runs/detect/procedural-15min \\
        --data realistic=runs/detect/bundled-data --data procedural=runs/detect/procedural-data \\
        --video realistic=runs/detect/real-clip.mp4 [--track] [--out benchmarks/results/scenes.json]

``--run NAME=RUN[@MINUTES]``: a detect run; ``@MINUTES`` takes the last epoch checkpoint that ended within that many
wall-clock minutes of the run (it must have trained with ``--extra save_period=1``; the point then had the full
run's learning-rate schedule, not its own). Every run is evaluated on the test split of every ``--data`` (mAP50,
mAP50-95 with ultralytics' validator) and run through ``detect video`` on every ``--video`` against its ground truth
(precision / recall at IoU 0.5 with class and boxes only, end-to-end frames/s). Prints markdown tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"--{what} {value!r}: write NAME=PATH")
        out[name] = path
    return out


def weights_at(run: str, minutes: float | None) -> Path | None:
    """best.pt of a detect run, or its last epoch checkpoint that ended within ``minutes`` (None if none did)."""
    import csv

    from fashionkit.detect.train import ULTRALYTICS_DIR
    from fashionkit.detect.weights import weights_file

    if minutes is None:
        return weights_file(run)
    ul = Path(run) / ULTRALYTICS_DIR
    with open(ul / "results.csv") as f:
        done = [(int(float(r["epoch"])), float(r["time"])) for r in csv.DictReader(f)]
    within = [epoch for epoch, seconds in done if seconds <= minutes * 60]
    return ul / "weights" / f"epoch{within[-1] - 1}.pt" if within else None  # ultralytics numbers them from 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=RUN[@MINUTES] (repeat)")
    p.add_argument("--data", action="append", default=[], help="NAME=make-data directory (repeat)")
    p.add_argument("--video", action="append", default=[], help="NAME=make-video clip .mp4 (repeat)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--track", action="store_true", help="run detect video with --track")
    p.add_argument("--out", default="benchmarks/results/scenes.json")
    args = p.parse_args()

    from fashionkit.config import resolve
    from fashionkit.detect.defaults import VIDEO_OPTIONS
    from fashionkit.detect.train import data_yaml, evaluate
    from fashionkit.detect.video import run_video

    runs = {}
    for name, spec in pairs(args.run, "run").items():
        run, _, minutes = spec.partition("@")
        weights = weights_at(run, float(minutes) if minutes else None)
        if weights is None:
            raise SystemExit(f"{run}: no epoch ended within {minutes} minutes")
        runs[name] = (run, weights)
    results: dict = {"runs": {n: {"run": r, "weights": str(w)} for n, (r, w) in runs.items()}, "scenes": [],
                     "video": []}
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    for name, (run, weights) in runs.items():
        for data_name, data in pairs(args.data, "data").items():
            m = evaluate(weights, data_yaml(data), "test", args.imgsz, 16, "cpu",
                         Path(run) / "scenes-bench" / f"{name}-{data_name}".replace("@", "at"), plots=False)
            results["scenes"].append({"detector": name, "test_scenes": data_name, "mAP50": m["mAP50"],
                                      "mAP50-95": m["mAP50-95"], "precision": m["precision"], "recall": m["recall"]})
            save()
        for clip_name, clip in pairs(args.video, "video").items():
            cfg = resolve(VIDEO_OPTIONS, {"weights": str(weights), "imgsz": args.imgsz, "track": args.track,
                                          "gt": str(Path(clip).with_suffix(".json")), "save_video": False,
                                          "out": str(Path(run) / "scenes-bench" / f"{name}-{clip_name}-video"
                                                     .replace("@", "at"))})
            s = run_video(clip, cfg, progress=False)
            g = s["gt"]
            results["video"].append({"detector": name, "clip": clip_name, "track": args.track, "fps": s["fps"],
                                     **{k: g[k] for k in ("precision", "recall", "box_precision", "box_recall")},
                                     **{k: g[k] for k in g if k.startswith("track")}})
            save()

    print("\n| detector | test scenes | mAP50 | mAP50-95 | precision | recall |\n|---|---|---:|---:|---:|---:|")
    for r in results["scenes"]:
        print(f"| {r['detector']} | {r['test_scenes']} | {r['mAP50']} | {r['mAP50-95']} | {r['precision']} | "
              f"{r['recall']} |")
    print("\n| detector | clip | frames/s | precision | recall | box precision | box recall |"
          "\n|---|---|---:|---:|---:|---:|---:|")
    for r in results["video"]:
        print(f"| {r['detector']} | {r['clip']} | {r['fps']} | {r['precision']} | {r['recall']} | "
              f"{r['box_precision']} | {r['box_recall']} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
