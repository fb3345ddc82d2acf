"""Realistic scenes: photographs split like the items, distractors, occlusion, truncation, rotation and camera
effects, with boxes that stay tight on what is visible."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fashionkit.config import resolve
from fashionkit.detect.cli import MAKE_DATA_OPTIONS, MAKE_VIDEO_OPTIONS
from fashionkit.detect.defaults import VIDEO_OPTIONS
from fashionkit.detect.realism import photo_files, split_photos
from fashionkit.detect.scenes import PRESETS, apply_preset, compose_realistic_scene, make_dataset
from fashionkit.errors import UserError

REALISTIC = PRESETS["realistic"]


@pytest.fixture(scope="module")
def photos():
    return split_photos(photo_files())


def test_photographs_are_split_like_the_items(photos):
    files = photo_files()
    assert len(files) >= 35, "the Debian wallpaper packages give about 40 photographs"
    parts = [set(photos[s]) for s in ("train", "val", "test")]
    assert all(parts) and sum(map(len, parts)) == len(files)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # the split is a property of each file, not of the list: adding a photograph moves no other one
    fewer = split_photos(files[1:])
    for split in ("train", "val", "test"):
        assert set(fewer[split]) <= set(photos[split]), split


def test_missing_photographs_name_the_packages(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(UserError, match="apt-get install plasma-workspace-wallpapers mate-backgrounds "
                                            "lomiri-wallpapers-16.04"):
            photo_files(folder)


def scenes(train_set, photos, style, seeds=range(10), imgsz=160):
    images, labels = train_set[0].numpy(), train_set[1].numpy()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(labels), 5, replace=False)
        yield labels[pick], compose_realistic_scene(rng, images[pick], labels[pick], imgsz, 1.0, 4.0, 0.3,
                                                    ("flat",), style, [str(p) for p in photos["train"]])


def check_tight(scene, labels, imgsz=160):
    for (cls, x1, y1, x2, y2), visible, k in zip(scene.boxes, scene.masks, scene.used):
        assert cls == labels[k] and 0 <= x1 < x2 <= imgsz and 0 <= y1 < y2 <= imgsz
        inside = visible[y1:y2, x1:x2]
        assert visible.sum() == inside.sum(), "visible item pixels outside the box"
        for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
            assert edge.any(), "a box edge without visible item pixels: the box is not tight"


def test_boxes_stay_tight_under_occlusion_truncation_and_blur(train_set, photos):
    style = dataclasses.replace(REALISTIC, truncate=1.0, occluders=4, blur_p=1.0, photo_share=1.0)
    touching = dropped = 0
    for labels, scene in scenes(train_set, photos, style, range(16)):
        assert scene.image.shape == (160, 160, 3) and scene.image.dtype == np.uint8
        check_tight(scene, labels)
        touching += sum(x1 == 0 or y1 == 0 or x2 == 160 or y2 == 160 for _, x1, y1, x2, y2 in scene.boxes)
        dropped += 5 - len(scene.used)
    assert touching >= 5, "truncated items should reach the frame's edge"
    assert dropped >= 1, "some items end up hidden or placeless, and get no label"


def test_camera_effects_move_no_box(train_set, photos):
    sharp = dataclasses.replace(REALISTIC, blur_p=0.0)
    blurred = dataclasses.replace(REALISTIC, blur_p=1.0)
    for (_, a), (_, b) in zip(scenes(train_set, photos, sharp, range(6)), scenes(train_set, photos, blurred, range(6))):
        assert a.boxes == b.boxes  # the camera comes after the boxes
        assert not np.array_equal(a.image, b.image)


def test_occluded_items_are_labelled_by_their_visible_part(train_set, photos):
    style = dataclasses.replace(REALISTIC, occluders=6, truncate=0.0)
    shrunk = 0
    for labels, scene in scenes(train_set, photos, style, range(12)):
        check_tight(scene, labels)
        for (_, x1, y1, x2, y2), visible in zip(scene.boxes, scene.masks):
            assert visible.sum() > 0
            shrunk += visible[y1:y2, x1:x2].mean() < 0.35
    assert shrunk >= 1


def test_make_data_realistic_keeps_photographs_apart(tmp_path):
    out = tmp_path / "data"
    make_dataset(resolve(MAKE_DATA_OPTIONS, {"out": str(out), "imgsz": 160, "max_scale": 4.0, "workers": 1,
                                             "train": 6, "val": 3, "test": 3}), progress=False)
    used = json.loads((out / "photos.json").read_text())
    assert set(used) == {"train", "val", "test"}
    assert not set(used["train"]) & (set(used["val"]) | set(used["test"]))
    assert "preset: realistic" in (out / "config.yaml").read_text()
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        assert len(list((out / "images" / split).iterdir())) == n


def test_make_data_with_an_empty_photo_folder_is_an_error(tmp_path, cli, capsys):
    (tmp_path / "none").mkdir()
    assert cli("detect", "make-data", "--out", tmp_path / "data", "--photos", tmp_path / "none") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "apt-get install" in err and "--preset procedural" in err
    assert not (tmp_path / "data").exists()


def test_realistic_video_stays_inside_the_frame(tmp_path, cli):
    out = tmp_path / "clip.mp4"
    assert cli("detect", "make-video", out, "--seconds", 1, "--fps", 10, "--width", 160, "--height", 120,
               "--items", 3, "--max-scale", 3, "--seed", 2) == 0
    frames = json.loads(out.with_suffix(".json").read_text())
    assert len(frames) == 10 and sum(map(len, frames)) >= 10
    for boxes in frames:
        for b in boxes:
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120 and 0 < b["visible"] <= 1
    # visible: the share of the whole item showing. An item away from the edge that no other item's box touches
    # shows whole; one cut by the frame's edge does not, though nothing covers it (here item 1, entering at the left)
    def alone(b, boxes):
        return not any(o is not b and o["box"][0] < b["box"][2] and b["box"][0] < o["box"][2]
                       and o["box"][1] < b["box"][3] and b["box"][1] < o["box"][3] for o in boxes)

    def at_edge(b):
        x1, y1, x2, y2 = b["box"]
        return x1 == 0 or y1 == 0 or x2 == 160 or y2 == 120

    assert all(b["visible"] == 1.0 for boxes in frames for b in boxes if alone(b, boxes) and not at_edge(b))
    cut = [b["visible"] for boxes in frames for b in boxes if alone(b, boxes) and at_edge(b) and b["box"][0] == 0]
    assert cut and max(cut) < 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_video_items_reach_the_detector_at_the_sizes_it_trained_on(preset):
    # detect video letterboxes the frame's longer side to --imgsz: the default clip's items, so shrunk, must fall
    # inside the item sizes of the same preset's training scenes, or the evaluation measures a scale never trained
    video = apply_preset(resolve(MAKE_VIDEO_OPTIONS, {"preset": preset}), video=True)
    scenes_cfg = apply_preset(resolve(MAKE_DATA_OPTIONS, {"preset": preset}))
    shrink = VIDEO_OPTIONS["imgsz"].default / max(video["width"], video["height"])
    assert scenes_cfg["min_scale"] <= video["min_scale"] * shrink
    assert video["max_scale"] * shrink <= scenes_cfg["max_scale"]
