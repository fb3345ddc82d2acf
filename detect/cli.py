"""``detect ...`` (= ``fashionkit detect ...``): synthetic scenes and videos, YOLO training and inference."""

from __future__ import annotations

from fashionkit.config import DATA_DIR_HELP, Opt, add_options, resolve

BACKGROUND_KINDS = "flat,gradient,noise,texture"
SCENE_PRESETS = ("realistic", "procedural")  # their settings: detect/scenes.py PRESETS

# Options both data makers share: where the items come from, what they are drawn on.
SOURCE_OPTIONS = {
    "preset": Opt("realistic", "scene mix: realistic (photographs from Debian wallpaper packages, everyday-object "
                  "distractors, occlusion, truncation at the edges, rotation, blur, noise, lighting, JPEG) or "
                  "procedural (flat/gradient/noise/texture backgrounds, clean items); recorded in config.yaml",
                  choices=SCENE_PRESETS),
    "photos": Opt(None, "folder of background photographs for the realistic preset (none: those of the Debian "
                  "packages plasma-workspace-wallpapers, mate-backgrounds and lomiri-wallpapers-16.04); split "
                  "train/val/test by file",
                  type=str),
    "seed": Opt(0, "random seed; the same seed gives identical files"),
    "backgrounds": Opt(None, "comma-separated procedural background kinds (none: the preset's: "
                       f"{BACKGROUND_KINDS}; the realistic preset draws 15%% of its scenes on them)", type=str),
    "val_size": Opt(5000, "validation part of the 60k training set (as in `make_splits`)"),
    "split_seed": Opt(0, "seed of the train/val split of the 60k training set (as in `make_splits`)"),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}

MAKE_DATA_OPTIONS = {
    "out": Opt(None, "dataset directory to write (none: <runs>/detect/data)", type=str),
    "imgsz": Opt(320, "side of the square scenes in pixels"),
    "train": Opt(3000, "training scenes (items from the train part of the split)"),
    "val": Opt(300, "validation scenes (items from the validation part of the split)"),
    "test": Opt(300, "test scenes (items from the official test set)"),
    "min_items": Opt(1, "fewest items a scene tries to place (0 allows empty scenes)"),
    "max_items": Opt(5, "most items per scene"),
    "min_scale": Opt(None, "smallest item size as a multiple of the 28-px original (none: the preset's, "
                     "realistic 0.75 = 21 px, procedural 1.5)", type=float),
    "max_scale": Opt(None, "largest item size as a multiple of the 28-px original (none: the preset's, "
                     "realistic 9 = 252 px, procedural 6)", type=float),
    "max_overlap": Opt(None, "largest IoU between two items' boxes (placements are redrawn until it holds; "
                       "none: the preset's, realistic 0.3, procedural 0.1)", type=float),
    "format": Opt("jpg", "image file format", choices=("jpg", "png")),
    "workers": Opt(2, "processes composing scenes (1: this process only)", least=1),
    **SOURCE_OPTIONS,
}

MAKE_VIDEO_OPTIONS = {
    "seconds": Opt(10.0, "length of the video in seconds"),
    "fps": Opt(25.0, "frames per second"),
    "width": Opt(640, "frame width in pixels"),
    "height": Opt(480, "frame height in pixels"),
    "items": Opt(4, "items in view at once (new ones enter as others leave)"),
    # `detect video` at its default imgsz 320 halves a 640-px frame: realistic 1.5-12x reaches the detector at
    # 21-168 px, inside make-data's realistic 21-252 px; procedural 3-7x at 42-98 px, inside its 42-168 px
    "min_scale": Opt(None, "smallest item size as a multiple of the 28-px original (none: the preset's, "
                     "realistic 1.5, procedural 3)", type=float),
    "max_scale": Opt(None, "largest item size as a multiple of the 28-px original (none: the preset's, "
                     "realistic 12, procedural 7)", type=float),
    "split": Opt("test", "where the items come from", choices=("train", "val", "test")),
    **SOURCE_OPTIONS,
}


