"""``detect ...`` (= ``fashionkit detect ...``): synthetic scenes and videos, YOLO training and inference."""

from __future__ import annotations

from fashionkit.config import Opt, add_options, resolve

BACKGROUND_KINDS = "flat,gradient,noise,texture"

# Options both data makers share: where the items come from.
SOURCE_OPTIONS = {
    "seed": Opt(0, "random seed; the same seed gives identical files"),
    "backgrounds": Opt(BACKGROUND_KINDS, "comma-separated background kinds to draw from"),
    "val_size": Opt(5000, "validation part of the 60k training set (as in `make_splits`)"),
    "split_seed": Opt(0, "seed of the train/val split of the 60k training set (as in `make_splits`)"),
    "data_dir": Opt(None, "directory holding the Fashion-MNIST idx files", type=str),
}

MAKE_DATA_OPTIONS = {
    "out": Opt(None, "dataset directory to write (none: <runs>/detect/data)", type=str),
    "imgsz": Opt(320, "side of the square scenes in pixels"),
    "train": Opt(3000, "training scenes (items from the train part of the split)"),
    "val": Opt(300, "validation scenes (items from the validation part of the split)"),
    "test": Opt(300, "test scenes (items from the official test set)"),
    "min_items": Opt(1, "fewest items a scene tries to place (0 allows empty scenes)"),
    "max_items": Opt(5, "most items per scene"),
    "min_scale": Opt(1.5, "smallest item size as a multiple of the 28-px original"),
    "max_scale": Opt(6.0, "largest item size as a multiple of the 28-px original"),
    "max_overlap": Opt(0.1, "largest IoU between two items' boxes (placements are redrawn until it holds)"),
    "format": Opt("jpg", "image file format", choices=("jpg", "png")),
    "workers": Opt(2, "processes composing scenes (1: this process only)"),
    **SOURCE_OPTIONS,
}

MAKE_VIDEO_OPTIONS = {
    "seconds": Opt(10.0, "length of the video in seconds"),
    "fps": Opt(25.0, "frames per second"),
    "width": Opt(640, "frame width in pixels"),
    "height": Opt(480, "frame height in pixels"),
    "items": Opt(4, "items in view at once (new ones enter as others leave)"),
    "min_scale": Opt(2.0, "smallest item size as a multiple of the 28-px original"),
    "max_scale": Opt(5.0, "largest item size as a multiple of the 28-px original"),
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


def register(sub, formatter) -> None:
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
                       "class_name, box [x1, y1, x2, y2] in pixels clipped to the frame, visible fraction) "
                       "and OUT.csv.")
    p.add_argument("out", metavar="OUT.mp4", help="video file to write")
    add_options(p, MAKE_VIDEO_OPTIONS)
    p.set_defaults(func=cmd_make_video)
