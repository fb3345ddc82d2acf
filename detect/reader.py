"""The crop reader: the classifier, fine-tuned on items cut out of the detector's own training scenes.

``detect video --track`` reads each track's crops with a classifier. The classifier learnt clean, centred 28x28
items; the crops are items on photographs, tinted, blurred, noisy, JPEG-compressed, partly covered, cut by boxes a
few pixels off. On the ground-truth boxes of the realistic test scenes the bundled classifier names 61% of the crops
right; fine-tuned for a few minutes on the training scenes' crops it names about 80% (BENCHMARKS.md, "The crop
reader").

The crops are cut exactly as a track's are (``tracks.crop_grey`` + ``tracks.crop_item``), from the dataset's
ground-truth boxes; each training box is cut ``copies`` times, its centre and size jittered by about a detector's
error (``jitter``), so the reader learns boxes as the detector draws them rather than as the labels do. Validation
and test crops use the exact boxes. The training set's photographs, items and split are the detector's: the
validation and test crops show backgrounds and items neither has seen.

``detect reader RUN`` (and ``detect train``, when it trains from a classify run) writes ``RUN/reader/``, an ordinary
classify run directory (config.yaml and weights/best.pt of the same architecture, run.json, summary.json), so
anything that takes a classifier takes it; ``detect video --classifier auto`` prefers it to the classifier the
detector was trained from.

The detector's own class is its weak part: on the realistic test scenes the bundled detector finds the items
(mAP50 0.933 with classes ignored) far better than it names them (0.686). ``detect eval`` (and ``detect train``,
after making the reader) therefore scores the detector a second time with each box's class re-read by the reader
(``evaluate_read``): 0.803 for the bundled detector (BENCHMARKS.md, "The detector's boxes read by the crop reader").
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from fashionkit.errors import UserError

READER_DIR = "reader"
GATE_DIR = "gate"  # `detect reader --role gate`: a reader with "not an item" that `detect video --gate auto` asks


def reader_of(detect_run: Path | None, name: str = READER_DIR) -> Path | None:
    """``RUN/reader`` (``name``: or ``RUN/gate``) when the detect run has a finished one."""
    if detect_run is None:
        return None
    reader = Path(detect_run) / name
    return reader if (reader / "run.json").is_file() and (reader / "weights" / "best.pt").is_file() else None


def gate_of(detect_run: Path | None) -> Path | None:
    """``RUN/gate`` when the detect run has a finished gate (``detect reader RUN --background N --role gate``)."""
    return reader_of(detect_run, GATE_DIR)


def split_dirs(data_yaml: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) folders of a make-data split; None when the dataset has no such split."""
    from fashionkit.config import load_yaml
    from fashionkit.detect.train import dataset_root

    info = load_yaml(data_yaml)
    if split not in info:
        return None
    images = dataset_root(data_yaml, info) / info[split]
    labels = images.parent.parent / "labels" / images.name  # ultralytics' rule: .../images/x -> .../labels/x
    return (images, labels) if images.is_dir() else None