def cmd_make_data(args) -> int:
    from fashionkit.detect.scenes import make_dataset

    data_yaml = make_dataset(resolve(MAKE_DATA_OPTIONS, args))
    print(f"wrote {data_yaml}")
    return 0


def cmd_make_video(args) -> int:
    from fashionkit.detect.scenes import make_video

    frames = make_video(args.out, resolve(MAKE_VIDEO_OPTIONS, args))
    boxes = sum(map(len, frames))
    print(f"wrote {args.out} ({len(frames)} frames, {boxes} boxes) and its ground truth "
          f"{args.out.rsplit('.', 1)[0]}.json/.csv")
    return 0


def cmd_train(args) -> int:
    from fashionkit.detect.train import train

    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "stage", "config")}
    run, summary = train(opts, args.config)
    val, test = summary.get("val") or {}, summary.get("test") or {}
    scores = "".join(f", {split} mAP50 {m['mAP50']:.3f} mAP50-95 {m['mAP50-95']:.3f}"
                     for split, m in (("val", val), ("test", test)) if "mAP50" in m)
    if "boxes" in test:
        scores += f" ({test['boxes']['mAP50']:.3f} with classes ignored)"
    if "read" in test:
        scores += f", test mAP50 {test['read']['mAP50']:.3f} with the crop reader"
    print(f"done: {run} ({summary['status']}, {summary['epochs_done']} epochs, "
          f"{summary['train_images_per_s']} train images/s{scores}); weights {run / (summary['best'] or '?')}")
    return 0


def cmd_reader(args) -> int:
    from fashionkit.detect.defaults import READER_OPTIONS
    from fashionkit.detect.reader import format_summary, train_reader

    reader, summary = train_reader(args.run, resolve(READER_OPTIONS, args))
    print(format_summary(reader, summary))
    return 0


def cmd_video(args) -> int:
    from fashionkit.detect.defaults import VIDEO_OPTIONS
    from fashionkit.detect.video import format_summary, run_video

    summary = run_video(args.input, resolve(VIDEO_OPTIONS, args))
    print(format_summary(summary))
    return 0


def cmd_eval(args) -> int:
    from fashionkit.detect.defaults import EVAL_OPTIONS
    from fashionkit.detect.evaluate import evaluate_run

    evaluate_run(args.run, resolve(EVAL_OPTIONS, args))
    return 0


