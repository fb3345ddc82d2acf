"""The whole pipeline, end to end, on a CPU budget of about 20 minutes (2 cores), ending in one offline report.html.

    .venv/bin/python demos/pipeline.py                    # into ./demo-pipeline/ (runs/ and report.html)
    .venv/bin/python demos/pipeline.py --out /tmp/demo --detector-minutes 4
    .venv/bin/python demos/pipeline.py --tiny             # CI: tiny subsets, one epoch each, a 1-second clip

Every step is a product command run as a user types it (through the same command line, in this process), into
OUT/runs:

 1. data check      ``fashionkit data eda``: class balance, mean images, samples
 2. classifier      ``classify train --epochs 4 --no-test`` (the default vgg-fast, short), ``classify eval``
 3. embedding       ``metric train --from <the classifier> --epochs 2``, ``metric index``, ``metric resolve``
 4. ambiguous items demos/ambiguous.py on the two runs above: the least-sure test items and their neighbours
 5. detector        ``detect make-data`` (``--preset realistic`` where this fashionkit has it; 1,000 scenes),
                    ``detect train --from <the classifier> --minutes 6``
 6. video           demos/video.py: ``detect make-video`` and ``detect video`` (tracking) with the detector above

report.html collects the figures the commands wrote into their run directories -- learning curves, confusion
matrix, t-SNE, look-up strips, PR curve -- plus the per-class F1 before/after resolve and annotated video frames
drawn here, and the wall time of every step. Images are embedded (base64), nothing is fetched: it opens offline.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ambiguous as ambiguous_demo  # noqa: E402
import video as video_demo  # noqa: E402

# the full recipe: planned for ~20 minutes on a 2-core CPU (classifier ~3, embedding + index + resolve ~5,
# detector data ~1 + training 6, video and report ~2)
FULL = {
    "classify": ["--epochs", "4"],
    "metric": ["--epochs", "2", "--plot-points", "1000"],
    "scenes": ["--train", "1000", "--val", "100", "--test", "100"],
    "detect": [],
    "video_seconds": 8.0,
}
# --tiny: the same steps on a few hundred items, one epoch, a quarter-width vgg-small (16x fewer FLOPs; vgg-fast
# at a quarter width would have 6 channels, and YOLO layers need multiples of 8)
TINY = {
    "classify": ["--model", "vgg-small", "--model-opts", "width=0.25", "--subset", "500", "--epochs", "1",
                 "--lr", "0.02"],
    "metric": ["--subset", "1000", "--epochs", "2", "--batch-size", "64", "--m-per-class", "16",
               "--steps-per-epoch", "3", "--eval-subset", "200", "--plot-points", "100", "--dim", "32",
               "--head-hidden", "64"],
    "scenes": ["--imgsz", "160", "--max-scale", "4.0", "--workers", "1", "--train", "16", "--val", "8", "--test", "4"],
    "detect": ["--imgsz", "160", "--epochs", "1", "--batch", "8"],
    "video_seconds": 1.0,
}


class Pipeline:
    def __init__(self, out: Path, tiny: bool, detector_minutes: float):
        self.out, self.tiny, self.detector_minutes = out, tiny, detector_minutes
        self.runs = out / "runs"
        # (stage, command, wall seconds, CPU seconds of this process: on a shared machine the two differ)
        self.timings: list[tuple[str, str, float, float]] = []

    def step(self, stage: str, argv: list[str]) -> None:
        from fashionkit.cli import main as fashionkit

        print(f"[pipeline] {' '.join(argv)}", flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        code = fashionkit(argv)
        if code:
            raise video_demo.CommandFailed(code)
        self.timings.append((stage, " ".join(argv), round(time.perf_counter() - start, 1),
                             round(time.process_time() - cpu, 1)))

    def timed(self, stage: str, what: str, fn):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.timings.append((stage, what, round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1)))
        return result

    def run(self) -> dict:
        import os

        from fashionkit.detect.cli import MAKE_DATA_OPTIONS

        os.environ["FASHIONKIT_RUNS"] = str(self.runs)  # every command's default runs root
        r, o = self.runs, TINY if self.tiny else FULL
        cls, met = r / "classify" / "demo-classifier", r / "metric" / "demo-metric"
        data, det = r / "detect" / "demo-data", r / "detect" / "demo-detector"
        self.step("data check", ["data", "eda", "--out", str(r / "data" / "eda")])
        self.step("classifier", ["classify", "train", "--name", "demo-classifier", "--no-test", *o["classify"]])
        self.step("classifier", ["classify", "eval", str(cls)])
        self.step("embedding", ["metric", "train", "--from", str(cls), "--hard-classes", "0,2,4,6", "--name",
                                "demo-metric", *o["metric"]])
        self.step("embedding", ["metric", "index", str(met)])
        self.step("embedding", ["metric", "resolve", str(met), "--classifier", str(cls)])
        # --tiny: every class ranked, as its near-chance classifier may predict no hard class at all
        amb = self.timed("ambiguous items", "demos/ambiguous.py", lambda: ambiguous_demo.run(
            str(cls), str(met), self.out / "ambiguous", *((6, 5, None, 2000) if self.tiny else (10, 8, None, 0)),
            all_classes=self.tiny))
        preset = ["--preset", "realistic"] if "preset" in MAKE_DATA_OPTIONS else []
        self.step("detector", ["detect", "make-data", *preset, "--out", str(data), *o["scenes"]])
        budget = [] if self.tiny else ["--minutes", f"{self.detector_minutes:g}"]
        self.step("detector", ["detect", "train", "--from", str(cls), "--data", str(data), *budget, "--name",
                               "demo-detector", *o["detect"]])
        video_timings: dict = {}
        vid = video_demo.run(self.out / "video", str(det), None, o["video_seconds"], self.tiny, video_timings)
        for what, (seconds, cpu) in video_timings.items():
            self.timings.append(("video", what, seconds, cpu))
        return {"classifier": cls, "metric": met, "detector": det, "data": data, "ambiguous": amb, "video": vid,
                "preset": bool(preset)}


# ---- the report ----------------------------------------------------------------------------------------------

def embed_png(path: Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="missing">not produced: {html.escape(caption)} ({html.escape(str(path))})</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = rows or [["none"] + [""] * (len(header) - 1)]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def f1_chart(resolved: dict, path: Path) -> Path:
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    names = resolved["hard_class_names"]
    t = resolved["test"]
    before = [t["classifier"]["per_class"][n]["f1"] for n in names]
    after = [t["resolved"]["per_class"][n]["f1"] for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], before, 0.4, label="classifier alone")
    ax.bar([i + 0.2 for i in x], after, 0.4, label=f"resolved (threshold {resolved['threshold']:.2f})")
    ax.set_xticks(list(x), names)
    low = min(before + after)
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("test F1")
    ax.set_title("Per-class F1 on the hard classes, before and after the resolver", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def timing_chart(timings: list[tuple[str, str, float]], path: Path) -> Path:
    from fashionkit.plots import pyplot, save

    plt = pyplot()
    stages: dict[str, float] = {}
    for stage, _, seconds, _ in timings:
        stages[stage] = stages.get(stage, 0.0) + seconds
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(stages) + 1))
    names = list(stages)[::-1]
    ax.barh(names, [stages[n] for n in names])
    for i, n in enumerate(names):
        ax.text(stages[n], i, f" {stages[n]:.0f} s", va="center", fontsize=8)
    ax.set_xlabel("wall seconds")
    ax.set_title(f"Wall time per stage (total {sum(stages.values()):.0f} s)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def video_frames(video: Path, path: Path, count: int = 4) -> Path | None:
    """``count`` evenly spaced frames of the annotated video side by side."""
    import cv2
    import numpy as np

    from fashionkit.plots import pyplot, save

    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
    frames = []
    for i in np.linspace(0, max(total - 1, 0), count).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        if ok:
            frames.append((int(i), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    cap.release()
    if not frames:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(frames), figsize=(3.6 * len(frames), 3.0), squeeze=False)
    for ax, (i, frame) in zip(axes[0], frames):
        ax.imshow(frame)
        ax.set_title(f"frame {i}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return save(fig, path)


def first(paths) -> Path | None:
    found = sorted(paths)
    return found[0] if found else None


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}.missing{color:#a00}.note{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .2em}"""