def scene_boxes(data_yaml: Path, split: str):
    """``(BGR frame, [(class, x1, y1, x2, y2), ...])`` for each scene of a make-data split with a label file, in
    file order: the ground-truth boxes in the frame's pixels."""
    import cv2

    dirs = split_dirs(data_yaml, split)
    if dirs is None:
        return
    images, labels = dirs
    for file in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        label_file = labels / f"{file.stem}.txt"
        rows = np.loadtxt(label_file, ndmin=2) if label_file.is_file() and label_file.stat().st_size else []
        if not len(rows):
            continue
        frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if frame is None:
            continue
        H, W = frame.shape[:2]
        yield frame, [(int(c), (cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
                      for c, cx, cy, w, h in rows]


def scene_crops(data_yaml: Path, split: str, copies: int = 1, jitter: float = 0.0, seed: int = 0):
    """``(items uint8 [N, 28, 28], labels int64 [N])`` cut from the ground-truth boxes of a split's scenes the way a
    track's crops are cut; each box ``copies`` times with its centre and size moved by N(0, ``jitter``) of its size.
    Boxes too small to read (``tracks.CROP_MIN_SIDE``) are left out, as in a track."""
    import torch

    from fashionkit.detect.tracks import crop_grey, crop_item

    rng = np.random.default_rng(seed)
    items, classes = [], []
    for frame, boxes in scene_boxes(data_yaml, split):
        for c, x1, y1, x2, y2 in boxes:
            w, h = x2 - x1, y2 - y1
            for _ in range(copies):
                dx, dy, dw, dh = rng.normal(0.0, jitter, 4) if jitter else (0.0, 0.0, 0.0, 0.0)
                bw, bh = w * (1 + dw), h * (1 + dh)
                x, y = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
                grey = crop_grey(frame, (x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2))
                if grey is not None:
                    items.append(crop_item(grey))
                    classes.append(c)
    if not items:
        return torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.stack(items), torch.tensor(classes, dtype=torch.long)


# ---- background: crops of what is not an item ---------------------------------------------------------------------

# A candidate box is background when it overlaps no item much: IoU under 0.2 with every ground-truth box, and no
# more than 0.3 of an item inside it or of it covered by one (a box round a whole small item, or one inside a big
# item, is an item's crop, not background)
BACKGROUND_IOU = 0.2
BACKGROUND_COVER = 0.3


def is_background(box, items: np.ndarray) -> bool:
    """Whether ``box`` (xyxy) overlaps none of ``items`` (``[n, 4]`` xyxy) enough to show one (see above)."""
    from fashionkit.detect.scoring import box_area, box_intersection, box_iou

    if not len(items):
        return True
    b = np.asarray(box, float).reshape(1, 4)
    inter = box_intersection(b, items)[0]
    return bool((box_iou(b, items)[0] < BACKGROUND_IOU).all() and (inter <= BACKGROUND_COVER * box_area(items)).all()
                and (inter <= BACKGROUND_COVER * box_area(b)[0]).all())


def background_boxes(rng: np.random.Generator, frame_shape, boxes: list, found: list, n: int) -> list:
    """Up to ``n`` boxes on a scene's background (``is_background`` against its ground-truth ``boxes``, (class, x1,
    y1, x2, y2)): first the detector's own boxes there (``found``, xyxy, most confident first), which are what a track
    on the photograph's own things starts from, then random boxes of an item's size (a ground-truth box's width and
    height, each scaled by 0.5-2) at random places."""
    H, W = frame_shape[:2]
    items = np.array([b[1:] for b in boxes], float).reshape(-1, 4)
    chosen = [list(map(float, b)) for b in found if is_background(b, items)][:n]
    sizes = items[:, 2:] - items[:, :2] if len(items) else np.array([[W / 6, H / 6]])
    for _ in range(20 * n):
        if len(chosen) >= n:
            break
        w, h = sizes[rng.integers(len(sizes))] * rng.uniform(0.5, 2.0, 2)
        w, h = min(w, W - 1), min(h, H - 1)
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        if is_background((x, y, x + w, y + h), items):
            chosen.append([x, y, x + w, y + h])
    return chosen


def background_crops(data_yaml: Path, split: str, per_scene: int, detector=None, imgsz: int = 320, conf: float = 0.1,
                     seed: int = 0, progress: bool = False):
    """uint8 ``[N, 28, 28]``: up to ``per_scene`` crops of background from each scene of a split (``background_boxes``;
    the detector's boxes from ``detector``, a YOLO model, at ``conf`` as `detect video` runs it), cut as a track's
    crops are."""
    import torch
    from tqdm import tqdm

    from fashionkit.detect.tracks import crop_grey, crop_item

    rng = np.random.default_rng(seed)
    items = []
    dirs = split_dirs(data_yaml, split)
    total = sum(1 for _ in dirs[0].iterdir()) if dirs else 0
    for frame, boxes in tqdm(scene_boxes(data_yaml, split), total=total, unit="scene",
                             desc=f"background ({split})", disable=not progress):
        found = []
        if detector is not None:
            result = detector.predict(frame, imgsz=imgsz, conf=conf, agnostic_nms=True, device="cpu",
                                      verbose=False)[0]
            found = result.boxes.xyxy.cpu().numpy().tolist()  # ultralytics sorts them by confidence
        for box in background_boxes(rng, frame.shape, boxes, found, per_scene):
            grey = crop_grey(frame, box)
            if grey is not None:
                items.append(crop_item(grey))
    return torch.stack(items) if items else torch.zeros(0, 28, 28, dtype=torch.uint8)


def with_not_item(model):
    """``model`` (a classify model of C classes) with one more output, class C, "not an item": the head's C rows
    kept, the new one starting at zero."""
    import torch

    head = model.head
    grown = torch.nn.Linear(head.in_features, head.out_features + 1)
    with torch.no_grad():
        grown.weight[:-1], grown.bias[:-1] = head.weight, head.bias
        grown.weight[-1], grown.bias[-1] = 0.0, 0.0
    model.head = grown
    model.num_classes = grown.out_features
    model.options = {**model.options, "num_classes": grown.out_features}
    return model


def accuracy(model, items, labels, device, tta: bool = True) -> float | None:
    from fashionkit.classify.predict import predict_probs

    if not len(labels):
        return None
    probs = predict_probs(model, items, device, tta=tta)
    return round(float((probs.argmax(1) == labels).float().mean()), 4)


def sources(run: Path, cfg: dict) -> tuple[Path, Path]:
    """(data.yaml, classify run) the reader is made from: the options, else what the detect run trained on/from."""
    from fashionkit.detect.tracks import auto_runs
    from fashionkit.detect.train import data_yaml
    from fashionkit.runs import read_json

    summary = read_json(run / "summary.json", missing_ok=True) or {}
    data = cfg["data"] or summary.get("data")
    if not data:
        raise UserError(f"{run} does not record its dataset; pass --data DIR (a `detect make-data` dataset)")
    data = data_yaml(data)
    if cfg["from"]:
        classifier = Path(cfg["from"])
    else:
        classifier = auto_runs(run, reader=False)["classifier"]
        if classifier is None:
            raise UserError(f"{run} was not trained from a classify run that still exists; pass --from RUN (a "
                            f"classify run trained on Fashion-MNIST)")
    return data, classifier


def train_reader(detect_run: str | Path, cfg: dict[str, Any], progress: bool = True, made_by: str = "detect reader"
                 ) -> tuple[Path, dict]:
    """Fine-tune the classifier on the scenes' crops and write ``RUN/reader`` (``--role gate``: ``RUN/gate``);
    returns (its dir, summary).
    ``made_by``: the command, recorded in its run.json (`detect reader`, or `detect train` at its end)."""
    import torch
    from tqdm import tqdm

    from fashionkit import bundled
    from fashionkit.classify.checkpoint import save_checkpoint
    from fashionkit.config import check_range, load_yaml, save_yaml
    from fashionkit.data.augment import RandomHorizontalFlip
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.data.loader import normalize, to_float
    from fashionkit.detect.tracks import open_classifier
    from fashionkit.runs import atomic_write_json, open_run, read_json, replace_dir, write_run_info

    run = open_run(detect_run, "detect", what="detect run")
    if bundled.is_bundled(run):
        raise UserError(f"{run} is the bundled detector, which is never written to; copy it (cp -r {run} "
                        f"runs/detect/mine) and pass the copy")
    if cfg["role"] == "gate" and not cfg["background"]:
        raise UserError("--role gate: a gate tells items from what is not an item, so it needs background crops; "
                        "add --background 2")
    out_name = GATE_DIR if cfg["role"] == "gate" else READER_DIR
    check_range(cfg, "jitter", 0, 0.5, "a fraction of the box in [0, 0.5)")
    check_range(cfg, "lr", 0, None, "a positive number", low_open=True)
    check_range(cfg, "label_smoothing", 0, 1, "a number in [0, 1)")
    data, classifier_run = sources(run, cfg)
    names = load_yaml(data).get("names") or {}
    if [names[i] for i in sorted(names)] != list(CLASSES):
        raise UserError(f"{data}: its classes are not Fashion-MNIST's ten, which a classifier reads; the crop reader "
                        f"needs a `detect make-data` dataset")
    device = torch.device("cpu")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    model, classifier_cfg, classifier_run = open_classifier(classifier_run, device, "--from", "")

    started = time.perf_counter()
    train_x, train_y = scene_crops(data, "train", cfg["copies"], cfg["jitter"], cfg["seed"])
    if not len(train_y):
        raise UserError(f"{data}: its training scenes hold no item big enough to read; make scenes with items "
                        f"(`detect make-data --min-items 1`)")
    batch_size = min(cfg["batch_size"], len(train_y))
    val_x, val_y = scene_crops(data, "val")
    test_x, test_y = scene_crops(data, "test")
    background = {}
    if cfg["background"]:
        # crops of the scenes' background, the detector's own false boxes first: an 11th class, "not an item"
        from fashionkit.detect.weights import load_detector, quiet_ultralytics

        detector = load_detector(run, backend="auto")[0]
        imgsz = int((read_json(run / "summary.json", missing_ok=True) or {}).get("imgsz") or 320)
        with quiet_ultralytics():
            background = {split: background_crops(data, split, cfg["background"], detector, imgsz, seed=cfg["seed"],
                                                  progress=progress) for split in ("train", "val", "test")}
        not_item = len(CLASSES)
        train_x = torch.cat([train_x, background["train"]])
        train_y = torch.cat([train_y, torch.full((len(background["train"]),), not_item, dtype=torch.long)])
    cut_seconds = time.perf_counter() - started
    before = {"val": accuracy(model, val_x, val_y, device), "test": accuracy(model, test_x, test_y, device)}

    torch.manual_seed(cfg["seed"])
    reader = copy.deepcopy(model)
    if background:
        reader = with_not_item(reader)
    reader.train()
    steps_per_epoch = len(train_y) // batch_size
    optimizer = torch.optim.SGD(reader.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch,
                                                   pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    mirror = RandomHorizontalFlip()
    history = []
    with tqdm(total=cfg["epochs"] * steps_per_epoch, unit="batch", desc="reader", disable=not progress) as bar:
        for epoch in range(1, cfg["epochs"] + 1):
            reader.train()
            order = torch.randperm(len(train_y))
            total = 0.0
            for step in range(steps_per_epoch):
                batch = order[step * batch_size:(step + 1) * batch_size]
                x = normalize(to_float(train_x[batch]))
                x = mirror(x)  # a mirrored item is the same item
                loss = loss_fn(reader(x), train_y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
                bar.update()
            history.append({"epoch": epoch, "train_loss": round(total / steps_per_epoch, 4),
                            "val_accuracy": accuracy(reader, val_x, val_y, device, tta=False)})
            bar.set_postfix(loss=history[-1]["train_loss"], val=history[-1]["val_accuracy"])
    reader.eval()
    after = {"val": accuracy(reader, val_x, val_y, device), "test": accuracy(reader, test_x, test_y, device)}
    summary = {
        "classifier_run": str(classifier_run), "data": str(data), "detect_run": str(run),
        "crops": {"train": len(train_y), "val": len(val_y), "test": len(test_y)},
        "options": {k: cfg[k] for k in ("epochs", "lr", "batch_size", "copies", "jitter", "label_smoothing",
                                        "background", "role", "seed")},
        "accuracy_tta": {"classifier": before, "reader": after},
        "history": history,
        "seconds": {"crops": round(cut_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    if background:
        # of the background crops (training ones included in "crops" above), the share the reader calls not an item
        summary["background"] = {
            "crops": {split: len(x) for split, x in background.items()},
            "named_not_item_tta": {split: accuracy(reader, background[split],
                                                   torch.full((len(background[split]),), len(CLASSES)), device)
                                   for split in ("val", "test")}}

    # the new reader replaces an older one only when complete
    tmp = run / f".{out_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "weights").mkdir(parents=True)
    # the architecture, which loading checks: the classifier's, with the reader's classes
    arch = load_yaml(classifier_run / "config.yaml")
    if background:
        arch["model_opts"] = ",".join(filter(None, [str(arch.get("model_opts") or ""),
                                                    f"num_classes={reader.num_classes}"]))
    save_yaml(arch, tmp / "config.yaml")
    write_run_info(tmp, "classify", made_by, classifier_run=str(classifier_run), detect_run=str(run),
                   data=str(data))
    save_checkpoint(tmp / "weights" / "best.pt", reader, epoch=cfg["epochs"], config=classifier_cfg, reader=cfg)
    atomic_write_json(tmp / "summary.json", summary)
    return replace_dir(tmp, run / out_name), summary


def format_summary(reader: Path, s: dict) -> str:
    a = s["accuracy_tta"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    return (f"reader: {reader} ({s['crops']['train']:,} training crops, {s['options']['epochs']} epochs, "
            f"{s['seconds']['total']:.0f}s); crops named right, validation {pct(a['classifier']['val'])} -> "
            f"{pct(a['reader']['val'])}, test {pct(a['classifier']['test'])} -> {pct(a['reader']['test'])}"
            + (f"; background crops named not an item, validation {pct(b['val'])}, test {pct(b['test'])}"
               if (b := (s.get("background") or {}).get("named_not_item_tta")) else ""))


# ---- the detector's boxes read by the classifier: mAP of the two together ----------------------------------------

# a box is scored under each class that has at least this share of its mixed class distribution: a box the reader
# is unsure of counts, at a lower confidence, under its second class too, as ultralytics' multi-label NMS lets a
# detector's box count under several classes
MIN_SHARE = 0.01


def reread(scores: np.ndarray, probs: np.ndarray, vote_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(box index, class, confidence)`` of each scored (box, class) pair: the detector's class scores ``[n, C]`` of
    n boxes mixed with the reader's probabilities ``[n, C]`` (NaN rows: a box too small to read keeps the
    detector's; a one-class detector's scores ``[n, 1]`` name no class, so its unread boxes count under each at an
    even share) as a track's votes and reading are (``tracks.mix``), each pair scored as the box's confidence times
    the class's share. The box's confidence is the sum of its class scores (at most 1), not the best one: a detector
    torn between two classes spreads its certainty that an item is there over both, and once the reader names the
    class the sum is that certainty (validation mAP50 +0.012 to +0.022 on three detectors against the best score;
    BENCHMARKS.md, "The detector's boxes read by the crop reader")."""
    from fashionkit.detect.tracks import mix

    if not len(scores):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    shares = mix(scores, probs, vote_weight)
    box, cls = np.nonzero(shares >= MIN_SHARE)
    return box, cls, np.minimum(scores.sum(1), 1.0)[box] * shares[box, cls]


def reading_validator(reader, vote_weight: float, gate=None):
    """An ultralytics ``DetectionValidator`` that scores the detector's boxes with their classes re-read: one box per
    item (NMS across classes), each cut out of the frame as a track's crops are and read by ``reader`` (a classify
    model), its classes from ``reread`` (a one-class detector's: from the reading alone). With a ``gate`` (a reader
    whose last class is "not an item", `--gate`), each box's scores are multiplied by the share of its crop the gate
    calls an item, so boxes on the background's own things rank below the items. The rest (matching at IoU 0.5-0.95,
    AP, plots) is ultralytics'."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import nms

    from fashionkit.detect.tracks import cut_crops, read_crops

    class ReadingValidator(DetectionValidator):
        def preprocess(self, batch):
            batch = super().preprocess(batch)
            self.frames = batch["img"]  # the boxes are in these (letterboxed) frames' pixels
            return batch

        def postprocess(self, preds):
            boxes, keep = nms.non_max_suppression(preds, self.args.conf, self.args.iou, agnostic=True,
                                                  max_det=self.args.max_det, return_idxs=True)
            raw = preds[0] if isinstance(preds, (list, tuple)) else preds
            scores = [raw[i, 4:4 + self.nc, k].T.float().cpu().numpy() for i, k in enumerate(keep)]
            frames = [(self.frames[i].float().permute(1, 2, 0).cpu().numpy()[:, :, ::-1] * 255).round()
                      .astype(np.uint8) for i in range(len(boxes))]  # RGB 0-1 -> BGR, as a video frame
            # self.nc: the reader's classes; NaN rows for boxes too small to read; the crops cut once for both readers
            xyxy = [b[:, :4].tolist() for b in boxes]
            crops = cut_crops(frames, xyxy)
            probs = read_crops(frames, xyxy, reader.to(self.device), self.device, self.nc, crops)
            if gate is not None:  # read_crops keeps the ten classes' share: their sum is the item share
                item = read_crops(frames, xyxy, gate.to(self.device), self.device, self.nc, crops)
                scores = [s * np.nan_to_num(g.sum(1), nan=1.0)[:, None] for s, g in zip(scores, item)]
            out = []
            for b, s, p in zip(boxes, scores, probs):
                box, cls, conf = reread(s, p, vote_weight)
                box = torch.as_tensor(box, dtype=torch.long)
                out.append({"bboxes": b[box, :4], "conf": torch.as_tensor(conf, dtype=b.dtype),
                            "cls": torch.as_tensor(cls, dtype=b.dtype), "extra": b[box, 6:]})
            return out

    return ReadingValidator


def evaluate_read(weights: str | Path, reader, run: Path, data: str | Path, split: str, imgsz: int, batch: int,
                  device: str, out: Path, vote_weight: float, plots: bool = True, threads: int = 0,
                  gate: tuple[object, Path] | None = None) -> dict:
    """mAP of a detector whose boxes' classes are re-read by ``reader``, the model of the classify run ``run``
    (``tracks.open_classifier``; the validator moves it to its device), with ``reading_validator`` (and ``gate``,
    ``(model, run)`` of ``tracks.open_gate``, weighing the boxes); plots to ``out``."""
    from ultralytics import YOLO

    from fashionkit.detect.tracks import reading_names
    from fashionkit.detect.train import keep_threads, metric_dict

    out = Path(out).resolve()
    model = YOLO(str(weights))
    # a one-class detector's boxes are scored under the reader's classes, the dataset's: its scores [n, 1] then
    # say only that an item is there (tracks.mix)
    model.model.names = reading_names(model.names)
    keep_threads(model, threads)
    # single_cls False: a one-class detector's checkpoint carries its training's True, which would make every label
    # class 0 and so score the reader's classes against T-shirt/top alone
    metrics = model.val(validator=reading_validator(reader, vote_weight, gate[0] if gate else None), data=str(data),
                        split=split, imgsz=imgsz, batch=batch, device=device, plots=plots, project=str(out.parent),
                        name=out.name, exist_ok=True, verbose=False, single_cls=False)
    result = {"classifier": str(run), "vote_weight": vote_weight, "gate": str(gate[1]) if gate else None,
              **metric_dict(metrics, split)}
    weighed = f", weighed by the gate {gate[1]}" if gate else ""
    print(f"{split}, classes read by {run}{weighed}: mAP50 {result['mAP50']:.4f}  mAP50-95 {result['mAP50-95']:.4f}  "
          f"precision {result['precision']:.4f}  recall {result['recall']:.4f}", flush=True)
    return result
