"""``detect video``: run a detector over a video, a folder of images or one image.

Frames are read with OpenCV here (not by ultralytics' loaders) so that ``--stride``, ``--max-frames`` and a video
that ends early are under our control: skipped frames are only grabbed, not converted; grey, alpha and 16-bit
frames become 8-bit BGR. Batches of frames go through ultralytics' ``predict`` (letterbox, inference, NMS) or
``track`` (the same plus the tracker, BoT-SORT by default, whose state persists across batches), and each result
draws itself (``Results.plot``: boxes, class names, confidences). On a CPU the network runs in ONNX Runtime
(``--backend auto``; detect/weights.py loads it). Outputs in ``--out``:

* ``annotated.mp4`` (video input; mp4v at the input fps / stride) or ``annotated/<name>`` (image input),
* ``detections.jsonl``: one line per processed frame, ``{"frame", "time", "detections": [{"class_id",
  "class_name", "conf", "box": [x1, y1, x2, y2], "track_id"}]}`` in pixels of the original frame (``track_id``
  only with ``--track``; null for a detection the tracker has not confirmed as a track); with ``--track`` each
  detection also carries its track's class: ``track_class_id``, ``track_class_name``, ``track_conf``,
  ``track_resolved`` (detect/tracks.py decides them; the annotated output is labelled with them) and
  ``interpolated`` (a box ``--fill-gaps`` added where the detector missed a tracked item for a frame or two;
  tracks seen in fewer than ``--min-track-frames`` frames are left out),
* ``detections.csv``: one row per detection (the same fields),
* ``summary.json``: frames read and processed, frames/s end to end, items seen per class (detections, frames,
  most in one frame, unique tracks with ``--track``), with ``--track`` a ``tracks`` section (each track's class,
  confidence, votes, classifier reading, whether the kNN resolver decided it and its neighbours), and with ``--gt``
  precision and recall at IoU 0.5 (detect/scoring.py), with ``--track`` also by the tracks' classes, class flicker
  and per-track class accuracy.

A one-class detector (``detect train --one-class``) finds items without naming them: the classifier
(``--classifier``) names them, with tracking each track (the per-frame class stays its one class, ``item``), without
it each box in each frame (a box it cannot read, or on a video finds no class of at ``--min-read-conf`` in, is left
out); ``detect eval`` (detect/evaluate.py) scores its boxes alone and its boxes named by the classifier.

A truncated video is processed as far as OpenCV can decode it; ``summary.json`` then says ``complete: false``
with the frame it stopped at, a warning is printed, and the command still succeeds (many healthy files carry a
slightly wrong frame count, so this cannot be an error). An mp4 cut before its index (moov atom) cannot be opened
at all and is an error.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionkit.detect.scoring import IOU_MATCH, Score, TrackScore, box_iou, load_gt, match, with_track_classes  # noqa: F401
from fashionkit.detect.weights import ENGINES, load_detector
from fashionkit.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
WRITABLE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # annotated images keep these
DEFAULT_FPS = 25.0  # for videos whose header has no usable frame rate
# --track: the track's class, and whether the box was interpolated into a gap of the track (--fill-gaps)
TRACK_COLUMNS = ["track_class_id", "track_class_name", "track_conf", "track_resolved", "interpolated"]


# ---- frames in ---------------------------------------------------------------------------------------------

def to_bgr8(frame: np.ndarray) -> np.ndarray:
    """Any OpenCV image (grey, BGRA, 16-bit) as 3-channel 8-bit BGR."""
    import cv2

    if frame.dtype != np.uint8:
        scale = 255.0 / 65535 if frame.dtype == np.uint16 else 255.0 / max(float(frame.max()), 1e-6)
        frame = np.clip(frame.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


@dataclass
class Source:
    """Frames of a video, an image folder or one image: ``(index, name, frame)`` for every ``stride``-th."""
    path: Path
    kind: str  # video | images
    stride: int = 1
    max_frames: int = 0
    fps: float = DEFAULT_FPS
    size: tuple[int, int] = (0, 0)  # width, height of a video
    frame_count: int = 0  # claimed by the video header (0: unknown)
    files: list[Path] = field(default_factory=list)
    read: int = 0  # frames read (video) or images tried
    unreadable: list[str] = field(default_factory=list)
    ended_early: bool = False
    _cap: Any = None

    @classmethod
    def open(cls, path: str | Path, stride: int = 1, max_frames: int = 0) -> Source:
        import cv2

        path = Path(path)
        if not path.exists():
            raise UserError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not files:
                raise UserError(f"{path} holds no images ({', '.join(IMAGE_EXTS)}); pass a video, an image or a "
                                f"folder of images")
            return cls(path, "images", stride, max_frames, files=files)
        if path.suffix.lower() in IMAGE_EXTS:
            return cls(path, "images", 1, max_frames, files=[path])
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty (0 bytes): no frames to read")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise UserError(f"cannot open {path} as a video: it is not a video, uses a codec OpenCV cannot decode, "
                            f"or is truncated before its index (an mp4 cut short); pass a readable video")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        source = cls(path, "video", stride, max_frames, _cap=cap,
                     fps=float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS,
                     size=(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),
                     frame_count=int(count) if math.isfinite(count) and 0 < count < 1e9 else 0)
        return source

    def expected(self) -> int | None:
        """Frames that will be processed, if known."""
        total = len(self.files) if self.kind == "images" else self.frame_count
        if not total:
            return self.max_frames or None
        n = math.ceil(total / self.stride)
        return min(n, self.max_frames) if self.max_frames else n

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        return self._images() if self.kind == "images" else self._video()

    def _images(self):
        import cv2

        done = 0
        for i, file in enumerate(self.files[:: self.stride]):
            if self.max_frames and done >= self.max_frames:
                return
            self.read += 1
            image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if image is None:
                self.unreadable.append(file.name)
                print(f"warning: cannot read {file}; skipped", file=sys.stderr)
                continue
            done += 1
            yield i * self.stride, file.name, to_bgr8(image)

    def _video(self):
        cap, index, done = self._cap, 0, 0
        try:
            while not (self.max_frames and done >= self.max_frames):
                if index % self.stride:
                    ok = cap.grab()  # decode only: a skipped frame needs no colour conversion
                    frame = None
                else:
                    ok, frame = cap.read()
                if not ok:
                    break
                self.read += 1
                if frame is not None:
                    done += 1
                    yield index, f"frame {index}", to_bgr8(frame)
                index += 1
            else:
                return
            if self.frame_count and self.read < self.frame_count - 1:  # the last frame may be miscounted
                self.ended_early = True
        finally:
            cap.release()


# ---- the run -----------------------------------------------------------------------------------------------

CONF, TRACK_CONF = 0.25, 0.1  # --conf none: without / with --track on a video (detect/defaults.py says why)


def check_options(cfg: dict) -> None:
    if cfg["conf"] is not None and not 0 <= cfg["conf"] <= 1:
        raise UserError(f"--conf {cfg['conf']} must lie in [0, 1]")
    if not 0 < cfg["iou"] <= 1:  # the message named the unset --conf "None" beside a bad --iou, and said [0, 1]
        raise UserError(f"--iou {cfg['iou']} must lie in (0, 1]")
    if cfg["imgsz"] < 32 or cfg["imgsz"] % 32:
        raise UserError(f"--imgsz {cfg['imgsz']}: use a multiple of 32 (e.g. 320)")
    if not 0 <= cfg["min_visible"] <= 1:  # above 1 every item was ignored, and P / R said nothing
        raise UserError(f"--min-visible {cfg['min_visible']} must lie in [0, 1] (the share of an item in view)")


def output_dir(out: str | None, input_path: Path) -> Path:
    from fashionkit.runs import ensure_dir, new_run_dir, write_run_info

    if out:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file; pass a directory")
        return ensure_dir(path)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in input_path.stem) or "input"
    run = new_run_dir("detect", f"video-{stem}")
    write_run_info(run, "detect", "video", input=str(input_path))
    return run


class Writer:
    """The annotated video (opened on the first frame: its size is the frame's) or annotated images."""

    def __init__(self, out: Path, source: Source, enabled: bool):
        self.out, self.source, self.enabled = out, source, enabled
        self.video = None
        self.path = None
        if enabled and source.kind == "images":
            self.path = out / "annotated"
            self.path.mkdir(exist_ok=True)
        elif enabled:
            self.path = out / "annotated.mp4"
            self.tmp = out / ".annotated.part.mp4"

    def write(self, name: str, image: np.ndarray) -> None:
        import cv2

        if not self.enabled:
            return
        if self.source.kind == "images":
            if Path(name).suffix.lower() not in WRITABLE_EXTS:  # e.g. a grey-only .pgm: keep the colours
                name = f"{Path(name).stem}.png"
            if not cv2.imwrite(str(self.path / name), image):
                raise UserError(f"cannot write {self.path / name}; check the disk and --out")
            return
        if self.video is None:
            h, w = image.shape[:2]
            fps = self.source.fps / self.source.stride
            self.video = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self.video.isOpened():
                raise UserError(f"OpenCV cannot write an mp4v video to {self.out}; check --out and OpenCV's video "
                                f"support, or pass --no-save-video")
        self.video.write(image)

    def close(self, keep: bool = True) -> None:
        if self.video is not None:
            self.video.release()
            self.video = None
            if keep:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


def detection(box, conf: float, cls: int, names: dict) -> dict:
    """One detection as the outputs hold it (box xyxy in original-frame pixels, to 0.1 px; confidence to 4 places)."""
    return {"class_id": int(cls), "class_name": names[int(cls)], "conf": round(float(conf), 4),
            "box": [round(float(v), 1) for v in box]}


def detections(result, track: bool) -> list[dict]:
    """One ultralytics Results as plain dicts (``detection``)."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxy = boxes.xyxy.cpu().numpy()
    conf = boxes.conf.cpu().numpy()
    cls = boxes.cls.cpu().numpy().astype(int)
    ids = boxes.id.cpu().numpy().astype(int) if track and boxes.id is not None else None
    out = []
    for i in range(len(cls)):
        d = detection(xyxy[i], conf[i], cls[i], result.names)
        if track:
            d["track_id"] = int(ids[i]) if ids is not None else None
        out.append(d)
    return out


def tracked(found: list[list[dict]], untracked: int) -> tuple[list[list[dict]], int]:
    """Each frame's detections without those no track follows, and ``untracked`` plus how many those were. In a frame
    where the tracker reports no track, ultralytics passes the detector's raw boxes through without ids (down to
    ``--conf``, 0.1: on the validation clips 39 such boxes in 14 frames, 2 of them an item named right); they are
    not items the tracker follows, so they go as a track seen in fewer than ``--min-track-frames`` frames goes."""
    kept = [[d for d in dets if d.get("track_id") is not None] for dets in found]
    return kept, untracked + sum(len(a) - len(b) for a, b in zip(found, kept))


class Tally:
    """Items seen per class: detections, frames with at least one, most in one frame, unique track ids. A tracked
    detection counts under its track's class, the one the annotated video shows (its frame's own class stays in the
    CSV's class_name and in each track's frame_classes)."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.detections: dict[str, int] = {}
        self.frames: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.tracks: dict[str, set] = {}

    def add(self, dets: list[dict]) -> None:
        counts: dict[str, int] = {}
        for d in dets:
            name = d.get("track_class_name") or d["class_name"]
            counts[name] = counts.get(name, 0) + 1
            if d.get("track_id") is not None:  # a track counts once
                self.tracks.setdefault(name, set()).add(d["track_id"])
        for name, n in counts.items():
            self.detections[name] = self.detections.get(name, 0) + n
            self.frames[name] = self.frames.get(name, 0) + 1
            self.most[name] = max(self.most.get(name, 0), n)

    def result(self, track: bool) -> dict:
        per_class = {}
        for name in self.names.values():
            if name in self.detections or name in self.tracks:  # a class can be a track's and no frame's
                row = {"detections": self.detections.get(name, 0), "frames": self.frames.get(name, 0),
                       "most_in_a_frame": self.most.get(name, 0)}
                if track:
                    row["unique_tracks"] = len(self.tracks.get(name, ()))
                per_class[name] = row
        return per_class