def report(out: Path, made: dict, timings: list, tiny: bool, total: float) -> Path:
    import fashionkit
    from fashionkit.runs import atomic_write_text, read_json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from faiss_bench import cpu_name

    figs = out / "report-figures"
    figs.mkdir(exist_ok=True)
    cls, met, det = made["classifier"], made["metric"], made["detector"]
    eda = out / "runs" / "data" / "eda"
    evaluation = read_json(cls / "eval" / "test" / "eval.json", missing_ok=True) or {}
    msum = read_json(met / "summary.json", missing_ok=True) or {}
    resolved = read_json(met / "resolve.json", missing_ok=True) or {}
    dsum = read_json(det / "summary.json", missing_ok=True) or {}
    amb, vid = made["ambiguous"], made["video"]
    s = []
    s.append(f"<h1>fashionkit pipeline report{' (tiny CI mode)' if tiny else ''}</h1>")
    s.append(f'<p class="note">fashionkit {fashionkit.__version__}; {html.escape(cpu_name())}; '
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; total wall time {total:.0f} s. "
             f"Every figure below was written by a product command into its run directory under "
             f"<code>{html.escape(str(out / 'runs'))}</code>, except the F1 chart, the video frames and the timing "
             f"chart, drawn from the commands' JSON outputs.</p>")

    s.append("<h2>Timings</h2>")
    s.append(table(["stage", "command", "wall s", "CPU s (this process)"],
                   [[a, b, f"{c:.1f}", f"{d:.1f}"] for a, b, c, d in timings]))
    s.append(embed_png(timing_chart(timings, figs / "timings.png"), "wall time per stage"))

    s.append("<h2>1. Data check</h2>")
    s.append(embed_png(eda / "class_distribution.png", "class balance of the training and test sets"))
    s.append(embed_png(eda / "samples.png", "random training items per class"))

    s.append("<h2>2. Classifier</h2>")
    if evaluation:
        s.append(f"<p>{html.escape(str(evaluation.get('model')))}: test accuracy "
                 f"<b>{evaluation.get('accuracy', float('nan')):.4f}</b> on {evaluation.get('items')} items.</p>")
    s.append(embed_png(cls / "curves.png", "learning curves (loss and accuracy per epoch)"))
    s.append(embed_png(first((cls / "eval" / "test").glob("confusion*.png")), "test confusion matrix"))

    s.append("<h2>3. Embedding and the resolver</h2>")
    test = msum.get("test", {})
    if test:
        rows = [[name, *(f"{test[key][m]:.4f}" for m in ("precision_at_1", "r_precision", "map_at_r"))]
                for key, name in (("before", test.get("before_is", "before")), ("after", "metric embedding"))]
        s.append(table(["hard-class test items vs train+val", "P@1", "R-precision", "MAP@R"], rows))
    s.append(embed_png(met / "curves.png", "metric learning curves (loss, mined triplets, validation retrieval)"))
    s.append(embed_png(met / "tsne.png", "t-SNE of the hard-class test items: classifier features vs embedding"))
    if resolved:
        t = resolved["test"]
        rows = [[f"F1 {n}", f"{t['classifier']['per_class'][n]['f1']:.4f}",
                 f"{t['resolved']['per_class'][n]['f1']:.4f}"] for n in resolved["hard_class_names"]]
        rows = [["overall accuracy", f"{t['classifier']['accuracy']:.4f}", f"{t['resolved']['accuracy']:.4f}"],
                ["hard-class accuracy", f"{t['classifier']['hard_accuracy']:.4f}",
                 f"{t['resolved']['hard_accuracy']:.4f}"], *rows]
        s.append(f"<p>Threshold {resolved['threshold']:.2f} ({html.escape(resolved['threshold_source'])}); "
                 f"re-decided {t['re_decided']} test items: {t['fixed']} fixed, {t['broken']} broken.</p>")
        s.append(table(["test", "classifier alone", "resolved"], rows))
        s.append(embed_png(f1_chart(resolved, figs / "f1.png"), "per-class F1 before/after resolve"))
        s.append(embed_png(met / "confusion_classifier.png", "hard classes: classifier alone"))
        s.append(embed_png(met / "confusion_resolved.png", "hard classes: resolved"))

    s.append("<h2>4. Ambiguous items: look-up strips</h2>")
    s.append(f"<p>The {len(amb['items'])} test items the classifier is least sure of (of {amb['test_items']}), "
             f"each followed by its {amb['k']} nearest training items in the embedding.</p>")
    s.append(embed_png(Path(amb["png"]), "least-sure test items and their nearest neighbours"))
    s.append(table(["test item", "true", "classifier (p)", "margin", "kNN vote", "resolver"],
                   [[i["test_index"], i["true"], f"{i['classifier']} ({i['p']:.2f})", f"{i['margin']:.3f}",
                     i["vote"] or "-", i["resolver"] + (" (re-decided)" if i["re_decided"] else "")]
                    for i in amb["items"]]))

    s.append("<h2>5. Detector</h2>")
    test_map = dsum.get("test") or {}
    if test_map:
        m50, m5095 = test_map.get("mAP50", float("nan")), test_map.get("mAP50-95", float("nan"))
        s.append(f"<p>{html.escape(str(dsum.get('description', '')))}: {dsum.get('epochs_done')} epochs; test mAP50 "
                 f"<b>{m50:.3f}</b>, mAP50-95 {m5095:.3f}{' (realistic scenes)' if made['preset'] else ''}.</p>")
    s.append(embed_png(det / "ultralytics" / "results.png", "detector learning curves (ultralytics results.png)"))
    s.append(embed_png(first(det.glob("test/*PR_curve.png")) or first(det.glob("ultralytics/*PR_curve.png")),
                       "precision-recall curve on the test scenes"))

    s.append("<h2>6. Video</h2>")
    vs = vid["summary"]
    gt = vs.get("gt")
    s.append(f"<p><code>detect video</code>: {vs['frames_processed']} frames at {vs['fps']:.1f} frames/s"
             + (f"; against the clip's ground truth at IoU {gt['iou']}: precision {gt['precision']}, recall "
                f"{gt['recall']}" if gt else "") + ".</p>")
    annotated = Path(vid["video_out"]) / "annotated.mp4"
    s.append(embed_png(video_frames(annotated, figs / "video_frames.png"), "annotated frames of the clip"))
    s.append(table(["class", "detections", "frames", "tracks"],
                   [[r["class"], r["detections"], r["frames"], r["tracks"]] for r in vid["per_class"]]))
    s.append(table(["track", "frames", "first-last", "class", "agreement", "classes given"],
                   [[t["track_id"], t["frames"], f"{t['first_frame']}-{t['last_frame']}", t["class"],
                     f"{t['agreement']:.2f}", ", ".join(f"{c} {n}" for c, n in t["classes"].items())]
                    for t in vid["tracks"]]))
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>fashionkit pipeline report</title>"
            f"<style>{CSS}</style></head><body>{''.join(s)}</body></html>\n")
    return atomic_write_text(out / "report.html", page)