def register(sub, formatter) -> None:
    from fashionkit.detect.defaults import EVAL_OPTIONS, READER_OPTIONS, TRAIN_OPTIONS, VIDEO_OPTIONS

    p = sub.add_parser("make-data", help="write a synthetic YOLO dataset of items on random backgrounds",
                       formatter_class=formatter,
                       description="Compose scenes of Fashion-MNIST items on random backgrounds into an "
                       "ultralytics dataset: images/{train,val,test}, labels/{train,val,test}, data.yaml, and "
                       "sources.json (the source images of each scene). Train/val scenes use the train/val "
                       "parts of the training set, test scenes the official test set.")
    add_options(p, MAKE_DATA_OPTIONS)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("make-video", help="write a synthetic video of moving items with per-frame boxes",
                       formatter_class=formatter,
                       description="Items enter through the edges, cross the frame and each other, and leave. "
                       "Writes OUT.mp4 (mp4v) and its ground truth OUT.json (per frame: track_id, class_id, "
                       "class_name, box [x1, y1, x2, y2] in pixels clipped to the frame, visible: the share of the "
                       "whole item in the frame and not covered) and OUT.csv.")
    p.add_argument("out", metavar="OUT.mp4", help="video file to write")
    add_options(p, MAKE_VIDEO_OPTIONS)
    p.set_defaults(func=cmd_make_video)

    p = sub.add_parser("train", help="fine-tune a YOLO detector whose backbone starts from a classify run",
                       formatter_class=formatter,
                       description="Build an ultralytics YOLO detector whose backbone is the classifier's trunk "
                       "(first conv adapted to RGB frames, input normalisation folded in), with new stride-16/32 "
                       "stages, a YOLOv8 neck and Detect head, and fine-tune it with the ultralytics trainer. "
                       "--from none gives the same shape at random init, --from yolov8n.yaml a stock model. Writes "
                       "<runs>/detect/<name>/: config.yaml, model.yaml, summary.json, ultralytics/ (weights/best.pt, "
                       "results.csv, plots), test/ (test-split mAP; test/boxes/: with classes ignored), reader/ (the "
                       "crop reader, for --track) and test/read/ (the test mAP with the reader naming the boxes).")
    add_options(p, TRAIN_OPTIONS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reader", help="fine-tune the classifier on a detect run's scene crops, for --track",
                       formatter_class=formatter,
                       description="Cut the items out of the training scenes of RUN's dataset the way `detect video "
                       "--track` cuts a track's crops (ground-truth boxes, jittered), fine-tune the classify run RUN "
                       "was trained from on them, and write RUN/reader/: a classify run directory (config.yaml, "
                       "weights/best.pt, run.json, summary.json with the share of validation and test crops named "
                       "right before and after). `detect video --classifier auto` then reads tracks with it. "
                       "`detect train` does this itself after training from a classify run (--reader-epochs). "
                       "With --background N --role gate it writes RUN/gate/ instead: a reader that also knows what "
                       "is not an item, which `detect video --gate auto` asks which tracks to leave out.")
    p.add_argument("run", metavar="RUN", help="detect run directory (runs/detect/<run>)")
    add_options(p, READER_OPTIONS)
    p.set_defaults(func=cmd_reader)

    p = sub.add_parser("video", help="detect items in a video, a folder of images or an image",
                       formatter_class=formatter,
                       description="Run a detector over INPUT (any video OpenCV reads, a folder of images, or one "
                       "image) in batches; without --weights, the detector bundled with fashionkit (a line on stderr "
                       "says so). Writes to --out: annotated.mp4 (or annotated/ images), detections.jsonl "
                       "(one line per processed frame), detections.csv and summary.json (items per class, frames/s). "
                       "Items are tracked (--track, the default) and every tracked item gets one class, from its "
                       "frames' votes, its crops read by a classifier (--classifier) and, for unsure items of the hard "
                       "classes, the kNN resolver of a metric run (--metric); tracks the classifier cannot name, or "
                       "the detector's gate (--gate) calls not an item, are left out, as are short tracks "
                       "(--min-track-frames) and boxes no track follows, and each track gets back the box that "
                       "started it (the tracker confirms a track on its second frame); the outputs carry both the "
                       "per-frame and the track's class, the annotated video and the counts per class the track's. "
                       "--no-track names "
                       "every frame on its own with the detector's classes (faster; the classes flicker). --gt scores "
                       "against a `detect make-video` ground truth (with tracking also class flicker and per-track "
                       "class accuracy). "
                       "A video that ends before its header's frame count (truncated) is processed as far as it "
                       "can be read: the outputs are kept, a warning says where it stopped, summary.json records "
                       "complete=false, and the exit status is still 0.")
    p.add_argument("input", metavar="INPUT", help="video file, image folder or image file")
    add_options(p, VIDEO_OPTIONS)
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("eval", help="mAP of a detect run on a dataset split; precision/recall on a make-video clip",
                       formatter_class=formatter,
                       description="Evaluate a detect run's best.pt: mAP50 and mAP50-95 on the test (or val) split "
                       "with ultralytics' validator, again with classes ignored (the boxes alone: is it finding the "
                       "items or naming them that holds the detector back?), then with each box's class re-read by the "
                       "crop reader (--classifier), each box weighed by how surely the detector's gate (--gate) "
                       "calls it an item, and with --video X.mp4 precision and recall at IoU 0.5 against "
                       "the clip's X.json ground truth plus end-to-end frames/s. Writes RUN/eval/<split>/eval.json.")
    p.add_argument("run", metavar="RUN", help="detect run directory (or a detection .pt)")
    add_options(p, EVAL_OPTIONS)
    p.set_defaults(func=cmd_eval)