def run_video(input_path: str | Path, cfg: dict[str, Any], progress: bool = True) -> dict:
    """Detect items in ``input_path`` with the resolved ``detect video`` options; returns the summary.
    With ``--track`` the outputs are written in a second pass, once every track has its class (detect/tracks.py)."""
    import torch
    from tqdm import tqdm

    from fashionkit.detect import tracks
    from fashionkit.runs import atomic_write_json

    check_options(cfg)
    track = cfg["track"]
    if track:
        tracks.check_options(cfg)
    input_path = Path(input_path)
    source = Source.open(input_path, cfg["stride"], cfg["max_frames"])
    use_tracker = track and source.kind == "video"  # a folder of images: no tracker links its pictures
    if cfg["conf"] is None:
        cfg = {**cfg, "conf": TRACK_CONF if use_tracker else CONF}
    gt = load_gt(cfg["gt"]) if cfg.get("gt") else None
    if gt is not None and source.kind != "video":
        raise UserError("--gt scores a video made by `detect make-video`; the input is not a video")
    if gt is not None and source.frame_count and len(gt) != source.frame_count:
        raise UserError(f"--gt {cfg['gt']} has {len(gt)} frames but {input_path} has {source.frame_count}; pass the "
                        f"ground truth of this video")
    t_load = time.perf_counter()
    from fashionkit.detect.train import keep_threads, ultralytics_device

    device = ultralytics_device(cfg["device"])
    model, weights, backend = load_detector(cfg["weights"], cfg.get("backend", "torch"), device)
    keep_threads(model, cfg["threads"])
    names = model.names
    # a one-class detector (`detect train --one-class`) only finds the items: the classifier names them with
    # Fashion-MNIST's classes, each track's (its own "item" stays the per-frame class) or, without tracking, each box's
    one_class = tracks.is_one_class(names)
    class_names = tracks.reading_names(names)
    read_frames = one_class and not track
    if track or read_frames:  # before the output directory exists: a misfitting run leaves nothing behind
        from fashionkit.device import select_device

        # without tracking only the classifier reads (a one-class detector's boxes): no metric run is looked for
        runs = tracks.choose_runs(cfg if track else {**cfg, "metric": "none"}, weights)
        readers = tracks.load_readers(*runs, class_names, select_device(cfg["device"]))
        if one_class and readers.classifier is None:
            raise UserError(f"{weights}: a one-class detector finds items without naming them; pass --classifier auto "
                            f"(its detect run's crop reader) or a classify run to name them")
    if track:
        readers.gate, readers.gate_run = tracks.load_gate(cfg, weights, readers.device) or (None, None)
        tracks.note(readers, cfg)
        # a folder of images holds unrelated pictures: every detection is its own track, no tracker links them
        crops = cfg["crops"] if readers.classifier is not None or readers.embedder is not None else 0  # none to read
        collector = tracks.TrackCollector(len(names), crops, new_ids=source.kind != "video")
    out = output_dir(cfg["out"], input_path)
    load_seconds = time.perf_counter() - t_load
    writer = Writer(out, source, cfg["save_video"])
    jsonl_tmp, csv_tmp = out / ".detections.jsonl.part", out / ".detections.csv.part"
    lines_tmp = out / ".detections.frames.part"  # --track: the first pass's lines, before the tracks' classes
    # a one-class detector's boxes count under its own class where no track names them
    tally = Tally(dict(enumerate([*names.values(), *class_names.values()])) if one_class else names)
    score = Score() if gt is not None else None
    track_score, track_class_score = (TrackScore(), Score()) if gt is not None and track else (None, None)
    kwargs = dict(conf=cfg["conf"], iou=cfg["iou"], agnostic_nms=cfg["agnostic_nms"], imgsz=cfg["imgsz"],
                  device=device, verbose=False)
    # with a tracker: the detector's boxes before it, where `tracks.first_boxes` will read them
    raw = tracks.BoxesBefore(cfg["stride"])
    captured: list[np.ndarray] = []
    if use_tracker:
        kwargs.update(persist=True, tracker=cfg["tracker"])
        # runs before the tracker's own callback, which ultralytics adds on the first track() call (were it to run
        # after it, these would be the tracked boxes only, and fewer first boxes would be found: nothing wrong added)
        model.add_callback("on_predict_postprocess_end", lambda predictor: captured.extend(
            torch.cat([r.boxes.xyxy, r.boxes.conf[:, None], r.boxes.cls[:, None]], 1).cpu().numpy().astype(np.float64)
            for r in predictor.results))
    processed, untracked, t0 = 0, 0, time.perf_counter()
    phases: dict[str, float] = {}
    bar = tqdm(total=source.expected(), unit="frame", desc=input_path.name, dynamic_ncols=True,
               disable=None if progress else True)
    keep = False
    try:
        with jsonl_tmp.open("w") as jsonl, csv_tmp.open("w", newline="") as csv_file:
            rows = csv.writer(csv_file)
            rows.writerow(["frame", "source", "time", "class_id", "class_name", "conf", "x1", "y1", "x2", "y2",
                           "track_id"] + (TRACK_COLUMNS if track else []))

            def emit(line: dict, name: str, image: np.ndarray | None) -> None:
                index, t, dets = line["frame"], line.get("time"), line["detections"]
                jsonl.write(json.dumps(line) + "\n")
                for d in dets:
                    rows.writerow([index, name, t, d["class_id"], d["class_name"], d["conf"], *d["box"],
                                   d.get("track_id")] + [d[c] for c in TRACK_COLUMNS if track])
                tally.add(dets)
                if score is not None:
                    frame_gt = gt[index] if index < len(gt) else []
                    score.add(dets, frame_gt, cfg["min_visible"])
                    if track_score is not None:
                        track_score.add(dets, frame_gt)
                        track_class_score.add(with_track_classes(dets), frame_gt, cfg["min_visible"])
                writer.write(name, image)

            with lines_tmp.open("w") if track else open(os.devnull, "w") as lines:
                batch: list[tuple[int, str, np.ndarray]] = []

                def flush() -> None:
                    nonlocal processed, untracked
                    frames = [f for _, _, f in batch]
                    try:
                        results = model.track(frames, **kwargs) if use_tracker else model.predict(frames, **kwargs)
                    except FileNotFoundError as e:
                        raise UserError(f"--tracker {cfg['tracker']}: {e}") from None
                    found = [detections(result, track) for result in results]
                    if use_tracker:  # see `tracked`
                        found, untracked = tracked(found, untracked)
                        boxes_before = captured[-len(batch):]
                        captured.clear()
                    if read_frames:  # each box named by the classifier; on a video, not-fashion left out as tracks are
                        found = tracks.read_boxes([f for _, _, f in batch], found, readers, class_names,
                                                  cfg["min_read_conf"] if source.kind == "video" else 0.0)
                    for (index, name, frame), result, dets in zip(batch, results, found):
                        t = round(index / source.fps, 4) if source.kind == "video" else None
                        line = {"frame": index, **({"time": t} if t is not None else {"source": name}),
                                "detections": dets}
                        if track:
                            collector.add(index, frame, dets)
                            lines.write(json.dumps(line) + "\n")
                        elif read_frames:
                            emit(line, name, tracks.draw(frame, dets, class_names) if writer.enabled else None)
                        else:
                            emit(line, name, result.plot(line_width=2) if writer.enabled else None)
                    if use_tracker:  # after collector.add: the tracks that start in this batch are known
                        raw.add([index for index, _, _ in batch], boxes_before, collector)
                    processed += len(batch)
                    bar.update(len(batch))
                    batch.clear()

                for item in source:
                    batch.append(item)
                    if len(batch) == cfg["batch"]:
                        flush()
                if batch:
                    flush()
            if track:
                phases["first_pass"] = time.perf_counter() - t0
                # short tracks and gaps exist only where a tracker linked frames (not in a folder of images)
                joined = tracks.stitch(collector, cfg["stitch_gap"], cfg["stride"]) if use_tracker else {}
                # a clip shorter than --min-track-frames would lose every item: its tracks need only span it
                cfg = {**cfg, "min_track_frames": min(cfg["min_track_frames"], max(processed, 1))}
                dropped = tracks.drop_short(collector, cfg["min_track_frames"]) if use_tracker else set()
                fills = tracks.gap_fills(collector, cfg["stride"], cfg["fill_gaps"]) if use_tracker else {}
                firsts = tracks.first_boxes(collector, raw.boxes, cfg["stride"], names) if use_tracker else {}
                min_read = cfg["min_read_conf"] if use_tracker else 0.0  # 0: nothing is left out
                decisions = tracks.decide_tracks(collector, readers, class_names, cfg["vote_weight"],
                                                 cfg["resolve_margin"], skip_resolve_under=min_read, frame_names=names)
                unread = tracks.drop_unread(decisions, min_read, unnamed=one_class,
                                            max_not_item=cfg["max_not_item"] if use_tracker else None)
                phases["decide"] = time.perf_counter() - t0 - phases["first_pass"]
                added = {f: fills.get(f, []) + firsts.get(f, []) for f in fills.keys() | firsts.keys()}
                for line, name, image in tracks.labelled_frames(lines_tmp, source, decisions, class_names,
                                                                writer.enabled, added, dropped | unread, joined):
                    emit(line, name, image)
                phases["second_pass"] = time.perf_counter() - t0 - phases["first_pass"] - phases["decide"]
        keep = True
    finally:
        bar.close()
        writer.close(keep)
        lines_tmp.unlink(missing_ok=True)
        if keep:
            os.replace(jsonl_tmp, out / "detections.jsonl")
            os.replace(csv_tmp, out / "detections.csv")
        else:
            jsonl_tmp.unlink(missing_ok=True)
            csv_tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    if processed == 0:
        what = "images could be read" if source.kind == "images" else "frames could be decoded"
        raise UserError(f"no {what} from {input_path}: it is empty or truncated; pass a readable input")

    summary = {
        "input": str(input_path), "kind": source.kind, "weights": str(weights), "out": str(out),
        "files": {"video" if source.kind == "video" else "images": str(writer.path) if writer.enabled else None,
                  "jsonl": str(out / "detections.jsonl"), "csv": str(out / "detections.csv")},
        "frames_read": source.read, "frames_processed": processed, "stride": cfg["stride"],
        "complete": not source.ended_early,
        "seconds": round(seconds, 3), "fps": round(processed / seconds, 2) if seconds else None,
        "model_load_seconds": round(load_seconds, 3),
        "imgsz": cfg["imgsz"], "conf": cfg["conf"], "iou": cfg["iou"], "agnostic_nms": cfg["agnostic_nms"],
        "track": cfg["track"], "device": device,
        "backend": backend,
        "threads": torch.get_num_threads(),
        "items": tally.result(cfg["track"]),
    }
    if read_frames:
        summary["classifier"] = str(readers.classifier_run)
    if track:
        summary["tracks"] = tracks.summary(decisions, readers, cfg, phases, len(dropped),
                                           sum(map(len, fills.values())), len(joined), len(unread), untracked,
                                           sum(map(len, firsts.values())))
    if source.kind == "video":
        summary.update(video_fps=source.fps, video_size=list(source.size), video_frame_count=source.frame_count)
    if source.unreadable:
        summary["unreadable"] = source.unreadable
    if source.ended_early:
        summary["stopped_at_frame"] = source.read
        print(f"warning: {input_path} ended after {source.read} of the {source.frame_count} frames its header "
              f"announces (truncated or damaged?); the outputs cover frames 0-{source.read - 1}", file=sys.stderr)
    if score is not None:
        summary["gt"] = {"file": str(cfg["gt"]), "min_visible": cfg["min_visible"], **score.result()}
        if track_score is not None:
            summary["gt"]["with_track_classes"] = track_class_score.result()
            summary["gt"]["tracks"] = track_score.result()
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_summary(s: dict) -> str:
    from fashionkit.detect.tracks import format_lines

    lines = [f"{s['input']}: {s['frames_processed']} frames processed ({s['frames_read']} read, stride "
             f"{s['stride']}) in {s['seconds']:.1f}s = {s['fps']:.1f} frames/s end to end "
             f"({ENGINES.get(s.get('backend'), s.get('backend'))})"]
    if not s["complete"]:
        lines.append(f"incomplete: the input stopped at frame {s['stopped_at_frame']}")
    for name, row in s["items"].items():
        extra = f", {row['unique_tracks']} tracks" if "unique_tracks" in row else ""
        lines.append(f"  {name:<12} {row['detections']:>6} detections in {row['frames']:>5} frames, at most "
                     f"{row['most_in_a_frame']} at once{extra}")
    if not s["items"]:
        # the detector finds items in scenes, from about 20 px to about 250 px at its input: a close-up of one item,
        # edge to edge, is outside what it was trained on, and is what `classify predict` is for
        photos = s["input"] if Path(s["input"]).is_file() else str(Path(s["input"]) / "*")
        hint = (f" (the detector finds items in a scene; to name a photo of one item, run `classify predict "
                f"{photos}`)" if s["kind"] == "images" else "")
        lines.append(f"  nothing detected{hint}")
    if "gt" in s:
        g = s["gt"]
        lines.append(f"vs ground truth (IoU {g['iou']}): precision {g['precision']} recall {g['recall']} "
                     f"(boxes only: precision {g['box_precision']} recall {g['box_recall']})")
        if "with_track_classes" in g:
            lines.append(f"  with the tracks' classes: precision {g['with_track_classes']['precision']} recall "
                         f"{g['with_track_classes']['recall']}")
    lines += format_lines(s)
    lines.append(f"wrote {s['out']}")
    return "\n".join(lines)
