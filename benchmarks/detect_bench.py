"""The detector at equal training budgets: classifier backbone vs the same shape at random init vs stock yolov8n.

    .venv/bin/python benchmarks/detect_bench.py --classifier runs/classify/train \\
        [--data runs/detect/bench-data] [--budgets 15,30,60] [--variants classifier,none,yolov8n] [--threads 0]
    .venv/bin/python benchmarks/detect_bench.py --variants yolov8n       # the baselines need no classify run
    .venv/bin/python benchmarks/detect_bench.py --classifier runs/classify/train --quick   # smoke test, a few minutes

1. Data: ``detect make-data --preset PRESET`` (3,000 train / 300 val / 300 test scenes of 320x320 with 1-5 items;
   made once, reused when --data exists) and ``detect make-video`` (10 s of 640x480 at 25 fps, items and
   photographs from the test split).
2. Models: parameters, GFLOPs at 320x320, inference ms/frame (batch 8 at 320x256, the letterboxed 640x480 video
   frame) for each variant.
3. Training: for every variant one ``detect train --minutes LONGEST`` (ultralytics re-plans the epochs to fit the
   wall-clock budget, validation included) that saves a checkpoint every epoch; mAP50 and mAP50-95 on the 300 test
   scenes of best.pt for the longest budget and, for each shorter budget, of the last epoch that ended within it
   (a learning curve: the shorter points had the longer run's learning-rate schedule, not their own).
4. Video: every variant's longest-budget detector through ``detect video`` at imgsz 320 with the clip's ground
   truth: precision and recall at IoU 0.5 and end-to-end frames/s (read, infer, draw, encode).

Results go to --out (JSON) and are printed as markdown tables. Budgets are wall-clock minutes on this machine:
run it on an otherwise idle machine, or the numbers measure the neighbours too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scenes_bench beside it

VARIANTS = {"classifier": None, "none": "none", "yolov8n": "yolov8n.yaml"}  # --from of each (None: the classify run)


def make_data(out: Path, quick: bool, preset: str) -> Path:
    from fashionkit.config import resolve
    from fashionkit.detect.cli import MAKE_DATA_OPTIONS
    from fashionkit.detect.scenes import make_dataset

    if (out / "data.yaml").is_file():
        print(f"data: reusing {out}")
        return out / "data.yaml"
    sizes = {"train": 64, "val": 16, "test": 16} if quick else {"train": 3000, "val": 300, "test": 300}
    return make_dataset(resolve(MAKE_DATA_OPTIONS, {"out": str(out), "imgsz": 320, "preset": preset, **sizes}))


def make_clip(path: Path, quick: bool, preset: str) -> Path:
    from fashionkit.config import resolve
    from fashionkit.detect.cli import MAKE_VIDEO_OPTIONS
    from fashionkit.detect.scenes import make_video

    if not path.is_file():
        make_video(path, resolve(MAKE_VIDEO_OPTIONS, {"seconds": 2.0 if quick else 10.0, "preset": preset}))
    return path


def model_row(variant: str, source: str, threads: int, stem: int) -> dict:
    import torch

    from fashionkit.detect.model import gflops, model_source

    model = model_source(source, nc=10, stem=stem).model.eval().fuse(verbose=False)
    x = torch.rand(8, 3, 256, 320)
    row = {"variant": variant, "params": sum(p.numel() for p in model.parameters()),
           "gflops_320": round(gflops(model, (320, 320)), 2)}
    for n in sorted({1, threads or 1, os.cpu_count() or 1}):
        torch.set_num_threads(n)
        with torch.inference_mode():
            model(x)
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < 5:
                model(x)
                runs += 1
        row[f"ms_per_frame_{n}t"] = round(1000 * (time.perf_counter() - start) / (8 * runs), 2)
    return row


def curve_point(run: Path, budget: float, data: Path, device: str, args) -> dict:
    """Test mAP of the run's last epoch checkpoint that finished (validation included) within ``budget`` minutes."""
    from scenes_bench import weights_at

    from fashionkit.detect.train import evaluate

    weights = weights_at(str(run), budget)
    if weights is None:
        return {"epochs": 0, "weights": None, "test": {}}  # not one epoch fitted in the budget
    epoch = int(weights.stem.removeprefix("epoch")) + 1  # ultralytics numbers its epoch files from 0
    test = evaluate(weights, data, "test", args.imgsz, args.batch, device, Path(run) / f"test-{budget:g}min",
                    plots=False, threads=args.threads)
    return {"epochs": epoch, "weights": weights.name, "test": test}


