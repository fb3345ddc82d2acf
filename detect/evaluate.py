"""``detect eval``: a detect run's mAP on a dataset split with its own classes, with classes ignored (the boxes
alone) and with its boxes' classes re-read by the crop reader (weighed by its gate where it has one), and with
``--video`` precision / recall on a ``detect make-video`` clip (``detect video``'s scoring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fashionkit.detect.video import format_summary, run_video
from fashionkit.detect.weights import load_detector, weights_file
from fashionkit.errors import UserError


def eval_classifier(cfg: dict, weights: Path, names: dict) -> tuple[object, Path] | None:
    """``detect eval --classifier``: ``(model, run)`` of the classify run that re-reads the boxes' classes (auto: as
    ``detect video --track`` chooses it), loaded on the CPU, or None; one whose classes are not the detector's is a
    UserError."""
    import torch

    from fashionkit.detect.tracks import choose_runs, has_fashion_classes, open_classifier, reading_names

    if not 0 <= cfg["vote_weight"] <= 1:
        raise UserError(f"--vote-weight {cfg['vote_weight']}: give a weight from 0 to 1")
    classifier, _ = choose_runs({"classifier": cfg["classifier"], "metric": "none"}, weights)
    if classifier is None:
        return None
    if not has_fashion_classes(reading_names(names)):
        if str(cfg["classifier"]).lower() == "auto":
            return None
        raise UserError(f"--classifier {classifier}: the detector's classes are not Fashion-MNIST's ten, which a "
                        f"classify run reads; pass --classifier none")
    model, _, run = open_classifier(classifier, torch.device("cpu"))  # a run that is no Fashion-MNIST reader: error
    return model, run


def video_options(cfg: dict[str, Any], weights: Path, out: Path) -> dict[str, Any]:
    """``detect video``'s options for ``--video``, checked as ``detect video`` checks them, with the clip and its
    ground truth found: a mistake there is said before the minutes of mAP evaluation rather than after them."""
    from fashionkit.config import resolve
    from fashionkit.detect import tracks
    from fashionkit.detect.defaults import VIDEO_OPTIONS
    from fashionkit.detect.scoring import load_gt
    from fashionkit.detect.video import check_options

    video = Path(cfg["video"])
    if not video.is_file():
        raise UserError(f"--video {video}: file not found (make a clip with `detect make-video CLIP.mp4`)")
    if cfg["video_imgsz"] < 32 or cfg["video_imgsz"] % 32:  # detect video would name its own --imgsz
        raise UserError(f"--video-imgsz {cfg['video_imgsz']}: use a multiple of 32 (e.g. 320)")
    vcfg = resolve(VIDEO_OPTIONS, {"weights": str(weights), "out": str(out), "imgsz": cfg["video_imgsz"],
                                   "conf": cfg["conf"], "gt": str(video.with_suffix(".json")),
                                   "min_visible": cfg["min_visible"], "device": cfg["device"],
                                   "threads": cfg["threads"]})
    check_options(vcfg)
    tracks.check_options(vcfg)
    load_gt(vcfg["gt"])
    return vcfg


def evaluate_run(run: str | Path, cfg: dict[str, Any]) -> dict:
    """mAP of a detect run's best.pt on a dataset split: with its own classes, with classes ignored (the boxes
    alone), and with its boxes' classes re-read by ``--classifier`` (and, with ``--video``, P/R on a make-video
    clip)."""
    import torch

    from fashionkit.bundled import output_home
    from fashionkit.detect.model import use_ultralytics
    from fashionkit.detect.tracks import is_one_class, load_gate
    from fashionkit.detect.train import data_yaml, dataset_info, evaluate_with_boxes, ultralytics_device
    from fashionkit.runs import atomic_write_json, ensure_dir, read_json

    if cfg["imgsz"] and (cfg["imgsz"] < 32 or cfg["imgsz"] % 32):  # ultralytics ran -5 and scored 0, silently
        raise UserError(f"--imgsz {cfg['imgsz']}: use a multiple of 32 (e.g. 320), or 0 for the run's own size")
    run = Path(run)
    weights = weights_file(run)
    summary = (read_json(run / "summary.json", missing_ok=True) or {}) if run.is_dir() else {}
    data = data_yaml(cfg["data"] or summary.get("data"))
    info = dataset_info(data)
    if cfg["split"] not in info:
        raise UserError(f"{data} has no {cfg['split']} split; choose --split val or make the dataset with test scenes")
    imgsz = cfg["imgsz"] or summary.get("imgsz") or 320
    home = output_home(run if run.is_dir() else weights.parent, "detector")  # never the installed package
    out = Path(cfg["out"]) if cfg["out"] else home / "eval" / cfg["split"]
    vcfg = video_options(cfg, weights, out / "video") if cfg["video"] else None  # refused before the mAP, not after
    out = ensure_dir(out)
    use_ultralytics()
    detector = load_detector(weights)[0]  # a clear error for a non-detector before ultralytics' validator sees it
    device = ultralytics_device(cfg["device"])
    reader = eval_classifier(cfg, weights, detector.names)
    # the gate weighs the read boxes, as `detect video` asks it, loaded on the CPU as the reader is
    gate = load_gate(cfg, weights, torch.device("cpu")) if reader is not None else None
    result = {"weights": str(weights), "data": str(data), "imgsz": imgsz,
              cfg["split"]: evaluate_with_boxes(weights, data, cfg["split"], imgsz, cfg["batch"], device, out,
                                                cfg["plots"], cfg["threads"], is_one_class(detector.names))}
    if reader is not None:
        from fashionkit.detect.reader import evaluate_read

        result[cfg["split"]]["read"] = evaluate_read(weights, *reader, data, cfg["split"], imgsz, cfg["batch"],
                                                     device, out / "read", cfg["vote_weight"], cfg["plots"],
                                                     cfg["threads"], gate)
    if vcfg is not None:
        video = Path(cfg["video"])
        v = run_video(video, vcfg)
        result["video"] = {k: v[k] for k in ("input", "frames_processed", "fps", "imgsz", "conf", "gt")}
        print(format_summary(v))
    atomic_write_json(out / "eval.json", result)
    print(f"wrote {out / 'eval.json'}")
    return result