def main(argv: list[str] | None = None) -> int:
    from fashionkit.errors import UserError
    from fashionkit.runs import atomic_write_json, ensure_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="demo-pipeline", help="output directory: runs/ and report.html "
                   "(default: ./demo-pipeline)")
    p.add_argument("--detector-minutes", type=float, default=6.0, help="detect train --minutes (default: 6)")
    p.add_argument("--tiny", action="store_true", help="CI: tiny subsets, one epoch per stage, a 1-second clip")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        out = ensure_dir(args.out)
        if (out / "runs").exists():
            raise UserError(f"{out / 'runs'} exists from an earlier run; choose a new --out (runs are never "
                            f"overwritten)")
        pipeline = Pipeline(out, args.tiny, args.detector_minutes)
        made = pipeline.run()
        total = time.perf_counter() - start
        page = report(out, made, pipeline.timings, args.tiny, total)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except video_demo.CommandFailed as e:  # the command printed its one-line error
        return e.code
    atomic_write_json(out / "timings.json", {"total_seconds": round(total, 1), "tiny": args.tiny,
                                             "steps": [{"stage": a, "command": b, "seconds": c, "cpu_seconds": d}
                                                       for a, b, c, d in pipeline.timings]})
    print(f"wrote {page} ({page.stat().st_size / 2**20:.1f} MB, self-contained) in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