def main() -> None:
    from fashionkit.detect.defaults import TRAIN_OPTIONS  # light: no torch, no ultralytics

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", default=None,
                   help="classify run whose trunk the detector starts from (needed for the classifier variant)")
    p.add_argument("--data", default="runs/detect/bench-data", help="make-data directory (made if missing)")
    p.add_argument("--video", default=None, help="make-video clip (default: DATA/../bench-video.mp4, made if missing)")
    p.add_argument("--preset", default="realistic", choices=("realistic", "procedural"),
                   help="scene preset of the data and clip the script makes when they are missing")
    p.add_argument("--budgets", default="15,30,60", help="training budgets in wall-clock minutes")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--freeze-epochs", type=int, default=1)
    p.add_argument("--stem", type=int, default=TRAIN_OPTIONS["stem"].default, choices=(1, 2, 4),
                   help="detect train --stem of the classifier and none variants (default: detect train's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores, as detect train)")
    p.add_argument("--extra", default="", help="extra ultralytics train arguments for every run, e.g. scale=0.75")
    p.add_argument("--runs-dir", default="runs/detect-bench", help="where the training runs go")
    p.add_argument("--out", default="benchmarks/results/detect.json")
    p.add_argument("--quick", action="store_true", help="tiny data and 1-minute budgets: checks the script works")
    args = p.parse_args()

    from fashionkit.config import resolve
    from fashionkit.detect.defaults import VIDEO_OPTIONS
    from fashionkit.detect.train import train
    from fashionkit.detect.video import run_video

    budgets = [0.5, 1.0] if args.quick else [float(b) for b in args.budgets.split(",")]
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "classifier" in variants and not args.classifier:
        raise SystemExit("the classifier variant needs --classifier runs/classify/<run>; or leave it out of --variants")
    data = make_data(Path(args.data), args.quick, args.preset)
    clip = make_clip(Path(args.video) if args.video else Path(args.data).parent / "bench-video.mp4", args.quick,
                     args.preset)
    sources = {v: VARIANTS[v] or args.classifier for v in variants}
    results: dict = {"classifier": args.classifier, "data": str(data), "video": str(clip), "imgsz": args.imgsz,
                     "stem": args.stem,
                     "models": [], "training": [], "video_runs": []}

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    print("\n| variant | params | GFLOPs 320x320 | ms/frame (batch 8, 320x256) by threads |\n|---|---:|---:|---|")
    for variant, source in sources.items():
        row = model_row(variant, source, args.threads, args.stem)
        results["models"].append(row)
        speeds = ", ".join(f"{k.split('_')[-1]}: {v}" for k, v in row.items() if k.startswith("ms_per_frame"))
        print(f"| {variant} | {row['params']:,} | {row['gflops_320']} | {speeds} |", flush=True)
    save()

    # One run per variant at the longest budget, saving every epoch: the shorter budgets are read off that run's
    # learning curve (its last epoch that ended within the budget) instead of paying for a run per budget.
    longest = max(budgets)
    best: dict[str, Path] = {}
    for variant, source in sources.items():
        start = time.perf_counter()
        extra = ",".join(filter(None, ["save_period=1", args.extra]))
        stem = f"-stem{args.stem}" if variant != "yolov8n" else ""
        run, s = train({"from": source, "data": str(data), "minutes": longest, "epochs": 100, "patience": 0,
                        "imgsz": args.imgsz, "batch": args.batch, "freeze_epochs": args.freeze_epochs,
                        "stem": args.stem, "threads": args.threads, "plots": False, "runs_dir": args.runs_dir,
                        "extra": extra, "name": f"{variant}{stem}-{longest:g}min"})
        wall = round((time.perf_counter() - start) / 60, 1)
        best[variant] = run
        for budget in budgets:
            row = {"variant": variant, "budget_min": budget, "run": str(run), "wall_min": wall,
                   "train_images_per_s": s["train_images_per_s"]}
            if budget == longest:  # the run itself: best.pt, evaluated by detect train
                test = s.get("test") or {}
                row.update(epochs=s["epochs_done"], weights="best.pt")
            else:
                row.update(curve_point(run, budget, data, s["device"], args))
                test = row.pop("test")
            row.update({"test_mAP50": test.get("mAP50"), "test_mAP50-95": test.get("mAP50-95")})
            results["training"].append(row)
            save()
            print(f"{variant} {budget:g} min: {row}", flush=True)

    for variant, run in best.items():
        # per frame, as its figures in BENCHMARKS.md were measured: the detectors compared, not the tracking
        cfg = resolve(VIDEO_OPTIONS, {"weights": str(run), "out": str(Path(run) / "bench-video"), "track": False,
                                      "imgsz": args.imgsz, "gt": str(clip.with_suffix(".json")),
                                      "threads": args.threads})
        s = run_video(clip, cfg)
        results["video_runs"].append({"variant": variant, "run": str(run), "fps": s["fps"], "threads": s["threads"],
                                      "backend": s["backend"],
                                      "precision": s["gt"]["precision"], "recall": s["gt"]["recall"],
                                      "box_precision": s["gt"]["box_precision"], "box_recall": s["gt"]["box_recall"]})
        save()

    print("\n| variant | budget (min) | epochs | train img/s | test mAP50 | test mAP50-95 |"
          "\n|---|---:|---:|---:|---:|---:|")
    for r in results["training"]:
        print(f"| {r['variant']} | {r['budget_min']:g} | {r['epochs']} | {r['train_images_per_s']} | "
              f"{r['test_mAP50']} | {r['test_mAP50-95']} |")
    print("\n| variant (longest budget) | video frames/s | threads | precision | recall | box precision | box recall |"
          "\n|---|---:|---:|---:|---:|---:|---:|")
    for r in results["video_runs"]:
        print(f"| {r['variant']} | {r['fps']} | {r['threads']} | {r['precision']} | {r['recall']} | "
              f"{r['box_precision']} | {r['box_recall']} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
