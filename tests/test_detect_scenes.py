"""Synthetic detection data: `detect make-data` and `detect make-video` on the real Fashion-MNIST items."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fashionkit.config import resolve
from fashionkit.data.fashion_mnist import CLASSES
from fashionkit.detect.cli import MAKE_DATA_OPTIONS
from fashionkit.detect.scenes import (
    Look,
    compose_scene,
    item_sprite,
    make_dataset,
    paste,
)

COUNTS = {"train": 10, "val": 5, "test": 5}
SMALL = ["--train", 10, "--val", 5, "--test", 5, "--imgsz", 160, "--max-scale", 4, "--workers", 1]


def data_cfg(out, **overrides):
    return resolve(MAKE_DATA_OPTIONS, {"out": str(out), "imgsz": 160, "max_scale": 4.0, "workers": 1,
                                       **COUNTS, **overrides})


def read_labels(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "data"
    make_dataset(data_cfg(out), progress=False)
    return out


def test_make_data_is_an_ultralytics_dataset(dataset):
    from fashionkit.detect.model import use_ultralytics

    use_ultralytics()  # offline, settings and font in our temp dir: never the user's ~/.config/Ultralytics
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    info = check_det_dataset(str(dataset / "data.yaml"))
    assert info["nc"] == 10 and [info["names"][i] for i in range(10)] == list(CLASSES)
    for split, n in COUNTS.items():
        images = sorted((dataset / "images" / split).iterdir())
        assert len(images) == n and Path(info[split]) == (dataset / "images" / split).resolve()
        for image in images:
            label = dataset / "labels" / split / f"{image.stem}.txt"
            result = verify_image_label((str(image), str(label), "", False, 10, 0, 0, False))
            lb, shape, n_corrupt, msg = result[1], result[2], result[8], result[9]
            assert n_corrupt == 0, msg
            assert shape == (160, 160)
            assert len(lb) >= 1 and set(lb[:, 0].astype(int)) <= set(range(10))
            assert (lb[:, 1:] > 0).all() and (lb[:, 1:] <= 1).all()
            # the box lies inside the image
            assert (lb[:, 1:3] - lb[:, 3:5] / 2 >= -1e-6).all() and (lb[:, 1:3] + lb[:, 3:5] / 2 <= 1 + 1e-6).all()


def test_scene_sources_respect_the_splits(dataset, train_set, test_set):
    from fashionkit.data.splits import make_splits

    sources = json.loads((dataset / "sources.json").read_text())["splits"]
    train_idx, val_idx = make_splits(train_set[1].numpy())
    allowed = {"train": set(train_idx), "val": set(val_idx), "test": set(range(len(test_set[1])))}
    official = {"train": train_set[1].numpy(), "val": train_set[1].numpy(), "test": test_set[1].numpy()}
    for split, n in COUNTS.items():
        scenes = sources[split]["scenes"]
        assert sources[split]["source_split"] == ("test" if split == "test" else "train")
        assert sorted(scenes) == [f"{i:06d}" for i in range(n)]
        for name, indices in scenes.items():
            assert set(indices) <= allowed[split], f"{split}/{name} uses items from another split"
            # the recorded sources are the items drawn: their classes are the label file's, in order
            classes = read_labels(dataset / "labels" / split / f"{name}.txt")[:, 0].astype(int)
            assert list(classes) == [int(official[split][i]) for i in indices]


def test_same_seed_same_files_whatever_the_workers(dataset, tmp_path):
    again = tmp_path / "again"
    make_dataset(data_cfg(again, workers=2, train=16), progress=False)  # 2 processes, and more train scenes
    for split, n in COUNTS.items():
        for i in range(n):
            for sub, ext in (("labels", "txt"), ("images", "jpg")):
                a = (dataset / sub / split / f"{i:06d}.{ext}").read_bytes()
                assert a == (again / sub / split / f"{i:06d}.{ext}").read_bytes(), f"{sub}/{split}/{i}"
    other = tmp_path / "other"
    make_dataset(data_cfg(other, seed=1), progress=False)
    differ = [(dataset / "labels/train" / f"{i:06d}.txt").read_text() != (other / "labels/train" / f"{i:06d}.txt")
              .read_text() for i in range(COUNTS["train"])]
    assert sum(differ) >= COUNTS["train"] - 1


def test_boxes_are_tight_and_items_drawn(train_set):
    images, labels = train_set[0].numpy(), train_set[1].numpy()
    fills = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(labels), 5, replace=False)
        scene = compose_scene(rng, images[pick], labels[pick], 160, 1.5, 4.0, 0.1, backgrounds=("flat",))
        assert scene.used and len(scene.boxes) == len(scene.masks) == len(scene.used)
        image = scene.image.astype(int)
        outside = np.ones((160, 160), bool)
        for (cls, x1, y1, x2, y2), mask, k in zip(scene.boxes, scene.masks, scene.used):
            assert cls == labels[pick[k]] and 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
            inside = mask[y1:y2, x1:x2]
            assert mask.sum() == inside.sum(), "item pixels outside its box"
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.any(), "a box edge without item pixels: the box is not tight"
            outside[y1:y2, x1:x2] = False
        # flat background: nothing was drawn outside the boxes, and each box edge shows drawn pixels
        ground = np.median(image[outside], axis=0)
        assert (image[outside] == ground).all()
        changed = np.abs(image - ground).max(-1) >= 8
        for _, x1, y1, x2, y2 in scene.boxes:
            box = changed[y1:y2, x1:x2]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            fills.append(box.mean())
    # the garment is pasted, not its black square: the ground shows through around it
    assert np.median(fills) < 0.9


def test_paste_clips_to_the_canvas(train_set):
    sprite = item_sprite(train_set[0][0].numpy(), 56, 56)
    look = Look(offset=200.0, gain=55.0, tint=np.ones(3, np.float32))
    for x, y in ((-20, -10), (40, 30), (-100, 0)):
        canvas = np.zeros((48, 64, 3), np.float32)
        shown = paste(canvas, sprite, look, x, y)
        drawn = canvas.max(-1) > 0
        if not drawn.any():
            assert shown is None
            continue
        (x1, y1, x2, y2), mask = shown
        rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        assert (x1, y1, x2, y2) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        assert (mask == drawn[y1:y2, x1:x2]).all()


def test_make_video_reads_back_with_its_ground_truth(tmp_path, cli):
    out = tmp_path / "clip.mp4"
    args = ["detect", "make-video", out, "--seconds", 2, "--fps", 10, "--width", 160, "--height", 120,
            "--items", 3, "--min-scale", 1, "--max-scale", 2.5, "--seed", 3]
    assert cli(*args) == 0
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (120, 160, 3)
        n += 1
    assert n == 20
    frames = json.loads(out.with_suffix(".json").read_text())
    assert len(frames) == 20 and any(frames)
    for boxes in frames:
        assert len({b["track_id"] for b in boxes}) == len(boxes)
        for b in boxes:
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
            assert CLASSES[b["class_id"]] == b["class_name"] and 0 < b["visible"] <= 1
    with out.with_suffix(".csv").open() as f:
        assert len(list(csv.DictReader(f))) == sum(map(len, frames))
    # items move: some track's box changes between frames
    first = {b["track_id"]: b["box"] for b in frames[0]}
    assert any(b["box"] != first.get(b["track_id"], b["box"]) for b in frames[5])
    # seeded: the same command gives the same ground truth
    again = tmp_path / "again.mp4"
    assert cli(*[again if a == out else a for a in args]) == 0
    assert again.with_suffix(".json").read_text() == out.with_suffix(".json").read_text()


@pytest.mark.parametrize("argv, message", [
    (["make-data", "--max-items", 0], "--max-items"),
    (["make-data", "--min-items", 3, "--max-items", 2], "--min-items"),
    (["make-data", "--max-scale", 9, "--imgsz", 160], "--max-scale"),
    (["make-data", "--min-scale", 0], "--min-scale"),
    (["make-data", "--max-overlap", 1.5], "--max-overlap"),
    (["make-data", "--backgrounds", "flat,plaid"], "--backgrounds"),
    (["make-data", "--workers", 0], "--workers must be at least 1, got 0"),
    (["make-video", "{tmp}/v.mp4", "--seconds", 0], "--seconds"),
    (["make-video", "{tmp}/v.mp4", "--fps", 0], "--fps"),
    (["make-video", "{tmp}/v.avi"], ".mp4"),
    (["make-video", "{tmp}/v.mp4", "--width", 333], "even"),
    (["make-data", "--val-size", -1], "--val-size must be between 10 and 59999"),
    (["make-video", "{tmp}/v.mp4", "--split", "test", "--val-size", -1], "--val-size"),  # unused there, still said
    (["make-data", "--out", "{tmp}/blocker/data"], "cannot write"),
    (["make-video", "{tmp}/blocker/v.mp4"], "cannot write"),
    (["make-data", "--out", "{tmp}/foreign"], "not empty"),
])
def test_user_errors(argv, message, tmp_path, cli, capsys):
    (tmp_path / "blocker").write_text("a regular file, so nothing can be made below it")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone else's")
    argv = [str(a).format(tmp=tmp_path) for a in argv]
    if argv[0] == "make-data" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "data")]
    assert cli("detect", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert (tmp_path / "foreign" / "notes.txt").exists()


def test_rerun_replaces_its_own_dataset(tmp_path, cli):
    out = tmp_path / "data"
    assert cli("detect", "make-data", "--out", out, *SMALL, "--min-items", 0, "--max-items", 1) == 0
    assert cli("detect", "make-data", "--out", out, *SMALL, "--train", 4, "--test", 0) == 0  # last flag wins
    assert len(list((out / "images/train").iterdir())) == 4 and not any((out / "images/test").iterdir())
    assert "test:" not in (out / "data.yaml").read_text()
