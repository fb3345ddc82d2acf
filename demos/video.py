"""Video: a generated clip through ``detect video`` (which tracks) with the bundled detector (or yours), and what
was found per class and per track.

    .venv/bin/python demos/video.py                          # 10 s clip, bundled detector (about a minute)
    .venv/bin/python demos/video.py --weights runs/detect/train --seconds 20
    .venv/bin/python demos/video.py --input my.mp4           # your own footage instead of a generated clip
    .venv/bin/python demos/video.py --tiny                   # CI: a 1-second 320x240 clip

Two product commands, run as a user types them: ``detect make-video OUT/clip.mp4`` (items from the official test
set crossing the frame, with per-frame ground truth) and ``detect video OUT/clip.mp4 --gt OUT/clip.json``
(BoT-SORT; precision and recall at IoU 0.5 against the ground truth). Then, from the command's own
detections.jsonl: per class, detections and unique tracks; per track, its frames, the classes it was given and
its majority class. Writes OUT/tracks.md and OUT/tracks.json beside the command's outputs (OUT/video/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


class CommandFailed(Exception):
    """A product command the demo ran exited non-zero; it has printed its own one-line error."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def tracks_of(jsonl: Path) -> list[dict]:
    """Per track id in ``detections.jsonl``: first and last frame, frames seen, class counts, majority class."""
    per: dict[int, dict] = {}
    for line in jsonl.read_text().splitlines():
        frame = json.loads(line)
        for d in frame["detections"]:
            tid = d.get("track_id")
            if tid is None:
                continue
            t = per.setdefault(tid, {"track_id": tid, "first": frame["frame"], "last": frame["frame"], "frames": 0,
                                     "classes": Counter(), "conf": 0.0})
            t["last"] = frame["frame"]
            t["frames"] += 1
            t["classes"][d["class_name"]] += 1
            t["conf"] += d["conf"]
    out = []
    for t in sorted(per.values(), key=lambda t: t["track_id"]):
        majority, votes = t["classes"].most_common(1)[0]
        out.append({"track_id": t["track_id"], "first_frame": t["first"], "last_frame": t["last"],
                    "frames": t["frames"], "class": majority, "agreement": round(votes / t["frames"], 3),
                    "classes": dict(t["classes"]), "mean_conf": round(t["conf"] / t["frames"], 3)})
    return out


def per_class(tracks: list[dict], summary: dict) -> list[dict]:
    rows = []
    for name, item in sorted(summary.get("items", {}).items()):
        rows.append({"class": name, "detections": item["detections"], "frames": item["frames"],
                     "tracks": sum(t["class"] == name for t in tracks)})
    return rows


def markdown(summary: dict, classes: list[dict], tracks: list[dict]) -> str:
    lines = [f"{summary['frames_processed']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} frames/s, "
             f"{summary.get('backend')}); weights {summary['weights']}", ""]
    if "gt" in summary:
        g = summary["gt"]
        lines += [f"vs ground truth at IoU {g['iou']}: precision {g['precision']} recall {g['recall']} (boxes only "
                  f"{g['box_precision']} / {g['box_recall']})", ""]
    lines += ["| class | detections | frames | tracks (majority class) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['detections']} | {r['frames']} | {r['tracks']} |" for r in classes]
    lines += ["", "| track | frames | first-last | class | agreement | classes given | mean conf |",
              "|---:|---:|---|---|---:|---|---:|"]
    lines += [f"| {t['track_id']} | {t['frames']} | {t['first_frame']}-{t['last_frame']} | {t['class']} | "
              f"{t['agreement']:.2f} | {', '.join(f'{c} {n}' for c, n in t['classes'].items())} | {t['mean_conf']} |"
              for t in tracks]
    if not tracks:
        lines.append("| - | - | - | no tracks | - | - | - |")
    return "\n".join(lines)


def run(out: str | Path, weights: str | None = None, input_video: str | None = None, seconds: float = 10.0,
        tiny: bool = False, timings: dict | None = None) -> dict:
    """Make the clip (unless ``input_video``), run ``detect video`` on it (tracking, its default), tabulate per class
    and track."""
    from fashionkit.cli import main as fashionkit
    from fashionkit.runs import atomic_write_json, atomic_write_text, ensure_dir, read_json

    out = ensure_dir(out)
    timings = {} if timings is None else timings

    def step(name: str, argv: list[str]) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        code = fashionkit(argv)
        if code:
            raise CommandFailed(code)
        timings[name] = (round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1))  # wall, CPU

    small = ["--width", "320", "--height", "240", "--items", "3", "--min-scale", "1.5", "--max-scale", "3.0",
             "--fps", "10"] if tiny else []
    gt = []
    if input_video is None:
        clip = out / "clip.mp4"
        step("detect make-video", ["detect", "make-video", str(clip), "--seconds", f"{1.0 if tiny else seconds:g}",
                                   *small])
        gt = ["--gt", str(clip.with_suffix(".json"))]
    else:
        clip = Path(input_video)
    video_out = out / "video"
    step("detect video", ["detect", "video", str(clip), "--out", str(video_out), *gt,
                          *(["--weights", weights] if weights else []),
                          *(["--imgsz", "160", "--conf", "0.001"] if tiny else [])])
    summary = read_json(video_out / "summary.json")
    tracks = tracks_of(video_out / "detections.jsonl")
    classes = per_class(tracks, summary)
    text = markdown(summary, classes, tracks)
    atomic_write_text(out / "tracks.md", text + "\n")
    result = {"clip": str(clip), "video_out": str(video_out), "summary": summary, "per_class": classes,
              "tracks": tracks, "markdown": text, "timings": timings}
    atomic_write_json(out / "tracks.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    from fashionkit.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", default=None, help="detect run or .pt (default: the bundled detector)")
    p.add_argument("--input", default=None, help="a video of your own instead of a generated clip (no ground truth)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip (default: 10)")
    p.add_argument("--out", default="demo-video", help="output directory (default: ./demo-video)")
    p.add_argument("--tiny", action="store_true", help="CI: a 1-second 320x240 clip at imgsz 160")
    args = p.parse_args(argv)
    try:
        result = run(args.out, args.weights, args.input, args.seconds, args.tiny)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CommandFailed as e:
        return e.code
    print(result["markdown"])
    print(f"\nwrote {Path(args.out) / 'tracks.md'}, {Path(args.out) / 'tracks.json'}; annotated video in "
          f"{result['video_out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
