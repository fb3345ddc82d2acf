"""The detector: backbone transfer from a classify run, `detect train`, `detect video` and `detect eval`, on real
Fashion-MNIST items (tiny classify run, 16 scenes at 160 px, 1-2 epochs: seconds on a 2-core CPU)."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import snapshot

from fashionkit.config import resolve
from fashionkit.data.loader import MEAN, STD
from fashionkit.detect.cli import MAKE_DATA_OPTIONS, MAKE_VIDEO_OPTIONS
from fashionkit.detect.defaults import VIDEO_OPTIONS
from fashionkit.detect.model import (
    YAML_KEY,
    backbone_features,
    build_model,
    conv_bn,
    detector_yaml,
    model_source,
    transfer_weights,
    trunk_layers,
)
from fashionkit.errors import UserError

CLIP = {"seconds": 1.2, "fps": 10.0, "width": 320, "height": 240, "items": 3, "min_scale": 1.5, "max_scale": 3.0}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("detect")


@pytest.fixture(scope="module")
def classify_run(work):
    from fashionkit.classify.train import train

    run, _ = train({"model": "vgg-small", "subset": 500, "epochs": 1, "lr": 0.02, "test": False,
                    "runs_dir": str(work / "runs"), "name": "cls"})
    return run


@pytest.fixture(scope="module")
def classifier(classify_run):
    from fashionkit.classify.checkpoint import load_classifier

    return load_classifier(classify_run)[0]


@pytest.fixture(scope="module")
def dataset(work):
    from fashionkit.detect.scenes import make_dataset

    out = work / "scenes"
    make_dataset(resolve(MAKE_DATA_OPTIONS, {"out": str(out), "imgsz": 160, "max_scale": 4.0, "workers": 1,
                                             "train": 16, "val": 8, "test": 4}), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(work, classify_run, dataset):
    """2 epochs, the copied backbone frozen in the first; every epoch's checkpoint kept; nbs=8: an optimizer
    step per batch (ultralytics accumulates gradients up to 64 images by default)."""
    from fashionkit.detect.train import train

    return train({"from": str(classify_run), "data": str(dataset), "imgsz": 160, "epochs": 2, "batch": 8,
                  "freeze_epochs": 1, "extra": "save_period=1,nbs=8", "runs_dir": str(work / "runs"), "name": "det",
                  "reader_epochs": 1})


@pytest.fixture(scope="module")
def clip(work):
    from fashionkit.detect.scenes import make_video

    path = work / "clip.mp4"
    frames = make_video(path, resolve(MAKE_VIDEO_OPTIONS, CLIP), progress=False)
    return path, frames


# ByteTrack's own thresholds start tracks at confidence 0.25, which a 2-epoch detector never reaches
LOW_TRACKER = {"tracker_type": "bytetrack", "track_high_thresh": 0.001, "track_low_thresh": 0.0005,
               "new_track_thresh": 0.001, "track_buffer": 30, "match_thresh": 0.8, "fuse_score": True}


@pytest.fixture(scope="module")
def low_tracker(work):
    path = work / "low-tracker.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in LOW_TRACKER.items()))
    return str(path)


def video_cfg(**overrides):
    # a 2-epoch detector's tracks are short and its reader unsure: keep every track unless a test asks otherwise
    return resolve(VIDEO_OPTIONS, {"conf": 0.001, "min_track_frames": 1, "min_read_conf": 0.0, **overrides})


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames, cap.get(cv2.CAP_PROP_FPS)


# ---- backbone transfer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", [1, 2, 4])
def test_backbone_is_the_classifier_trunk(classifier, stem):
    cfg = detector_yaml(classifier, nc=10, stem=stem)
    model = build_model(cfg, nc=10).eval()
    assert transfer_weights(model, classifier) == 6 * len(cfg[YAML_KEY]["transfer"])
    convs = [layer for layer in trunk_layers(classifier) if hasattr(layer, "conv")]
    assert len(convs) == 6  # vgg-small: 3 stages of 2 convs
    for i, (index, src) in enumerate(zip(cfg[YAML_KEY]["transfer"], convs)):
        conv, bn = conv_bn(model, index)
        w = src.conv.weight
        if i == 0:  # spread over colours (x Focus phases), normalisation folded in
            c_in = conv.weight.shape[1]
            assert c_in == {1: 3, 2: 12, 4: 12}[stem]
            torch.testing.assert_close(conv.weight * (c_in * STD), w.expand(-1, c_in, -1, -1))
            torch.testing.assert_close(bn.running_mean - MEAN / STD * w.sum(dim=(1, 2, 3)), src.bn.running_mean)
        else:
            assert torch.equal(conv.weight, w)
            assert torch.equal(bn.running_mean, src.bn.running_mean)
        for name in ("weight", "bias", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(bn, name), getattr(src.bn, name)), name
        assert bn.eps == src.bn.eps

    # On a grey frame the backbone computes the classifier's trunk on the normalised, stem-downscaled image
    # (exactly, away from the borders, where zero padding differs: 0 in normalised units there, -MEAN/STD here).
    grey = F.interpolate(torch.rand(1, 1, 40, 40), size=(160, 160), mode="bilinear")
    with torch.no_grad():
        ours = backbone_features(model, grey.expand(-1, 3, -1, -1))
        small = F.avg_pool2d(grey, stem) if stem > 1 else grey
        theirs = classifier.trunk((small - MEAN) / STD)
    assert ours.shape == theirs.shape
    m = 4  # the border that padding reaches through 6 convs and 2 pools
    torch.testing.assert_close(ours[..., m:-m, m:-m], theirs[..., m:-m, m:-m], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, torch.zeros_like(ours))

    # the whole detector runs, with P3/P4/P5 at strides 8/16/32
    assert model.stride.tolist() == [8, 16, 32]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 160, 128))
    assert out[0].shape[:2] == (2, 4 + 10)


def test_backbone_of_a_pool_early_trunk_is_the_same_function():
    """A vgg trunk built with pool_early pools before the BN and activation of each stage's last conv; the YOLO
    copy (conv, BN, act, pool) computes the same function in eval mode as long as every BN scale is positive."""
    from conftest import trained_looking_bn

    from fashionkit.classify.models import create_model

    torch.manual_seed(0)
    classifier = create_model("vgg-fast", pool_early=True).eval()
    for m in classifier.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            trained_looking_bn(m)
    kinds = [type(layer).__name__ for layer in trunk_layers(classifier)]
    assert kinds == ["TrunkConv", "TrunkPool", "TrunkConv", "TrunkConv", "TrunkPool", "TrunkConv", "TrunkConv"]
    cfg = detector_yaml(classifier, nc=10, stem=1)
    model = build_model(cfg, nc=10).eval()
    assert transfer_weights(model, classifier) == 6 * 5
    grey = F.interpolate(torch.rand(1, 1, 40, 40), size=(160, 160), mode="bilinear")
    with torch.no_grad():
        ours = backbone_features(model, grey.expand(-1, 3, -1, -1))
        theirs = classifier.trunk((grey - MEAN) / STD)
    assert ours.shape == theirs.shape
    m = 4
    torch.testing.assert_close(ours[..., m:-m, m:-m], theirs[..., m:-m, m:-m], rtol=1e-4, atol=1e-4)


def test_from_none_same_shapes_other_values(classify_run):
    ours = model_source(str(classify_run), nc=10)
    none = model_source("none", nc=10)
    a, b = ours.model.state_dict(), none.model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    index = ours.yaml[YAML_KEY]["transfer"][1]
    assert not torch.equal(conv_bn(ours.model, index)[0].weight, conv_bn(none.model, index)[0].weight)
    assert none.yaml["backbone"] == ours.yaml["backbone"] and none.yaml["head"] == ours.yaml["head"]


def test_the_classifier_trunk_and_its_random_twin_are_frozen_alike(classify_run):
    from fashionkit.detect.train import frozen_layers

    ours = model_source(str(classify_run), nc=10)
    assert frozen_layers(ours) == list(range(ours.yaml[YAML_KEY]["trunk_end"] + 1))
    assert set(ours.yaml[YAML_KEY]["transfer"]) <= set(frozen_layers(ours))
    assert frozen_layers(model_source("none", nc=10)) == frozen_layers(ours)  # same schedule, other weights
    assert frozen_layers(model_source("yolov8n.yaml", nc=10)) == []


def test_stock_yaml_builds_offline():
    stock = model_source("yolov8n.yaml", nc=10)
    assert stock.kind == "yaml" and stock.model.yaml["nc"] == 10
    with pytest.raises(UserError, match="no such model YAML"):
        model_source("yolov0x.yaml", nc=10)


def test_unsupported_classifier_is_a_user_error():
    from fashionkit.classify.models import create_model

    with pytest.raises(UserError, match="VGG-family"):
        detector_yaml(create_model("resnet"))


def test_ultralytics_stays_offline_and_out_of_home():
    """In a fresh process, as the CLI runs: no DNS probe or download, settings and font outside the home dir."""
    import subprocess
    import sys

    code = ("from fashionkit.detect.model import use_ultralytics; use_ultralytics(); import os, json; "
            "from ultralytics.utils import ONLINE, USER_CONFIG_DIR, SETTINGS; "
            "from ultralytics.utils.checks import check_font; "
            "print(json.dumps([ONLINE, str(USER_CONFIG_DIR), str(check_font('Arial.ttf')), SETTINGS['sync']]))")
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    online, config_dir, font, sync = json.loads(out.stdout.strip().splitlines()[-1])
    assert not online and not sync
    assert not config_dir.startswith(str(Path.home()))
    assert Path(font).is_file() and Path(font).parent == Path(config_dir)  # found locally: nothing downloaded


# ---- detect train ------------------------------------------------------------------------------------------

def test_train_writes_our_run_with_the_ultralytics_run_inside(trained, classify_run, classifier):
    run, summary = trained
    assert json.loads((run / "run.json").read_text())["stage"] == "detect"
    for name in ("config.yaml", "model.yaml", "summary.json"):
        assert (run / name).is_file(), name
    ul = run / "ultralytics"
    assert (ul / "results.csv").is_file() and (ul / "args.yaml").is_file()
    assert "warmup_epochs: 1.0" in (ul / "args.yaml").read_text().splitlines()  # ours, not ultralytics' 3
    assert (ul / "results.png").is_file() and (ul / "labels.jpg").is_file()  # plots, font found offline
    assert not (run / "runs").exists() and not (ul / "runs").exists()
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert (run / summary["best"]).is_file() and summary["best"].startswith("ultralytics/weights/")
    assert set(summary["val"]) == {"precision", "recall", "mAP50", "mAP50-95"}
    assert summary["test"]["split"] == "test" and 0 <= summary["test"]["mAP50"] <= 1
    assert summary["source"] == "classifier"
    # images counted batch by batch (a --minutes run cuts its last epoch short): 2 epochs x 16 scenes here
    assert summary["train_images_per_s"] == pytest.approx(2 * 16 / summary["train_seconds"], rel=0.05)
    assert (run / "test" / "confusion_matrix.png").is_file()

    # epoch 1 had the copied backbone frozen (BatchNorm statistics too); epoch 2 fine-tuned it
    def first_trunk_conv(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = ckpt["ema"].float()
        index = model.yaml[YAML_KEY]["transfer"][1]
        return conv_bn(model, index), model.model[-1]

    src = [layer for layer in trunk_layers(classifier) if hasattr(layer, "conv")][1]
    (conv1, bn1), head1 = first_trunk_conv(ul / "weights" / "epoch0.pt")
    (conv2, bn2), head2 = first_trunk_conv(ul / "weights" / "epoch1.pt")
    torch.testing.assert_close(conv1.weight, src.conv.weight, rtol=2e-3, atol=2e-4)  # fp16 checkpoint
    torch.testing.assert_close(bn1.running_var, src.bn.running_var, rtol=2e-3, atol=2e-4)
    assert not torch.allclose(conv2.weight, src.conv.weight, rtol=2e-3, atol=2e-4)
    assert bn2.eps == src.bn.eps  # the transferred BatchNorms keep the classifier's eps in the checkpoint


def test_train_errors(cli, work, dataset, classify_run, trained, capsys):
    assert cli("detect", "train", "--from", dataset, "--data", dataset, "--runs-dir", work / "runs") == 2
    assert "not a fashionkit run directory" in capsys.readouterr().err
    assert cli("detect", "train", "--from", work / "runs", "--data", dataset, "--runs-dir", work / "runs") == 2
    assert "not a fashionkit run directory" in capsys.readouterr().err
    ckpt = classify_run / "weights" / "best.pt"
    assert cli("detect", "train", "--from", ckpt, "--data", dataset, "--runs-dir", work / "runs") == 2
    assert "pass the classify run directory" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", work / "nowhere", "--runs-dir", work / "runs") == 2
    assert "dataset not found" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", dataset, "--imgsz", 100) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", dataset, "--warmup-epochs", -1) == 2
    assert capsys.readouterr().err.strip() == "error: --warmup-epochs must be at least 0, got -1.0"
    assert cli("detect", "train", "--from", "none", "--data", dataset, "--batch", 0) == 2
    assert capsys.readouterr().err.strip() == "error: --batch must be at least 1, got 0"
    assert not (work / "runs" / "detect" / "train").exists()  # no run directory for a failed start


def test_train_from_a_detect_run_fine_tunes_its_whole_detector(trained, classify_run, dataset, work):
    """--from a detect run: its best.pt is the start (every layer, nothing frozen: the first epoch already moves
    the trunk), the run records the classify run under it, and the crop reader is made from that classifier."""
    from fashionkit.detect.model import model_source
    from fashionkit.detect.train import train

    source_run, source_summary = trained
    source = model_source(str(source_run), nc=10)
    assert source.kind == "detector" and source.classifier_run == str(classify_run)
    best = torch.load(source_run / source_summary["best"], map_location="cpu", weights_only=False)
    start = (best["ema"] or best["model"]).float().state_dict()
    for name, value in source.model.state_dict().items():
        torch.testing.assert_close(value, start[name], msg=name)
    with pytest.raises(UserError, match="has 10 classes, the data 3"):
        model_source(str(source_run), nc=3)
    one = model_source(str(source_run), nc=1).model  # --one-class: all but each class branch's last conv copied
    assert one.yaml["nc"] == one.model[-1].nc == 1
    kept = {k for k, v in one.state_dict().items() if k in start and v.shape == start[k].shape}
    for name in kept:
        torch.testing.assert_close(one.state_dict()[name], start[name], msg=name)
    head = len(one.model) - 1
    assert {k.rsplit(".", 1)[0] for k in set(one.state_dict()) - kept} == {f"model.{head}.cv3.{i}.2" for i in range(3)}
    broken = work / "broken-detect-run"  # a detect run whose best.pt is cut short
    shutil.copytree(source_run, broken, ignore=shutil.ignore_patterns("epoch*.pt", "last.pt"))
    weights = broken / source_summary["best"]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot read"):
        model_source(str(broken), nc=10)

    run, summary = train({"from": str(source_run), "data": str(dataset), "imgsz": 160, "epochs": 1, "batch": 8,
                          "extra": "save_period=1,nbs=8", "runs_dir": str(work / "runs"), "name": "det-more",
                          "reader_epochs": 1, "test": False})
    assert summary["source"] == "detector" and summary["status"] == "finished"
    assert json.loads((run / "run.json").read_text())["classifier_run"] == str(classify_run)
    assert (run / "reader" / "run.json").is_file()
    after = torch.load(run / "ultralytics" / "weights" / "epoch0.pt", map_location="cpu", weights_only=False)
    index = source.yaml[YAML_KEY]["transfer"][1]  # a plain Conv (the first is the Focus stem)
    trunk_conv = f"model.{index}.conv.weight"
    assert not torch.allclose(after["ema"].float().state_dict()[trunk_conv], start[trunk_conv], atol=1e-4)


# ---- detect video ------------------------------------------------------------------------------------------

def test_video_writes_annotated_video_jsonl_csv_summary(trained, clip, work):
    from fashionkit.detect.video import run_video

    path, gt = clip
    out = work / "video"
    # --no-track: every frame on its own, named by the detector (tracking, the default, is tested below)
    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(out), stride=2, batch=4, track=False),
                  progress=False)
    n = len(gt)
    processed = list(range(0, n, 2))
    assert s["frames_read"] == n and s["frames_processed"] == len(processed) and s["complete"]
    frames, fps = read_video(out / "annotated.mp4")
    assert len(frames) == len(processed) and frames[0].shape == (CLIP["height"], CLIP["width"], 3)
    assert fps == pytest.approx(CLIP["fps"] / 2)
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == processed
    assert lines[1]["time"] == pytest.approx(2 / CLIP["fps"])
    total = sum(len(line["detections"]) for line in lines)
    assert total > 0  # conf 0.001: even a 2-epoch model proposes boxes
    d = lines[0]["detections"][0] if lines[0]["detections"] else next(x for ln in lines for x in ln["detections"])
    assert set(d) == {"class_id", "class_name", "conf", "box"} and len(d["box"]) == 4
    with (out / "detections.csv").open() as f:
        assert len(f.readlines()) == total + 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fps"] > 0 and sum(r["detections"] for r in summary["items"].values()) == total

    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(out), max_frames=3, track=True), progress=False)
    assert s["frames_processed"] == 3 and s["complete"]
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all("track_id" in d for ln in lines for d in ln["detections"])


def test_onnx_backend_is_exported_once_and_computes_what_torch_computes(trained, clip, work):
    from fashionkit.detect.video import run_video
    from fashionkit.detect.weights import load_detector

    path, _ = clip
    best = trained[0] / "ultralytics" / "weights" / "best.pt"
    onnx = best.with_suffix(".onnx")
    onnx.unlink(missing_ok=True)

    def frames(backend: str, name: str, weights=trained[0]) -> list[list[dict]]:
        # per frame: a 2-epoch model's boxes, all near the threshold, start no track for the tracker to follow
        s = run_video(path, video_cfg(weights=str(weights), out=str(work / name), backend=backend, max_frames=6,
                                      save_video=False, track=False), progress=False)
        assert s["backend"] == ("onnx" if backend == "auto" else backend)  # auto on a CPU: ONNX Runtime
        return [json.loads(line)["detections"] for line in (work / name / "detections.jsonl").read_text().splitlines()]

    by_torch = frames("torch", "torch")
    assert not onnx.exists()  # torch never exports
    by_onnx = frames("onnx", "onnx")
    assert onnx.is_file() and not list(best.parent.glob(".onnx-export-*"))  # moved into place, no leftovers
    assert len(by_onnx) == len(by_torch) == 6 and sum(map(len, by_torch)) > 0
    # The same function: raw predictions (boxes and class scores before NMS) agree. (The detections themselves
    # cannot be compared one to one: a 2-epoch model's scores all sit near the threshold, where rounding decides.)
    x = torch.rand(2, 3, 160, 224)
    by_torch_model, by_onnx_model = load_detector(trained[0], "torch")[0], load_detector(trained[0], "onnx")[0]
    with torch.inference_mode():
        raw_torch = by_torch_model.model.float().eval()(x)[0]
        raw_onnx = torch.as_tensor(by_onnx_model.predictor.model(x))
    assert raw_onnx.shape == raw_torch.shape
    assert (raw_onnx - raw_torch).abs().max() <= 1e-4 * raw_torch.abs().max() + 1e-4

    stamp = onnx.stat().st_mtime_ns
    frames("auto", "again")
    assert onnx.stat().st_mtime_ns == stamp  # reused while best.pt is unchanged
    os.utime(best, ns=(stamp + 10**9, stamp + 10**9))  # best.pt newer: a later training epoch
    frames("onnx", "newer")
    assert onnx.stat().st_mtime_ns != stamp
    assert frames("auto", "direct", weights=onnx) == by_onnx  # the .onnx file itself is a valid --weights


def test_onnx_weights_that_are_not_a_detector_are_refused(cli, clip, work, capsys):
    path, _ = clip
    plain = work / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(plain), dynamo=False)
    junk = work / "junk.onnx"
    junk.write_text("not a model")
    for weights, message in ((plain, "not an ultralytics detection export"), (junk, "not a loadable ONNX model")):
        assert cli("detect", "video", path, "--weights", weights, "--out", work / "e") == 2
        assert message in capsys.readouterr().err


def test_gt_scoring_counts_hits_misses_and_ignores(clip):
    from fashionkit.detect.video import Score

    _, gt = clip
    perfect, shifted = Score(), Score()
    for frame in gt:
        dets = [{"class_id": g["class_id"], "conf": 0.9, "box": g["box"]} for g in frame if g["visible"] >= 0.5]
        perfect.add(dets, frame, 0.5)
        moved = [{**d, "box": [v + 1000 for v in d["box"]]} for d in dets]
        shifted.add(moved, frame, 0.5)
    cared = sum(g["visible"] >= 0.5 for f in gt for g in f)
    assert perfect.result()["precision"] == 1 and perfect.result()["recall"] == 1 and perfect.tp == cared
    assert shifted.tp == 0 and shifted.fp == cared and shifted.fn == cared

    wrong_class, frame = Score(), next(f for f in gt if f)
    g = frame[0]
    wrong_class.add([{"class_id": (g["class_id"] + 1) % 10, "conf": 0.9, "box": g["box"]}], [{**g, "visible": 1}], 0.5)
    assert (wrong_class.tp, wrong_class.fp, wrong_class.tp_box) == (0, 1, 1)


def test_video_gt_and_grey_odd_sized_input(trained, clip, work):
    from fashionkit.detect.video import run_video

    path, gt = clip
    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(work / "gt"), gt=str(path.with_suffix(".json")),
                                  save_video=False), progress=False)
    assert s["gt"]["tp"] + s["gt"]["fn"] == sum(g["visible"] >= 0.5 for f in gt for g in f)
    assert not (work / "gt" / "annotated.mp4").exists()

    frames, _ = read_video(path)
    grey = work / "grey.avi"
    writer = cv2.VideoWriter(str(grey), cv2.VideoWriter_fourcc(*"MJPG"), 7.0, (250, 170), isColor=False)
    for frame in frames[:5]:
        writer.write(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (250, 170)))
    writer.release()
    s = run_video(grey, video_cfg(weights=str(trained[0]), out=str(work / "grey")), progress=False)
    out, fps = read_video(work / "grey" / "annotated.mp4")
    assert s["frames_processed"] == 5 and len(out) == 5 and out[0].shape[:2] == (170, 250)
    assert fps == pytest.approx(7.0)


def test_video_nms_across_classes_leaves_one_box_per_item(clip, work):
    """By default two boxes of different classes on one item do not both survive NMS (ultralytics' own default is
    per class, which left a second, wrongly named box on 11-15% of the items of the validation clips);
    --no-agnostic-nms keeps them. On the bundled detector (a 2-epoch one calls everything one class)."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scoring import box_iou
    from fashionkit.detect.video import run_video

    path, _ = clip
    bundled = str(bundled_dir("detector"))

    def overlaps(out: str, **opts) -> tuple[int, int, bool]:
        """(pairs of boxes in one frame above NMS's IoU 0.7 with different classes, boxes, the summary's flag)"""
        s = run_video(path, resolve(VIDEO_OPTIONS, {"weights": bundled, "backend": "torch", "conf": 0.1, "track": False,
                                                    "out": str(work / out), "save_video": False, **opts}),
                      progress=False)
        cross = boxes = 0
        for line in (work / out / "detections.jsonl").open():
            dets = json.loads(line)["detections"]
            xyxy = np.array([d["box"] for d in dets]).reshape(-1, 4)
            boxes += len(dets)
            for i, j in zip(*np.nonzero(np.triu(box_iou(xyxy, xyxy) > 0.7, 1))):
                cross += dets[i]["class_id"] != dets[j]["class_id"]
        return cross, boxes, s["agnostic_nms"]

    per_class = overlaps("nms-per-class", agnostic_nms=False)
    across = overlaps("nms-across")
    assert per_class[0] > 0 and per_class[2] is False
    assert across[0] == 0 and across[2] is True
    assert per_class[1] - per_class[0] <= across[1] < per_class[1]  # only the second boxes went


def test_video_tracks_by_default_and_a_clip_shorter_than_min_track_frames_keeps_its_items(work):
    """`detect video input.mp4` with no flags: tracks, each named once by the bundled detector's crop reader. An
    8-frame clip is shorter than --min-track-frames (10): its tracks need only span it, or every item would go."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.video import run_video

    path = work / "short.mp4"
    gt = make_video(path, resolve(MAKE_VIDEO_OPTIONS, {"seconds": 0.8, "fps": 10.0, "width": 320, "height": 240,
                                                      "items": 3, "min_scale": 1.5, "max_scale": 3.0}),
                    progress=False)
    assert len(gt) == 8
    s = run_video(path, resolve(VIDEO_OPTIONS, {"backend": "torch", "save_video": False, "out": str(work / "short")}),
                  progress=False)
    t = s["tracks"]
    assert s["track"] is True and t["classifier"] == str(bundled_dir("detector") / "reader")
    assert t["min_track_frames"] == 8 and t["dropped_short"] == 0
    assert t["count"] == 3 and all(item["frames"] == 8 for item in t["items"])
    lines = [json.loads(line) for line in (work / "short" / "detections.jsonl").read_text().splitlines()]
    assert {d["track_id"] for line in lines for d in line["detections"]} == {i["track_id"] for i in t["items"]}


def test_video_on_image_folder_and_single_image(trained, dataset, work):
    from fashionkit.detect.video import run_video

    folder = work / "images"
    folder.mkdir()
    sources = sorted((dataset / "images" / "test").iterdir())[:3]
    for src in sources:
        image = cv2.imread(str(src))
        cv2.imwrite(str(folder / f"{src.stem}.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))  # grey PNGs
    (folder / "notes.txt").write_text("not an image")
    s = run_video(folder, video_cfg(weights=str(trained[0]), out=str(work / "folder")), progress=False)
    assert s["kind"] == "images" and s["frames_processed"] == 3
    assert sorted(p.name for p in (work / "folder" / "annotated").iterdir()) == sorted(f"{p.stem}.png" for p in sources)
    lines = [json.loads(line) for line in (work / "folder" / "detections.jsonl").read_text().splitlines()]
    assert [line["source"] for line in lines] == [f"{p.stem}.png" for p in sources]

    s = run_video(sources[0], video_cfg(weights=str(trained[0]), out=str(work / "one")), progress=False)
    assert s["frames_processed"] == 1 and (work / "one" / "annotated" / sources[0].name).is_file()


def test_video_errors(cli, trained, clip, classify_run, work, capsys):
    path, _ = clip
    weights = ["--weights", trained[0]]

    def error(*argv) -> str:
        assert cli("detect", "video", *argv) == 2
        return capsys.readouterr().err

    assert "input not found" in error(work / "missing.mp4", *weights, "--out", work / "e")
    text = work / "text.mp4"
    text.write_text("this is not a video\n")
    assert "cannot open" in error(text, *weights, "--out", work / "e")
    (work / "empty.mp4").write_bytes(b"")
    assert "empty" in error(work / "empty.mp4", *weights, "--out", work / "e")
    half = work / "half.mp4"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an mp4 cut before its index: unreadable
    assert "truncated" in error(half, *weights, "--out", work / "e")
    blocker = work / "a-file"
    blocker.write_text("")
    assert "cannot write" in error(path, *weights, "--out", blocker / "sub")
    assert "is a file" in error(path, *weights, "--out", blocker)
    ckpt = classify_run / "weights" / "best.pt"
    assert "classifier checkpoint" in error(path, "--weights", ckpt, "--out", work / "e")
    assert "is a classify run, not a detect run" in error(path, "--weights", classify_run, "--out", work / "e")
    junk = work / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    assert "not a PyTorch checkpoint" in error(path, "--weights", junk, "--out", work / "e")
    assert "weights not found" in error(path, "--weights", work / "none.pt", "--out", work / "e")


def test_truncated_video_is_processed_as_far_as_readable(cli, trained, clip, work, capsys):
    path, gt = clip
    frames, _ = read_video(path)
    avi = work / "full.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), CLIP["fps"], (CLIP["width"], CLIP["height"]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    cut = work / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])  # AVI: frames up to the cut stay decodable
    out = work / "cut"
    assert cli("detect", "video", cut, "--weights", trained[0], "--out", out) == 0
    assert "ended after" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and 0 < summary["stopped_at_frame"] < len(gt)
    assert summary["frames_processed"] == summary["stopped_at_frame"]
    assert len((out / "detections.jsonl").read_text().splitlines()) == summary["frames_processed"]
    assert len(read_video(out / "annotated.mp4")[0]) == summary["frames_processed"]


def test_eval_reports_map_and_video_scores(cli, trained, clip, work, capsys):
    path, _ = clip
    run = trained[0]
    assert cli("detect", "eval", run, "--video", path, "--no-plots") == 0
    result = json.loads((run / "eval" / "test" / "eval.json").read_text())
    assert 0 <= result["test"]["mAP50"] <= 1 and "precision" in result["video"]["gt"]
    assert result["video"]["conf"] == 0.1 and "tracks" in result["video"]["gt"]  # `detect video` as it runs by default
    # the boxes alone (ultralytics' single_cls): one class, so no per-class figures
    boxes = result["test"]["boxes"]
    assert 0 <= boxes["mAP50"] <= 1 and "mAP50-95_per_class" not in boxes
    # the boxes read again by the run's crop reader (--classifier auto)
    read = result["test"]["read"]
    assert read["classifier"] == str(run / "reader") and read["vote_weight"] == 0.2 and 0 <= read["mAP50"] <= 1
    out = capsys.readouterr().out
    assert "mAP50" in out and f"classes read by {run / 'reader'}" in out and "boxes alone (classes ignored)" in out
    assert cli("detect", "eval", run, "--classifier", "none", "--no-plots", "--out", work / "eval-none") == 0
    assert "read" not in json.loads((work / "eval-none" / "eval.json").read_text())["test"]
    capsys.readouterr()
    for argv, says in ((("--vote-weight", 2), "--vote-weight 2.0"), (("--classifier", run), "is a detect run"),
                       (("--classifier", work / "nowhere"), "not found")):
        assert cli("detect", "eval", run, *argv, "--no-plots") == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    # said before the mAP is computed and before the output folder is made: ultralytics scored --imgsz -5 as 0,
    # and --video's own mistakes came after the minutes of mAP
    for argv, says in ((("--imgsz", -5), "--imgsz -5: use a multiple of 32"),
                       (("--video", work / "nowhere.mp4"), "--video " + str(work / "nowhere.mp4") + ": file not found"),
                       (("--video", path, "--video-imgsz", 100), "--video-imgsz 100: use a multiple of 32"),
                       (("--video", path, "--min-visible", 1.5), "--min-visible 1.5 must lie in [0, 1]"),
                       (("--video", path, "--conf", 2), "--conf 2.0 must lie in [0, 1]")):
        assert cli("detect", "eval", run, *argv, "--no-plots", "--out", work / "eval-refused") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {says}") and err.count("\n") == 1, err
        assert not (work / "eval-refused").exists()


def test_eval_scores_the_boxes_alone_apart_from_their_classes(cli, dataset, work, runs_dir, capsys):
    """On the bundled detector (a 2-epoch one finds nothing): with classes ignored it scores far higher than with
    them on realistic scenes (BENCHMARKS.md: test mAP50 0.933 against 0.686), so the two scores must differ here
    too; and ultralytics' label cache, rewritten for the one-class scoring, must not leak into the next scoring.
    With no --out the second scoring goes under the runs root, never into the installed package."""
    from conftest import snapshot

    from fashionkit.bundled import bundled_dir

    package = snapshot(bundled_dir("detector"))
    scores = []
    for out in (work / "eval-bundled", None):
        where = ["--out", out] if out else []
        assert cli("detect", "eval", bundled_dir("detector"), "--data", dataset, "--split", "val", "--classifier",
                   "none", "--no-plots", *where) == 0
        out = out or runs_dir / "bundled" / "detector" / "eval" / "val"
        scores.append(json.loads((out / "eval.json").read_text())["val"])
    assert snapshot(bundled_dir("detector")) == package
    own, boxes = scores[0]["mAP50"], scores[0]["boxes"]["mAP50"]
    assert 0 < own < boxes <= 1, (own, boxes)
    assert [(s["mAP50"], s["boxes"]["mAP50"]) for s in scores] == [(own, boxes)] * 2
    assert "val, boxes alone (classes ignored): mAP50" in capsys.readouterr().out


def test_eval_weighs_the_read_boxes_by_the_gate(cli, dataset, classify_run, work, capsys):
    """`detect eval --gate`: by default the bundled detector's gate weighs its read boxes (recorded, and said); a gate
    that calls every crop an item scores as no gate; a ten-class run as the gate is refused in one line."""
    from fashionkit.bundled import bundled_dir

    bundled = bundled_dir("detector")

    def read(name: str, *argv) -> dict:
        assert cli("detect", "eval", bundled, "--data", dataset, "--split", "val", *argv, "--no-plots", "--out",
                   work / name) == 0
        return json.loads((work / name / "eval.json").read_text())["val"]["read"]

    auto = read("eval-gate-auto")
    assert auto["gate"] == str(bundled / "gate") and 0 <= auto["mAP50"] <= 1
    assert f"weighed by the gate {bundled / 'gate'}" in capsys.readouterr().out
    plain = read("eval-gate-none", "--gate", "none")
    assert plain["gate"] is None and "weighed by the gate" not in capsys.readouterr().out
    every = read("eval-gate-open", "--gate", biased_gate(work, "gate-open", -30.0))
    assert (every["mAP50"], every["mAP50-95"]) == (plain["mAP50"], plain["mAP50-95"])
    assert cli("detect", "eval", bundled, "--data", dataset, "--split", "val", "--gate", classify_run,
               "--no-plots", "--out", work / "eval-gate-bad") == 2
    err = capsys.readouterr().err
    assert "reads the ten classes only" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---- track-level classes (detect/tracks.py) and scoring (detect/scoring.py) ---------------------------------

def test_class_flicker_and_per_track_accuracy_on_hand_made_tracks():
    from fashionkit.detect.scoring import class_changes, flicker, track_accuracy

    seqs = {1: [0, 0, 2, 0], 2: [1, 1]}
    assert class_changes(seqs) == (2, 6) and flicker(seqs) == pytest.approx(100 * 2 / 6, abs=1e-3)
    assert flicker({1: [4, 4, 4]}) == 0 and flicker({}) is None
    # (track, gt item, gt class, per-frame class, track class): track 1 follows item 7 (coat, 4) for 3 frames and
    # crosses item 8 once; track 2 follows item 8 (shirt, 6); track 3 never meets an item
    records = [(1, 7, 4, 4, 4), (1, 7, 4, 6, 4), (1, 7, 4, 4, 4), (1, 8, 6, 6, 4),
               (2, 8, 6, 6, 0), (2, 8, 6, 0, 0), (3, None, None, 1, 1)]
    per_frame, track = track_accuracy(records, 3), track_accuracy(records, 4)
    # the frame of track 1 on item 8 does not count: the track belongs to item 7
    assert per_frame["accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)
    assert track["accuracy"] == pytest.approx(0.5) and track["correct_tracks"] == 1
    assert track["matched_tracks"] == 2 and track["unmatched_tracks"] == 1


def test_track_score_counts_flicker_along_tracks_and_ground_truth_items():
    from fashionkit.detect.scoring import TrackScore

    item = {"track_id": 5, "class_id": 4, "box": [10, 10, 50, 60], "visible": 1.0}
    other = {"track_id": 6, "class_id": 1, "box": [100, 10, 140, 60], "visible": 1.0}
    score = TrackScore()
    # item 5 is tracked as track 1 (coat, shirt, coat per frame; coat as a track), then lost and picked up as track
    # 2 (shirt as a track); item 6 is track 3 throughout; a false track 4 sits on empty ground
    per_frame = [4, 6, 4, 6, 6]
    for cls, tid, tcls in zip(per_frame, [1, 1, 1, 2, 2], [4, 4, 4, 6, 6]):
        dets = [{"class_id": cls, "conf": 0.9, "box": [11, 10, 50, 61], "track_id": tid, "track_class_id": tcls},
                {"class_id": 1, "conf": 0.8, "box": [100, 11, 141, 60], "track_id": 3, "track_class_id": 1},
                {"class_id": 2, "conf": 0.3, "box": [200, 200, 240, 240], "track_id": 4, "track_class_id": 2}]
        score.add(dets, [item, other])
    r = score.result()
    assert r["tracks"] == 4 and r["track_frames"] == 15
    assert r["per_frame"]["changes"] == 2 and r["track"]["changes"] == 0  # one class per track: no change within
    assert r["per_frame"]["flicker"] == pytest.approx(100 * 2 / 15, abs=1e-3)
    assert r["per_frame"]["gt_changes"] == 3 and r["track"]["gt_changes"] == 1  # the hand-over to track 2 shows
    assert r["track"]["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and r["track"]["unmatched_tracks"] == 1
    assert r["per_frame"]["accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3, abs=1e-4)


def test_track_vote_mixes_votes_and_classifier_reading():
    from fashionkit.detect.tracks import mix
    from fashionkit.metric.resolve import top2

    votes = np.zeros((3, 10))
    votes[0, [4, 6, 8]] = [45 * 0.6, 9 * 0.5, 0.3]  # the issue's coat: 45 coat, 9 shirt, 1 bag frames
    votes[1, [0, 6]] = [1.0, 1.0]  # a tie between T-shirt/top and shirt
    probs = np.full((3, 10), np.nan)  # track 0 has no crop the classifier could read
    probs[1] = np.eye(10)[6] * 0.9 + 0.01
    p = mix(votes, probs, vote_weight=0.5)
    assert p.sum(1) == pytest.approx(np.ones(3))
    top1, margin = top2(p)
    assert top1[0] == 4 and p[0, 4] == pytest.approx(27 / (27 + 4.5 + 0.3))  # votes alone, confidence-weighted
    assert top1[1] == 6  # the classifier breaks the tie
    assert p[2] == pytest.approx(np.full(10, 0.1))  # no votes, no reading: uniform, margin 0
    assert margin[2] == 0
    assert mix(votes, probs, vote_weight=1.0)[1, 0] == pytest.approx(0.5)  # weight 1: the votes alone
    assert mix(votes, None, 0.5) == pytest.approx(mix(votes, probs * np.nan, 0.5))


def test_reread_scores_each_box_under_the_classes_its_reading_gives():
    from fashionkit.detect.reader import reread

    scores = np.zeros((3, 10))
    scores[0, [4, 6]] = [0.8, 0.2]  # the detector: coat, a little shirt
    scores[1, 6] = 0.5  # shirt
    scores[2, 1] = 0.9  # trouser, a box too small to read
    probs = np.full((3, 10), np.nan)
    probs[0] = np.eye(10)[6]  # the reader: a shirt, surely
    probs[1] = np.eye(10)[6] * 0.5 + np.eye(10)[0] * 0.5 - 0.001 * (np.arange(10) == 0)
    box, cls, conf = reread(scores, probs, vote_weight=0.2)
    pairs = {(int(b), int(c)): float(f) for b, c, f in zip(box, cls, conf)}
    # box 0: shares 0.2 x (0.8, 0.2) + 0.8 x (0, 1) = coat 0.16, shirt 0.84, each times the box's summed scores 1.0
    assert pairs[(0, 6)] == pytest.approx(0.84) and pairs[(0, 4)] == pytest.approx(0.16)
    assert pairs[(1, 6)] == pytest.approx(0.5 * (0.2 + 0.8 * 0.5)) and pairs[(1, 0)] == pytest.approx(0.5 * 0.8 * 0.499)
    assert pairs[(2, 1)] == pytest.approx(0.9)  # unread: the detector's class and score
    assert len(pairs) == 5  # classes under MIN_SHARE are not scored
    scores[0, 4] = 0.9  # box 0's scores now sum past 1: its confidence is 1, shirt's share 0.2 x 0.2 / 1.1 + 0.8
    box, cls, conf = reread(scores, probs, vote_weight=0.2)
    assert conf[(box == 0) & (cls == 6)][0] == pytest.approx(0.2 * 0.2 / 1.1 + 0.8)
    assert [len(a) for a in reread(np.zeros((0, 10)), np.zeros((0, 10)), 0.2)] == [0, 0, 0]


def test_a_one_class_detectors_boxes_are_named_by_the_reading_alone():
    from fashionkit.detect.reader import reread
    from fashionkit.detect.tracks import mix

    votes = np.array([[3.0], [2.0]])  # a one-class detector: an item is there, not which
    probs = np.full((2, 10), np.nan)  # the second is too small to read
    probs[0] = np.eye(10)[6] * 0.7 + 0.03
    for weight in (0.0, 0.5, 1.0):  # its votes carry no class, whatever their weight
        p = mix(votes, probs, weight)
        assert p[0] == pytest.approx(probs[0]) and p[1] == pytest.approx(np.full(10, 0.1))
    box, cls, conf = reread(np.array([[0.8], [0.6]]), probs, vote_weight=0.5)
    pairs = {(int(b), int(c)): float(f) for b, c, f in zip(box, cls, conf)}
    assert pairs[(0, 6)] == pytest.approx(0.8 * 0.73) and pairs[(0, 0)] == pytest.approx(0.8 * 0.03)
    assert all(pairs[(1, c)] == pytest.approx(0.06) for c in range(10)) and len(pairs) == 20


def test_a_one_class_detectors_boxes_are_read_frame_by_frame_without_tracking(train_set, test_set):
    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.detect.tracks import Readers, crop_grey, crop_item, read_boxes

    images, labels = test_set
    cpu, names = torch.device("cpu"), dict(enumerate(CLASSES))
    readers = Readers(cpu, classifier=NearestMean(train_set).eval())
    frames, found = [], []
    for k in (0, 1, 2):
        frame, box = paste_item(images[k].numpy(), 20, False)
        frames.append(frame)  # the item, and a box too small to read
        found.append([{"class_id": 0, "class_name": "item", "conf": 0.8, "box": box},
                      {"class_id": 0, "class_name": "item", "conf": 0.9, "box": [1.0, 1.0, 6.0, 6.0]}])
    named = read_boxes(frames, found, readers, names)
    assert [len(n) for n in named] == [1, 1, 1]
    for frame, dets, n in zip(frames, found, named):
        p = predict_probs(readers.classifier, crop_item(crop_grey(frame, dets[0]["box"]))[None], cpu)[0]
        c = int(p.argmax())
        assert n[0]["class_id"] == c and n[0]["class_name"] == CLASSES[c] and n[0]["box"] == dets[0]["box"]
        assert n[0]["conf"] == pytest.approx(0.8 * float(p[c]), abs=1e-4)
    assert read_boxes(frames, found, readers, names, min_conf=1.01) == [[], [], []]  # no class that sure: left out
    assert read_boxes([], [], readers, names) == []


def test_collector_keeps_the_best_spaced_crops_and_new_ids_for_images():
    from fashionkit.detect.tracks import CROP_EVERY, TrackCollector

    frame = np.full((120, 160, 3), 30, np.uint8)
    frame[40:80, 50:90] = 200
    collector = TrackCollector(10, crops=2)
    for i in range(10):
        conf = 0.1 * (i + 1)
        collector.add(i, frame, [{"class_id": i % 2, "conf": conf, "box": [50, 40, 90, 80], "track_id": 7},
                                 {"class_id": 3, "conf": 0.9, "box": [0, 0, 4, 4], "track_id": 8},  # too small
                                 {"class_id": 3, "conf": 0.9, "box": [5, 5, 30, 30], "track_id": None}])
    t = collector.tracks[7]
    assert set(collector.tracks) == {7, 8} and t.frames == 10 and (t.first, t.last) == (0, 9)
    assert t.votes[0] == pytest.approx(0.1 + 0.3 + 0.5 + 0.7 + 0.9) and t.counts.tolist()[:2] == [5, 5]
    offered = list(range(0, 10, CROP_EVERY))
    assert sorted(c[1] for c in t.crops) == offered[-2:]  # the two most confident of the offered frames
    assert t.crops[0][2].shape == (48, 48)  # the box padded by 10% of its size on each side
    assert collector.tracks[8].crops == []

    images = TrackCollector(10, crops=1, new_ids=True)
    dets = [{"class_id": 1, "conf": 0.5, "box": [50, 40, 90, 80]}, {"class_id": 2, "conf": 0.5, "box": [5, 5, 30, 30]}]
    images.add(0, frame, dets)
    images.add(1, frame, [dict(d) for d in dets])
    assert [d["track_id"] for d in dets] == [1, 2] and set(images.tracks) == {1, 2, 3, 4}
    assert all(t.frames == 1 for t in images.tracks.values())


def test_gaps_in_a_track_are_filled_by_interpolation_and_short_tracks_left_out():
    from fashionkit.detect.tracks import TrackCollector, drop_short, gap_fills

    frame = np.zeros((120, 160, 3), np.uint8)
    collector = TrackCollector(10, crops=0)
    coat = {"class_id": 4, "class_name": "Coat", "track_id": 1}
    # track 1 is seen at frames 0, 1, 4 (missed at 2 and 3) and 10 (missed 5-9); track 2 flashes at frame 2 only
    for index, x, conf in [(0, 10, 0.9), (1, 12, 0.8), (4, 20, 0.7), (10, 40, 0.6)]:
        collector.add(index, frame, [{**coat, "conf": conf, "box": [x, 10, x + 30, 50]}])
    collector.add(2, frame, [{"class_id": 8, "class_name": "Bag", "track_id": 2, "conf": 0.3, "box": [90, 90, 99, 99]}])
    assert drop_short(collector, 2) == {2} and set(collector.tracks) == {1}
    fills = gap_fills(collector, stride=1, max_gap=3)
    assert sorted(fills) == [2, 3]  # the gap of 2 frames is filled; the one of 5 is longer than 3
    assert fills[2][0]["box"] == [round(12 + 8 / 3, 1), 10, round(42 + 8 / 3, 1), 50]  # a third of 12 -> 20
    assert fills[3][0]["box"] == [round(12 + 16 / 3, 1), 10, round(42 + 16 / 3, 1), 50]
    assert all(d["interpolated"] and d["track_id"] == 1 and d["class_id"] == 4 and d["conf"] == 0.8
               for d in fills[2] + fills[3])  # the class and confidence of the detection before the gap
    assert sorted(gap_fills(collector, stride=1, max_gap=5)) == [2, 3, 5, 6, 7, 8, 9]
    assert gap_fills(collector, stride=1, max_gap=0) == {} and drop_short(collector, 1) == set()
    # every 2nd frame processed (--stride 2): frames 0, 2, 4 follow each other; 4 then 10 leaves out 6 and 8
    strided = TrackCollector(10, crops=0)
    for index in (0, 2, 4, 10):
        strided.add(index, frame, [{**coat, "conf": 0.5, "box": [index, 0, index + 10, 10]}])
    assert sorted(gap_fills(strided, stride=2, max_gap=2)) == [6, 8]


class WithNotItem(torch.nn.Module):
    """A reader of eleven outputs: ``classifier``'s ten logits and "not an item", whose logit is ``not_item``."""

    def __init__(self, classifier, not_item: float):
        super().__init__()
        self.classifier, self.not_item = classifier, not_item
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = self.classifier(x)
        return torch.cat([logits, torch.full((len(x), 1), self.not_item)], 1)


def test_a_reader_that_calls_a_track_not_an_item_leaves_it_out(train_set, test_set):
    """A crop reader with an 11th class, not an item (`detect reader --background`): its share is taken from the ten
    classes, so a track it reads as background falls under --min-read-conf and is left out, and one it reads as an
    item keeps the class the ten say."""
    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.detect.tracks import (
        Readers,
        TrackCollector,
        crop_grey,
        crop_item,
        decide_tracks,
        drop_unread,
        read_crops,
    )

    images, labels = test_set
    cpu, names = torch.device("cpu"), dict(enumerate(CLASSES))
    ten = NearestMean(train_set).eval()
    collector = TrackCollector(10, crops=3)
    frame, box = paste_item(images[0].numpy(), 235, True)
    for f in range(9):
        collector.add(f, frame, [{"class_id": 4, "conf": 0.6, "box": box, "track_id": 1}])
    crop = crop_item(crop_grey(frame, box))[None]
    plain = decide_tracks(collector, Readers(cpu, classifier=ten), names, 0.2, 0.3)[1]
    assert plain["classifier_not_item"] is None
    for logit in (-20.0, 20.0):  # surely an item; surely not one
        reader = WithNotItem(ten, logit).eval()
        p = predict_probs(reader, crop, cpu)[0].numpy()
        t = decide_tracks(collector, Readers(cpu, classifier=reader), names, 0.2, 0.3)[1]
        assert t["classifier_not_item"] == pytest.approx(p[10], abs=1e-4)
        assert t["classifier_conf"] == pytest.approx(p[:10].max(), abs=1e-4)  # the ten, not renormalised
        assert read_crops([frame], [[box]], reader, cpu, 10)[0][0] == pytest.approx(p[:10])
        decisions = {1: t}
        if logit < 0:  # as the ten-class reader reads it
            assert t["class_id"] == plain["class_id"] and t["classifier_conf"] == pytest.approx(
                plain["classifier_conf"], abs=1e-3)
            assert drop_unread(decisions, 0.45) == drop_unread({1: dict(plain)}, 0.45)
        else:
            assert t["classifier_conf"] < 1e-6 and drop_unread(decisions, 0.45) == {1} and decisions == {}
    # the same reader as a gate (`--gate`): the ten-class reader names the track, the gate may leave it out
    for logit in (-20.0, 20.0):
        gate = WithNotItem(ten, logit).eval()
        t = decide_tracks(collector, Readers(cpu, classifier=ten, gate=gate), names, 0.2, 0.3)[1]
        p = predict_probs(gate, crop, cpu)[0].numpy()
        assert t["gate_not_item"] == pytest.approx(p[10], abs=1e-4) and t["classifier_not_item"] is None
        assert {k: v for k, v in t.items() if k != "gate_not_item"} == {k: v for k, v in plain.items()
                                                                        if k != "gate_not_item"}
        assert drop_unread({1: dict(t)}, 0.0, max_not_item=0.5) == ({1} if logit > 0 else set())
        assert drop_unread({1: dict(t)}, 0.0) == set()  # no --max-not-item: the gate is not asked
    assert plain["gate_not_item"] is None


def test_background_boxes_hold_no_item():
    from fashionkit.detect.reader import background_boxes, is_background

    items = np.array([[10, 10, 50, 60], [100, 20, 140, 90]], float)
    assert not is_background([12, 12, 48, 58], items)  # on an item
    assert not is_background([0, 0, 120, 120], items)  # round a whole item
    assert not is_background([15, 15, 30, 30], items)  # inside an item
    assert is_background([60, 100, 100, 140], items) and is_background([0, 0, 5, 5], np.zeros((0, 4)))
    boxes = [(4, *b) for b in items.tolist()]
    found = [[11, 11, 49, 59], [60, 100, 100, 140], [150, 100, 190, 150]]  # the detector: an item, then background
    rng = np.random.default_rng(0)
    chosen = background_boxes(rng, (160, 200, 3), boxes, found, 4)
    assert chosen[:2] == [found[1], found[2]] and len(chosen) == 4  # its boxes off the items first, then random ones
    assert all(is_background(b, items) and 0 <= b[0] < b[2] <= 200 and 0 <= b[1] < b[3] <= 160 for b in chosen)
    assert background_boxes(rng, (160, 200, 3), boxes, found, 1) == [found[1]]
    assert background_boxes(rng, (160, 200, 3), boxes, [], 0) == []


def test_tracks_the_reader_names_no_class_are_left_out_and_unread_ones_kept():
    from fashionkit.detect.tracks import drop_unread

    decisions = {1: {"classifier_conf": 0.92}, 2: {"classifier_conf": 0.31}, 3: {"classifier_conf": None},
                 4: {"classifier_conf": 0.45}, 5: {"classifier_conf": 0.4499}}
    assert drop_unread(decisions, 0.45) == {2, 5} and set(decisions) == {1, 3, 4}  # no crop read: kept
    assert drop_unread(decisions, 0.0) == set() and set(decisions) == {1, 3, 4}


def test_a_broken_track_is_stitched_to_the_one_it_continues_and_only_that():
    """A coat moves right 2 px a frame (frames 0-9), is lost, and a new track starts at frame 20 where it would be
    by then: the two are one track (votes, frames and crops of both, the earlier id). A track starting there too late
    (past the gap), of another size, or away from the coat's path is not joined."""
    from fashionkit.detect.tracks import TrackCollector, stitch

    frame = np.zeros((200, 300, 3), np.uint8)
    collector = TrackCollector(10, crops=4)

    def seen(tid: int, index: int, x: float, side: float = 30.0, y: float = 50.0, class_id: int = 4) -> None:
        collector.add(index, frame, [{"class_id": class_id, "class_name": "", "track_id": tid, "conf": 0.5,
                                      "box": [x, y, x + side, y + side]}])

    for index in range(10):
        seen(1, index, 10 + 2 * index)  # last at x = 28, frame 9
    for index in range(20, 26):
        seen(2, index, 10 + 2 * index + 3, class_id=6)  # at frame 20 about where the coat would be (x = 50)
    for index in range(30, 34):
        seen(3, index, 10 + 2 * index, side=80)  # on the path, three times the size
    for index in range(30, 34):
        seen(4, index, 10 + 2 * index, y=150)  # of the size, 100 px off the path
    for index in range(100, 104):
        seen(5, index, 10 + 2 * index)  # on the path, long after the coat's last frame (frame 25 by then)
    votes = collector.tracks[1].votes + collector.tracks[2].votes
    assert stitch(collector, max_gap=0) == {} and len(collector.tracks) == 5
    joined = stitch(collector, max_gap=15)
    assert joined == {2: 1} and set(collector.tracks) == {1, 3, 4, 5}
    coat = collector.tracks[1]
    assert list(coat.seen) == [*range(10), *range(20, 26)] and coat.frames == 16
    assert np.allclose(coat.votes, votes) and coat.counts[4] == 10 and coat.counts[6] == 6
    assert len(coat.crops) == 4  # the best of both parts' crops, no more than --crops
    # the same tracks with a longer allowed gap: the late one on the path joins the coat too
    assert stitch(collector, max_gap=80) == {5: 1}


def paste_item(item: np.ndarray, ground: int, dark_item: bool, scale: int = 3) -> tuple[np.ndarray, list]:
    """A Fashion-MNIST item on a flat BGR ground, lighter than the ground or (``dark_item``) darker, and its box."""
    big = cv2.resize(item, (28 * scale, 28 * scale), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    frame = np.full((140, 160), float(ground), np.float32)
    frame[20:20 + 28 * scale, 30:30 + 28 * scale] += (-1 if dark_item else 1) * 100 * big / 255
    rows, cols = np.nonzero(big > 25)
    box = [30 + cols.min(), 20 + rows.min(), 30 + cols.max() + 1, 20 + rows.max() + 1]
    return cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_GRAY2BGR), [float(v) for v in box]


class NearestMean(torch.nn.Module):
    """A classifier without training: logits are minus the distance to each class's mean training image (about
    two thirds right on Fashion-MNIST), so crop readings can be checked against a model that reads items."""

    def __init__(self, train_set, per_class: int = 200):
        from fashionkit.data.loader import normalize, to_float

        super().__init__()
        images, labels = train_set
        x = normalize(to_float(images[:6000])).flatten(1)
        self.register_buffer("means", torch.stack([x[labels[:6000] == c][:per_class].mean(0) for c in range(10)]))
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to probe

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.means) / 4


def likeness(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pixel correlation of two items, allowing a shift of one pixel (rounding in the framing)."""
    return max(float(np.corrcoef(torch.roll(a, (dy, dx), (0, 1)).flatten().numpy(), b.flatten().numpy())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_crops_become_dataset_items_and_the_classifier_reads_them(train_set, test_set):
    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.data.images import to_item
    from fashionkit.detect.tracks import Readers, TrackCollector, crop_grey, crop_item, decide_tracks

    images, labels = test_set
    picks = [int(i) for c in range(10) for i in np.flatnonzero(labels.numpy() == c)[:3]]
    crops, framed = [], []
    for item in images[picks].numpy():
        for ground, dark in ((20, False), (235, True), (120, True), (110, False)):  # mid-grey: either way
            frame, box = paste_item(item, ground, dark)
            crops.append(crop_item(crop_grey(frame, box)))
            framed.append(to_item(item.astype(float)))
    similar = [likeness(a, b) for a, b in zip(crops, framed)]
    assert min(similar) > 0.85, similar  # the item back, framed as data/images.py frames it, up to resampling
    crops, framed = torch.stack(crops), torch.stack(framed)
    classifier, cpu = NearestMean(train_set).eval(), torch.device("cpu")
    on_crops, on_items = (predict_probs(classifier, x, cpu).argmax(1) for x in (crops, framed))
    assert (on_items == labels[picks].repeat_interleave(4)).float().mean() >= 0.5  # it does read items
    assert (on_crops == on_items).float().mean() >= 0.9

    # a track whose detector votes are tied between two classes takes the class its crops read as
    right = next(i for i in picks if predict_probs(classifier, images[i:i + 1], cpu)[0, labels[i]] > 0.5)
    label = int(labels[right])
    other = (label + 1) % 10
    collector = TrackCollector(10, crops=4)
    for f in range(12):
        frame, box = paste_item(images[right].numpy(), 235, True)
        collector.add(f, frame, [{"class_id": (label, other)[f % 2], "conf": 0.6, "box": box, "track_id": 1}])
    names = dict(enumerate(CLASSES))
    alone = decide_tracks(collector, Readers(cpu), names, vote_weight=0.5, resolve_margin=0.3)[1]
    assert alone["margin"] == 0 and alone["classifier_class_id"] is None  # votes alone: a tie
    read = decide_tracks(collector, Readers(cpu, classifier=classifier), names, 0.5, 0.3)[1]
    assert read["class_id"] == read["classifier_class_id"] == label and read["crops"] == 4
    assert read["conf"] > 0.5 and not read["resolved"]


@pytest.fixture(scope="module")
def metric_run(work, classify_run):
    """A tiny metric run whose index holds 600 reference items (the real index code on a smaller reference set)."""
    from fashionkit.metric import index as index_module
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.train import train

    run, _ = train({"from": str(classify_run), "subset": 1000, "epochs": 1, "freeze_epochs": 0, "batch_size": 64,
                    "m_per_class": 16, "steps_per_epoch": 3, "eval": False, "plot_points": 0, "dim": 32,
                    "head_hidden": 64, "runs_dir": str(work / "runs"), "name": "emb"})
    full = index_module.reference_set
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_module, "reference_set", lambda ckpt, data_dir=None: tuple(a[:600] for a in full(ckpt)))
        index_module.build_run_index(run, {name: opt.default for name, opt in INDEX_OPTIONS.items()})
    return run


def test_resolver_re_decides_unsure_hard_tracks_by_their_crops_neighbours(test_set, classify_run, metric_run):
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.detect.tracks import TrackCollector, decide_tracks, load_readers
    from fashionkit.metric.resolve import knn_neighbours, weighted_vote

    names = dict(enumerate(CLASSES))
    readers = load_readers(classify_run, metric_run, names, torch.device("cpu"))
    assert readers.hard == [0, 2, 4, 6] and readers.index.size == 600
    images, labels = test_set
    coat, bag = (int(np.flatnonzero(labels.numpy() == c)[1]) for c in (4, 8))
    collector = TrackCollector(10, crops=3)
    for f in range(9):
        # track 1: a coat the detector calls shirt 5 times and coat 4 times; track 3: a bag, confidently
        for tid, k, cls in ((1, coat, 4 if f % 2 else 6), (3, bag, 8)):
            frame, box = paste_item(images[k].numpy(), 20, False)
            collector.add(f, frame, [{"class_id": cls, "conf": 0.5, "box": box, "track_id": tid}])
    decisions = decide_tracks(collector, readers, names, vote_weight=1.0, resolve_margin=0.3)
    t1, t3 = decisions[1], decisions[3]
    assert t3["class_id"] == 8 and not t3["resolved"] and t3["neighbours"] == []  # not a hard class
    assert t1["resolved"] and t1["margin"] < 0.3 and t1["class_id"] == t1["resolver_class_id"] in (0, 2, 4, 6)
    assert 1 <= len(t1["neighbours"]) <= 10
    assert [n["distance"] for n in t1["neighbours"]] == sorted(n["distance"] for n in t1["neighbours"])
    sources = set(readers.index.source.tolist())
    assert all(n["dataset_index"] in sources and n["class_name"] == CLASSES[n["class_id"]] for n in t1["neighbours"])
    # the vote is metric/resolve.py's over all the track's crops' neighbours together
    from fashionkit.detect.tracks import crop_item

    crops = torch.stack([crop_item(c[2]) for c in collector.tracks[1].crops])
    dist, rows = knn_neighbours(readers.embedder, readers.index, crops, 10, torch.device("cpu"), 64)
    assert t1["resolver_class_id"] == weighted_vote(readers.index, dist.reshape(1, -1), rows.reshape(1, -1),
                                                    readers.hard)[0]
    # a margin threshold of 0: nothing is unsure enough
    assert not any(t["resolved"] for t in decide_tracks(collector, readers, names, 1.0, 0.0).values())
    # a track --min-read-conf will leave out is not looked up; one read at exactly the threshold is
    read = t1["classifier_conf"]
    left_out = decide_tracks(collector, readers, names, 1.0, 0.3, skip_resolve_under=read + 1e-4)[1]
    assert not left_out["resolved"] and left_out["neighbours"] == [] and left_out["classifier_conf"] == read
    assert decide_tracks(collector, readers, names, 1.0, 0.3, skip_resolve_under=read)[1] == t1


def test_misfitting_classifier_or_metric_run_is_refused(cli, trained, clip, classify_run, metric_run, work, capsys):
    import shutil

    from fashionkit.classify.checkpoint import save_checkpoint
    from fashionkit.classify.models import create_model
    from fashionkit.config import load_yaml, save_yaml
    from fashionkit.detect.tracks import load_readers

    path, _ = clip
    four = work / "runs" / "classify" / "four-classes"
    shutil.copytree(classify_run, four)
    cfg = load_yaml(four / "config.yaml")
    cfg["model_opts"] = "num_classes=4"
    save_yaml(cfg, four / "config.yaml")
    for which in ("best", "last"):  # a run of a four-class model, both its checkpoints
        save_checkpoint(four / "weights" / f"{which}.pt", create_model("vgg-small", num_classes=4))

    def error(*argv) -> str:
        assert cli("detect", "video", path, "--weights", trained[0], "--track", "--out", work / "refused", *argv) == 2
        return capsys.readouterr().err

    assert "4 outputs, not the detector's 10 classes" in error("--classifier", four)
    assert "is a metric run, not a classify run" in error("--classifier", metric_run)
    assert "is a classify run, not a metric run" in error("--metric", classify_run)
    assert "classify run directory not found" in error("--classifier", work / "nowhere")
    no_index = work / "runs" / "metric" / "no-index"
    shutil.copytree(metric_run, no_index, ignore=shutil.ignore_patterns("index"))
    assert "has no FAISS index" in error("--metric", no_index)
    assert "--vote-weight" in error("--vote-weight", "1.5")
    assert "--min-read-conf 1.5 and --max-not-item 0.5 must lie in [0, 1]" in error("--min-read-conf", "1.5")
    assert "--max-not-item 1.5 must lie in [0, 1]" in error("--max-not-item", "1.5")
    assert error("--iou", "0").strip() == "error: --iou 0.0 must lie in (0, 1]"  # not "--conf None and --iou ..."
    assert error("--conf", "1.5").strip() == "error: --conf 1.5 must lie in [0, 1]"
    assert "reads the ten classes only" in error("--gate", classify_run)  # a gate knows what is not an item
    assert "classify run directory not found" in error("--gate", work / "nowhere")
    # the at-least bounds sit on the options (detect/defaults.py), one line naming the one flag
    for argv, says in ((("--min-track-frames", "0"), "--min-track-frames must be at least 1, got 0"),
                       (("--fill-gaps", "-2"), "--fill-gaps must be at least 0, got -2"),
                       (("--stitch-gap", "-1"), "--stitch-gap must be at least 0, got -1"),
                       (("--crops", "-1"), "--crops must be at least 0, got -1"),
                       (("--stride", "0"), "--stride must be at least 1, got 0"),
                       (("--batch", "0"), "--batch must be at least 1, got 0"),
                       (("--max-frames", "-1"), "--max-frames must be at least 0, got -1")):
        assert error(*argv).strip() == f"error: {says}"
    assert error("--threads", "-1").strip() == "error: --threads must be at least 0, got -1"
    assert not (work / "refused").exists()  # refused before any output
    with pytest.raises(UserError, match="not Fashion-MNIST's ten"):
        load_readers(classify_run, None, {0: "cat", 1: "dog"}, torch.device("cpu"))


def test_video_track_gives_each_track_one_class_in_every_output(trained, clip, metric_run, low_tracker, work):
    from fashionkit.detect.video import format_summary, run_video

    path, gt = clip
    out = work / "tracked"
    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(out), track=True, metric=str(metric_run),
                                  resolve_margin=1.0, gt=str(path.with_suffix(".json")), tracker=low_tracker),
                  progress=False)
    t = s["tracks"]
    assert t["classifier"] == str(trained[0] / "reader")  # auto: the detector's crop reader (made by detect train)
    assert t["metric"] == str(metric_run) and t["count"] == len(t["items"]) > 0
    decisions = {row["track_id"]: row for row in t["items"]}
    assert all(row["classifier_class_id"] is not None for row in t["items"] if row["crops"])
    hard_unsure = [row for row in t["items"] if row["before_resolve_class_id"] in (0, 2, 4, 6) and row["crops"]
                   and row["margin"] < 1]
    assert all(row["resolved"] == (row["resolver_class_id"] is not None) for row in t["items"])
    assert all(row["resolved"] and row["neighbours"] for row in hard_unsure)  # margin 1.0: all of them asked
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == len(gt)
    tracked = [d for ln in lines for d in ln["detections"] if d["track_id"] is not None]
    assert tracked and all(d["track_class_id"] == decisions[d["track_id"]]["class_id"] for d in tracked)
    assert all(d["track_resolved"] == decisions[d["track_id"]]["resolved"] for d in tracked)
    assert all({"class_id", "class_name", "conf", "box", "track_id"} <= set(d) for d in tracked)
    # the per-class summary counts each box under its track's class, as the annotated video labels it
    shown = Counter(d["track_class_name"] for d in tracked)
    assert {name: row["detections"] for name, row in s["items"].items()} == dict(shown)
    assert {name: row["unique_tracks"] for name, row in s["items"].items()} == {
        name: len({d["track_id"] for d in tracked if d["track_class_name"] == name}) for name in shown}
    with (out / "detections.csv").open() as f:
        header = f.readline().strip().split(",")
        assert header[-6:] == ["track_id", "track_class_id", "track_class_name", "track_conf", "track_resolved",
                               "interpolated"]
        assert len(f.readlines()) == sum(len(ln["detections"]) for ln in lines)
    frames, _ = read_video(out / "annotated.mp4")
    assert len(frames) == len(gt)
    g = s["gt"]["tracks"]
    assert g["track"]["flicker"] == 0 and g["per_frame"]["flicker"] >= 0  # one class per track
    assert g["tracks"] == t["count"] and g["track_frames"] == len(tracked)
    # a 2-epoch detector's tracks may never overlap an item: then there is no accuracy to give
    assert (g["track"]["accuracy"] is None) == (g["track"]["matched_tracks"] == 0)
    assert g["track"]["accuracy"] is None or 0 <= g["track"]["accuracy"] <= 1
    assert "precision" in s["gt"]["with_track_classes"]
    assert set(t["seconds"]) == {"first_pass", "decide", "second_pass"}
    text = format_summary(s)
    assert "per-track accuracy" in text and "resolved by kNN" in text


@pytest.fixture(scope="module")
def one_class(work, classify_run, dataset):
    """`detect train --one-class`: 1 epoch, its crop reader 1 epoch."""
    from fashionkit.detect.train import train

    return train({"from": str(classify_run), "data": str(dataset), "imgsz": 160, "epochs": 1, "batch": 8,
                  "one_class": True, "extra": "nbs=8", "runs_dir": str(work / "runs"), "name": "det-one",
                  "reader_epochs": 1})


def test_a_one_class_detector_finds_the_items_and_its_reader_names_them(cli, one_class, clip, low_tracker, work,
                                                                        capsys):
    from ultralytics import YOLO

    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.detect.video import run_video

    run, summary = one_class
    model = YOLO(str(run / summary["best"]))
    assert model.names == {0: "item"} and model.model.model[-1].nc == 1
    assert summary["test"]["mAP50"] == summary["test"]["boxes"]["mAP50"]  # its own class is the boxes alone
    read_classes = set(summary["test"]["read"]["mAP50-95_per_class"])  # scored under the reader's classes, not class 0
    assert read_classes <= set(CLASSES) and len(read_classes) > 1
    assert cli("detect", "eval", run, "--split", "val", "--no-plots", "--out", work / "eval-one") == 0
    val = json.loads((work / "eval-one" / "eval.json").read_text())["val"]
    assert val["mAP50"] == val["boxes"]["mAP50"] and val["read"]["classifier"] == str(run / "reader")

    path, gt = clip
    s = run_video(path, video_cfg(weights=str(run), out=str(work / "one-class-video"), metric="none",
                                  tracker=low_tracker, gt=str(path.with_suffix(".json"))), progress=False)
    t = s["tracks"]
    assert t["classifier"] == str(run / "reader") and t["count"] > 0
    assert all(row["class_name"] in CLASSES and row["classifier_conf"] is not None for row in t["items"])
    assert all(set(row["frame_classes"]) == {"item"} and row["vote_class_id"] is None for row in t["items"])
    lines = [json.loads(line) for line in (work / "one-class-video" / "detections.jsonl").read_text().splitlines()]
    dets = [d for ln in lines for d in ln["detections"]]
    assert len(lines) == len(gt) and dets
    assert all(d["class_name"] == "item" and d["track_class_name"] in CLASSES for d in dets)
    assert sum(row["detections"] for row in s["items"].values()) == len(dets) and "item" not in s["items"]
    assert sum(row.get("unique_tracks", 0) for name, row in s["items"].items() if name != "item") == t["count"]

    # without tracking the reader names each box of each frame
    s = run_video(path, video_cfg(weights=str(run), out=str(work / "one-class-frames"), track=False,
                                  gt=str(path.with_suffix(".json"))), progress=False)
    lines = [json.loads(line) for line in (work / "one-class-frames" / "detections.jsonl").read_text().splitlines()]
    dets = [d for ln in lines for d in ln["detections"]]
    assert s["classifier"] == str(run / "reader") and len(lines) == len(gt) and dets
    assert all(d["class_name"] in CLASSES and "track_id" not in d for d in dets)
    assert s["gt"]["precision"] is not None and "item" not in s["items"]

    for flags in (["--classifier", "none"], ["--classifier", "none", "--no-track"]):
        out = work / f"one-class-refused{len(flags)}"
        assert cli("detect", "video", path, "--weights", run, "--out", out, *flags) == 2
        err = capsys.readouterr().err
        assert "a one-class detector finds items without naming them; pass --classifier auto" in err
        assert "Traceback" not in err and not out.exists()


def test_video_track_labels_the_annotated_video_with_the_track_class(trained, clip, low_tracker, work):
    """The second pass draws the stored detections on their own frames, each in its track's class."""
    from ultralytics.utils.plotting import colors

    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.detect.tracks import draw
    from fashionkit.detect.video import run_video

    names = dict(enumerate(CLASSES))
    blank = np.zeros((120, 160, 3), np.uint8)
    det = {"class_id": 4, "class_name": "Coat", "conf": 0.9, "box": [40.0, 50.0, 100.0, 110.0], "track_id": 3}
    as_bag = draw(blank.copy(), [{**det, "track_class_id": 8, "track_class_name": "Bag", "track_conf": 0.8,
                                  "track_resolved": False}], names)
    assert tuple(as_bag[80, 40]) == colors(8, True)  # the box's left edge, in the track's class colour
    as_coat = draw(blank.copy(), [{**det, "track_class_id": 4, "track_class_name": "Coat", "track_conf": 0.8,
                                   "track_resolved": True}], names)
    assert tuple(as_coat[80, 40]) == colors(4, True) and (as_coat != as_bag).any()

    path, _ = clip
    out = work / "labelled"
    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(out), track=True, classifier="none",
                                  metric="none", max_frames=4, crops=0, tracker=low_tracker), progress=False)
    assert s["tracks"]["classifier"] is None and s["tracks"]["crops_read"] == 0 and s["tracks"]["count"] > 0
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    written, _ = read_video(out / "annotated.mp4")
    source, _ = read_video(path)
    assert len(written) == len(lines) == 4
    for line, frame in zip(lines, written):
        expected = draw(source[line["frame"]].copy(), line["detections"], names)
        # the annotated video went through the mp4v encoder once more: compare loosely
        assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 6


def test_video_track_fills_gaps_and_leaves_out_short_tracks_in_every_output(work):
    """On the bundled detector (a 2-epoch one's tracks last a frame): a 3 s clip (seed 3) where it loses items for
    a few frames and flashes short tracks (the seed is the clip's, chosen for that: with ByteTrack and NMS per
    class, the defaults then, 3 were left out and 10 boxes filled)."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.video import run_video

    path = work / "gappy.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {**CLIP, "seconds": 3.0, "seed": 3}), progress=False)
    bundled = str(bundled_dir("detector"))
    opts = dict(weights=bundled, backend="torch", track=True, classifier="none", metric="none", crops=0,
                save_video=False, conf=0.25)
    out = work / "filled"
    s = run_video(path, video_cfg(**opts, out=str(out), min_track_frames=3, fill_gaps=4), progress=False)
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    own, filled = defaultdict(list), defaultdict(list)
    for ln in lines:
        for d in ln["detections"]:
            if d["track_id"] is not None:
                (filled if d["interpolated"] else own)[d["track_id"]].append(ln["frame"])
    assert own and all(len(frames) >= 3 for frames in own.values())  # no track of fewer than 3 frames is left
    assert filled and set(filled) <= set(own)
    for tid, frames in filled.items():  # inside the track's span, where it had no detection of its own
        assert not set(frames) & set(own[tid]) and min(own[tid]) < min(frames) and max(frames) < max(own[tid])
    t = s["tracks"]
    assert t["filled_boxes"] == sum(map(len, filled.values())) and t["count"] == len(own) and t["dropped_short"]
    assert t["min_track_frames"] == 3 and t["fill_gaps"] == 4
    with (out / "detections.csv").open() as f:
        assert sum(row.rstrip().endswith(",True") for row in f) == t["filled_boxes"]
    # the same run without either: every track the tracker made is there, and nothing is interpolated
    plain = run_video(path, video_cfg(**opts, out=str(work / "unfilled"), fill_gaps=0), progress=False)
    assert plain["tracks"]["count"] == len(own) + t["dropped_short"] and plain["tracks"]["filled_boxes"] == 0
    # the default fills every gap the tracker bridges (30 frames), so at least what gaps of up to 4 gave
    longest = run_video(path, video_cfg(**opts, out=str(work / "default-fill"), min_track_frames=3), progress=False)
    assert longest["tracks"]["fill_gaps"] == 30 and longest["tracks"]["filled_boxes"] >= t["filled_boxes"]
    # --conf none: 0.1 with --track on a video (the tracker extends its tracks with detections under the 0.25 it
    # starts them at), else 0.25; the tracks keep more of the items' frames
    auto = {**opts, "conf": None}
    tracked = run_video(path, video_cfg(**auto, out=str(work / "auto-track")), progress=False)
    per_frame = run_video(path, video_cfg(**{**auto, "track": False}, out=str(work / "auto-frames")), progress=False)
    assert tracked["conf"] == 0.1 and per_frame["conf"] == 0.25

    def boxes(out: str) -> int:
        return sum(len(json.loads(line)["detections"]) for line in (work / out / "detections.jsonl").open())

    assert boxes("auto-track") > boxes("unfilled")


def test_boxes_before_the_tracker_are_kept_only_where_a_track_starts_next():
    """`detect video` keeps the detector's boxes from before the tracker only for the frame before each track's
    first (what `first_boxes` reads) and the latest frame, not for the whole video; the boxes put back are the same
    as with every frame's boxes kept."""
    from fashionkit.detect.tracks import BoxesBefore, TrackCollector, first_boxes

    names = {0: "T-shirt/top", 1: "Trouser"}
    stride, collector, kept = 2, TrackCollector(2, crops=0), BoxesBefore(2)
    every: dict[int, np.ndarray] = {}
    frame = np.zeros((64, 64, 3), np.uint8)
    # track 1 from frame 0 on; track 2 confirmed at frame 10 (its detector box already there at frame 8)
    for batch in ([0, 2, 4], [6, 8, 10], [12, 14, 16]):
        boxes = []
        for f in batch:
            dets = [{"class_id": 0, "class_name": names[0], "conf": 0.9, "box": [4.0, 4.0, 20.0, 20.0],
                     "track_id": 1}]
            raw = [[4, 4, 20, 20, 0.9, 0]]
            if f >= 8:
                raw.append([30, 30, 50, 50, 0.6, 1])
            if f >= 10:
                dets.append({"class_id": 1, "class_name": names[1], "conf": 0.7, "box": [30.0, 31.0, 50.0, 50.0],
                             "track_id": 2})
            collector.add(f, frame, dets)
            boxes.append(np.array(raw, float))
        every.update(zip(batch, boxes))
        kept.add(batch, boxes, collector)
        assert max(kept.boxes) == batch[-1]  # the latest frame waits: a track may start on the next
    assert sorted(kept.boxes) == [8, 16] and len(every) == 9
    put = first_boxes(collector, kept.boxes, stride, names)
    assert put == first_boxes(collector, every, stride, names)
    assert [(f, d["track_id"], d["box"]) for f, ds in put.items() for d in ds] == [(8, 2, [30.0, 30.0, 50.0, 50.0])]


def test_video_track_leaves_out_the_boxes_no_track_follows(work):
    """In a frame where the tracker reports no track, ultralytics hands back the detector's raw boxes without ids; on
    the bundled detector a 3 s clip (seed 2, chosen for that) has such frames. They are no tracked item: left out
    of every output and counted, as short tracks are."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.tracks import format_lines
    from fashionkit.detect.video import run_video

    path = work / "untracked.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {**CLIP, "seconds": 3.0, "seed": 2}), progress=False)
    out = work / "untracked"
    s = run_video(path, video_cfg(weights=str(bundled_dir("detector")), backend="torch", track=True,
                                  classifier="none", metric="none", crops=0, save_video=False, conf=None,
                                  out=str(out)), progress=False)
    left_out = s["tracks"]["dropped_untracked_boxes"]
    dets = [d for line in (out / "detections.jsonl").open() for d in json.loads(line)["detections"]]
    assert left_out > 0 and dets and all(d["track_id"] is not None for d in dets)
    assert sum(row["detections"] for row in s["items"].values()) == len(dets)
    assert any(f"{left_out} boxes left out that no track followed" in line for line in format_lines(s))
    # without tracking every box is kept: those boxes were there
    frames = run_video(path, video_cfg(weights=str(bundled_dir("detector")), backend="torch", track=False,
                                       save_video=False, conf=0.1, out=str(work / "untracked-frames")),
                       progress=False)
    assert sum(row["detections"] for row in frames["items"].values()) >= len(dets) + left_out - s["tracks"][
        "filled_boxes"]


def test_video_track_puts_back_the_box_that_started_each_track(work):
    """BoT-SORT confirms a new track on its second frame and ultralytics reports confirmed tracks only, so each track
    lost the detection that started it: the detector's box there is put back, with the track's id."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.tracks import format_lines
    from fashionkit.detect.video import run_video

    path = work / "firsts.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {**CLIP, "seconds": 3.0, "seed": 3}), progress=False)
    opts = dict(weights=str(bundled_dir("detector")), backend="torch", classifier="none", metric="none", crops=0,
                save_video=False, fill_gaps=0)
    s = run_video(path, video_cfg(**opts, track=True, conf=None, out=str(work / "firsts")), progress=False)
    plain = run_video(path, video_cfg(**opts, track=False, conf=0.1, out=str(work / "firsts-frames")), progress=False)

    def lines(out: str) -> list[list[dict]]:
        return [json.loads(line)["detections"] for line in (work / out / "detections.jsonl").open()]

    detector_boxes = [{tuple(d["box"]) for d in dets} for dets in lines("firsts-frames")]
    first: dict[int, int] = {}
    for f, dets in enumerate(lines("firsts")):
        for d in dets:
            first.setdefault(d["track_id"], f)
    put = s["tracks"]["first_boxes_put_back"]
    assert plain["conf"] == s["conf"] == 0.1 and 0 < put <= sum(f > 0 for f in first.values())
    # each one is the detector's own box in the frame before the tracker reported the track, under the track's id
    starts = [(tid, f) for tid, f in first.items() if f > 0]
    put_back = [d for tid, f in starts for d in lines("firsts")[f] if d["track_id"] == tid
                and tuple(d["box"]) in detector_boxes[f] and not d["interpolated"]]
    assert len(put_back) >= put
    assert any(f"{put} tracks' first boxes put back" in line for line in format_lines(s))


def test_video_leaves_out_tracks_the_reader_names_no_class_in_every_output(work):
    """On the bundled detector and its crop reader: a 3 s clip (seed 6, chosen because one of its tracks is read at
    0.37, under the default 0.45) run with --min-read-conf 0 and with the default. The default leaves out exactly
    the tracks read below 0.45, from the summary and the detections alike, and decides the others as before."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.video import run_video

    path = work / "unread.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {**CLIP, "seconds": 3.0, "seed": 6}), progress=False)
    bundled = str(bundled_dir("detector"))
    # no gate: it too leaves tracks out (test_video_gate_leaves_out_the_tracks_it_calls_not_an_item)
    opts = dict(weights=bundled, backend="torch", track=True, metric="none", save_video=False, gate="none")

    def tracked(out: str) -> dict[int, set[int]]:  # track id -> the track classes its detections carry
        ids = defaultdict(set)
        for line in (work / out / "detections.jsonl").open():
            for d in json.loads(line)["detections"]:
                ids[d["track_id"]].add(d["track_class_id"])
        return ids

    every = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "min_read_conf": 0.0, "out": str(work / "every")}),
                      progress=False)
    unread = {t["track_id"] for t in every["tracks"]["items"]
              if t["classifier_conf"] is not None and t["classifier_conf"] < 0.45}
    kept = tracked("every")
    assert unread and every["tracks"]["dropped_unread"] == 0 and set(kept) >= unread
    s = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "out": str(work / "read")}), progress=False)
    t = s["tracks"]
    assert t["min_read_conf"] == 0.45 and t["dropped_unread"] == len(unread)
    assert {row["track_id"] for row in t["items"]} == {row["track_id"] for row in every["tracks"]["items"]} - unread
    assert tracked("read") == {tid: classes for tid, classes in kept.items() if tid not in unread}


def biased_gate(work: Path, name: str, bias: float) -> Path:
    """A gate made of the bundled reader grown an 11th class, not an item, whose bias makes every crop surely not an
    item (+30) or surely an item (-30)."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.classify.checkpoint import load_run_model, save_checkpoint
    from fashionkit.config import load_yaml, save_yaml
    from fashionkit.detect.reader import with_not_item

    run = work / "runs" / "classify" / name
    if not run.exists():
        shutil.copytree(bundled_dir("detector") / "reader", run)
        model = with_not_item(load_run_model(run)[0])
        with torch.no_grad():
            model.head.bias[-1] = bias
        save_checkpoint(run / "weights" / "best.pt", model)
        cfg = load_yaml(run / "config.yaml")
        save_yaml({**cfg, "model_opts": "num_classes=11"}, run / "config.yaml")
    return run


def test_video_gate_leaves_out_the_tracks_it_calls_not_an_item(work):
    """The bundled detector on a 3 s clip with a gate (`--gate`): the bundled reader grown an 11th class whose bias
    makes every crop surely not an item, or surely an item. The first leaves out every track it read, from the
    summary and the detections; the second changes nothing against no gate."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.scenes import make_video
    from fashionkit.detect.video import format_summary, run_video

    path = work / "gated.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {**CLIP, "seconds": 3.0, "seed": 6}), progress=False)
    bundled = bundled_dir("detector")

    opts = dict(weights=str(bundled), backend="torch", track=True, metric="none", save_video=False, min_read_conf=0.0)
    plain = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "gate": "none", "out": str(work / "no-gate")}),
                      progress=False)
    read = {t["track_id"] for t in plain["tracks"]["items"] if t["crops"]}
    assert read and plain["tracks"]["gate"] is None
    shut = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "gate": str(biased_gate(work, "gate-shut", 30.0)),
                                                   "out": str(work / "gate-shut")}), progress=False)
    t = shut["tracks"]
    assert t["gate"].endswith("gate-shut") and t["dropped_unread"] == len(read) and t["max_not_item"] == 0.5
    assert {row["track_id"] for row in t["items"]} == {row["track_id"] for row in plain["tracks"]["items"]} - read
    left = {d["track_id"] for line in (work / "gate-shut" / "detections.jsonl").open()
            for d in json.loads(line)["detections"]}
    assert not left & read
    assert "or the gate called them not an item" in format_summary(shut)
    open_ = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "gate": str(biased_gate(work, "gate-open", -30.0)),
                                                    "out": str(work / "gate-open")}), progress=False)
    assert all(row["gate_not_item"] < 1e-6 for row in open_["tracks"]["items"] if row["crops"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "gate_not_item"} for r in rows]  # noqa: E731
    assert strip(open_["tracks"]["items"]) == strip(plain["tracks"]["items"]) and open_["tracks"]["dropped_unread"] == 0
    # by default (--gate auto) the bundled detector's own gate is asked, and every read track gets its share
    auto = run_video(path, resolve(VIDEO_OPTIONS, {**opts, "out": str(work / "gate-auto")}), progress=False)
    assert auto["tracks"]["gate"] == str(bundled / "gate") and f", gate {bundled / 'gate'})" in format_summary(auto)
    assert "gate" not in format_summary(plain).split("one class each")[1].split(";")[0]
    assert all(0 <= row["gate_not_item"] <= 1 for row in auto["tracks"]["items"] if row["crops"])


def test_nothing_detected_in_a_photo_points_to_classify_predict(work):
    """`detect video` finds items in a scene; where a photo gives it nothing (a close-up of one item, edge to edge, is
    outside its training), the summary says which command names a photo of one item. Not for a video."""
    from fashionkit.bundled import bundled_dir
    from fashionkit.detect.video import format_summary, run_video

    photo, clip = work / "plain-wall.jpg", work / "plain-wall.mp4"
    cv2.imwrite(str(photo), np.full((240, 320, 3), 128, np.uint8))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    for _ in range(3):
        writer.write(np.full((240, 320, 3), 128, np.uint8))
    writer.release()
    opts = dict(weights=str(bundled_dir("detector")), backend="torch", save_video=False)
    s = run_video(photo, resolve(VIDEO_OPTIONS, {**opts, "out": str(work / "plain-photo")}), progress=False)
    assert not s["items"]
    assert f"nothing detected (the detector finds items in a scene; to name a photo of one item, run `classify " \
           f"predict {photo}`)" in format_summary(s)
    s = run_video(clip, resolve(VIDEO_OPTIONS, {**opts, "out": str(work / "plain-clip")}), progress=False)
    assert not s["items"] and "  nothing detected\n" in format_summary(s) + "\n"


def test_video_track_on_a_folder_of_unrelated_images(trained, dataset, classify_run, work):
    from fashionkit.detect.video import run_video

    folder = work / "unrelated"
    folder.mkdir()
    for src in sorted((dataset / "images" / "test").iterdir())[:3]:
        cv2.imwrite(str(folder / f"{src.stem}.png"), cv2.imread(str(src)))
    s = run_video(folder, video_cfg(weights=str(trained[0]), out=str(work / "unrelated-out"), track=True,
                                    classifier=str(classify_run)), progress=False)
    lines = [json.loads(line) for line in (work / "unrelated-out" / "detections.jsonl").read_text().splitlines()]
    dets = [d for ln in lines for d in ln["detections"]]
    assert dets and sorted(d["track_id"] for d in dets) == list(range(1, len(dets) + 1))  # each its own track
    assert s["tracks"]["count"] == len(dets) and all(row["frames"] == 1 for row in s["tracks"]["items"])
    assert all(d["track_class_id"] is not None for d in dets)
    assert len(list((work / "unrelated-out" / "annotated").iterdir())) == 3


def test_auto_picks_the_detectors_classifier_only_while_it_exists(trained, classify_run, metric_run, work):
    import shutil

    from fashionkit.detect.tracks import auto_runs, choose_runs

    run = trained[0]
    weights = run / "ultralytics" / "weights" / "best.pt"
    # the detector's crop reader (detect train made it), and the indexed metric run made from the classifier the
    # detector was trained from; without the reader, that classifier
    # no gate: detect train makes none (`detect reader --background 2 --role gate` does)
    assert auto_runs(weights) == {"classifier": run / "reader", "metric": metric_run, "gate": None}
    assert auto_runs(weights, reader=False) == {"classifier": classify_run, "metric": metric_run, "gate": None}
    assert choose_runs({"classifier": "auto", "metric": "none"}, run) == (run / "reader", None)
    assert choose_runs({"classifier": "none", "metric": "x"}, run) == (None, Path("x"))
    moved = work / "moved-det"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("ultralytics", "test", "eval", "reader"))
    info = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**info, "classifier_run": str(work / "gone" / "cls")}))
    assert auto_runs(moved) == {"classifier": None, "metric": None, "gate": None}
    assert auto_runs(work / "plain.pt") == {"classifier": None, "metric": None, "gate": None}


# ---- the crop reader --------------------------------------------------------------------------------------------

def test_train_makes_a_crop_reader_that_loads_as_a_classify_run(trained, classify_run, classifier, dataset):
    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.detect.reader import scene_crops

    run, summary = trained
    reader = run / "reader"
    assert summary["reader"]["dir"] == str(reader)
    # the test mAP with classes ignored, and again with the boxes' classes read by the new reader
    assert 0 <= summary["test"]["boxes"]["mAP50"] <= 1 and (run / "test" / "boxes").is_dir()
    assert summary["test"]["read"]["classifier"] == str(reader) and 0 <= summary["test"]["read"]["mAP50"] <= 1
    info = json.loads((reader / "run.json").read_text())
    assert info["stage"] == "classify" and info["classifier_run"] == str(classify_run)
    model, _, _, _ = load_run_model(reader)  # same architecture as its config.yaml says
    assert model.name == classifier.name
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), classifier.state_dict().values()))
    s = json.loads((reader / "summary.json").read_text())
    # every box of the split big enough to read, twice (two jittered copies) for training
    boxes = {split: sum(1 for f in (dataset / "labels" / split).glob("*.txt") for line in f.read_text().splitlines()
                        if min(float(line.split()[3]), float(line.split()[4])) * 160 >= 8)
             for split in ("train", "val", "test")}
    assert s["crops"]["val"] == boxes["val"] and s["crops"]["test"] == boxes["test"]
    assert abs(s["crops"]["train"] - 2 * boxes["train"]) <= 0.1 * boxes["train"]  # jitter may shrink a few below 8 px
    for who in ("classifier", "reader"):
        assert 0 <= s["accuracy_tta"][who]["val"] <= 1
    assert len(s["history"]) == 1 and s["options"]["epochs"] == 1
    items, labels = scene_crops(dataset / "data.yaml", "val")
    assert items.dtype == torch.uint8 and items.shape[1:] == (28, 28) and len(items) == len(labels) == boxes["val"]


def test_scene_crops_are_cut_as_a_tracks_crops_are(dataset):
    from fashionkit.detect.reader import scene_crops
    from fashionkit.detect.tracks import crop_grey, crop_item

    items, labels = scene_crops(dataset / "data.yaml", "test")
    first = sorted((dataset / "images" / "test").iterdir())[0]
    frame = cv2.imread(str(first))
    rows = np.loadtxt(dataset / "labels" / "test" / f"{first.stem}.txt", ndmin=2)
    c, cx, cy, w, h = rows[0]
    box = ((cx - w / 2) * 160, (cy - h / 2) * 160, (cx + w / 2) * 160, (cy + h / 2) * 160)
    assert int(labels[0]) == int(c)
    assert torch.equal(items[0], crop_item(crop_grey(frame, box)))
    jittered, _ = scene_crops(dataset / "data.yaml", "test", copies=2, jitter=0.1, seed=1)
    assert len(jittered) >= 1.8 * len(items) and not torch.equal(jittered[0], jittered[1])
    again, _ = scene_crops(dataset / "data.yaml", "test", copies=2, jitter=0.1, seed=1)
    assert torch.equal(jittered, again)  # seeded


def test_reader_command_and_its_errors(cli, trained, classify_run, dataset, work, capsys, monkeypatch):
    import shutil

    copy = work / "runs" / "detect" / "det-copy"
    shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns("reader", "eval"))
    assert cli("detect", "reader", copy, "--epochs", 2, "--batch-size", 32) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"reader: {copy / 'reader'}") and "test" in out
    s = json.loads((copy / "reader" / "summary.json").read_text())
    assert len(s["history"]) == 2 and s["options"]["batch_size"] == 32
    before = (copy / "reader" / "weights" / "best.pt").read_bytes()
    assert cli("detect", "reader", copy, "--epochs", 2, "--batch-size", 32) == 0  # same seed: the same reader
    capsys.readouterr()
    assert (copy / "reader" / "weights" / "best.pt").read_bytes() != b"" and not (copy / ".reader.tmp").exists()
    reread = torch.load(copy / "reader" / "weights" / "best.pt", weights_only=False)["state_dict"]
    first = torch.load(io.BytesIO(before), weights_only=False)["state_dict"]
    assert all(torch.equal(reread[k], first[k]) for k in first)

    def fails(*argv, says):
        assert cli("detect", "reader", *argv) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err

    fails(classify_run, says="is a classify run, not a detect run")
    fails(copy, "--from", copy, says="is a detect run, not a classify run")
    fails(copy, "--data", work / "nowhere", says="dataset not found")
    fails(copy, "--epochs", 0, says="--epochs must be at least 1")
    fails(copy, "--copies", 0, says="--copies must be at least 1, got 0")
    fails(copy, "--background", -1, says="--background must be at least 0, got -1")
    fails(copy, "--jitter", 0.7, says="--jitter must be a fraction of the box in [0, 0.5), got 0.7")
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "classifier_run": str(work / "gone" / "cls")}))
    fails(copy, says="pass --from RUN")
    empty = work / "empty-scenes"
    shutil.copytree(dataset, empty)
    (empty / "data.yaml").write_text((dataset / "data.yaml").read_text().replace(str(dataset), str(empty)))
    for f in (empty / "labels" / "train").glob("*.txt"):
        f.write_text("")
    fails(copy, "--from", classify_run, "--data", empty, says="no item big enough to read")
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(work / "runs" / "detect"))  # the copy's folder as the bundle
    fails(copy, "--from", classify_run, says="bundled detector, which is never written to")


def test_a_reader_with_background_crops_reads_an_eleventh_class(cli, trained, classify_run, dataset, work, capsys):
    """`detect reader --background 2 --role gate`: RUN/gate, eleven outputs, found by `--gate auto`; the reader of
    RUN is left alone."""
    import shutil

    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.detect.tracks import auto_runs, choose_gate, open_classifier, open_gate

    copy = work / "runs" / "detect" / "det-background"
    shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns("eval"))
    reader_before = snapshot(copy / "reader")
    assert choose_gate({"gate": "auto"}, copy) is None  # no gate yet: none, silently
    assert cli("detect", "reader", copy, "--epochs", 1, "--batch-size", 32, "--background", 2, "--role", "gate") == 0
    out = capsys.readouterr().out
    assert f"reader: {copy / 'gate'} " in out and "background crops named not an item" in out
    assert snapshot(copy / "reader") == reader_before
    model, _, cfg, _ = load_run_model(copy / "gate")  # its config.yaml says eleven classes
    assert model.num_classes == 11 and "num_classes=11" in cfg["model_opts"]
    assert open_classifier(copy / "gate", torch.device("cpu"))[0].num_classes == 11  # `detect video` takes it
    # `detect video --gate auto` asks it; --classifier auto still reads with the reader
    assert auto_runs(copy)["gate"] == copy / "gate" and auto_runs(copy)["classifier"] == copy / "reader"
    assert choose_gate({"gate": "auto"}, copy) == copy / "gate" and choose_gate({"gate": "none"}, copy) is None
    assert open_gate(choose_gate({"gate": "auto"}, copy), torch.device("cpu"))[1] == copy / "gate"
    s = json.loads((copy / "gate" / "summary.json").read_text())
    scenes = {split: len(list((dataset / "images" / split).iterdir())) for split in ("train", "val", "test")}
    assert s["options"]["background"] == 2 and s["options"]["role"] == "gate"
    assert all(0 < s["background"]["crops"][split] <= 2 * scenes[split] for split in scenes)
    assert all(0 <= s["background"]["named_not_item_tta"][split] <= 1 for split in ("val", "test"))
    plain = json.loads((trained[0] / "reader" / "summary.json").read_text())
    assert s["crops"]["train"] == plain["crops"]["train"] + s["background"]["crops"]["train"]
    assert cli("detect", "reader", copy, "--background", -1) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --background must be at least 0, got -1"
    gate_before = snapshot(copy / "gate")
    for bad, says in ((["--role", "gate"], "needs background crops; add --background 2"),
                      (["--background", 2, "--role", "gates"], "'gates' is not one of reader, gate")):
        assert cli("detect", "reader", copy, *bad) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(copy / "gate") == gate_before


def test_track_bench_runs_every_variant_and_writes_its_figures(trained, clip, metric_run, low_tracker, work,
                                                               monkeypatch):
    import runpy

    path, _ = clip
    out = work / "track-bench.json"
    monkeypatch.setattr("sys.argv", ["track_bench.py", "--weights", str(trained[0]), "--video", str(path),
                                     "--metric", str(metric_run), "--conf", "0.001", "--tracker", low_tracker,
                                     "--min-track-frames", "1", "--work", str(work / "track-bench"),
                                     "--out", str(out)])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "track_bench.py"), run_name="__main__")
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["per-frame", "track-votes", "track-classifier", "track-reader", "track-knn"]
    assert rows["track-reader"]["classifier"] == str(trained[0] / "reader") == rows["track-knn"]["classifier"]
    assert all(r["fps"] > 0 and r["cpu_ms_per_frame"] > 0 for r in rows.values())
    assert "flicker_per_frame" not in rows["per-frame"] and rows["track-votes"]["classifier"] is None
    assert rows["track-knn"]["metric"] == str(metric_run) and rows["track-votes"]["flicker_track"] == 0
    assert "cpus)" in result["machine"]["cpu"] and "| track-knn |" in result["markdown"]


def test_track_bench_runs_the_variants_asked_and_a_one_class_detectors_with_a_classifier(one_class, clip, low_tracker,
                                                                                         work, monkeypatch):
    import runpy

    path, _ = clip
    out = work / "track-bench-one-class.json"
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "track_bench.py")
    argv = ["track_bench.py", "--weights", str(one_class[0]), "--video", str(path), "--conf", "0.001", "--tracker",
            low_tracker, "--min-track-frames", "1", "--min-read-conf", "0", "--work", str(work / "track-bench-one"),
            "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--variants", "track-votes"])
    with pytest.raises(SystemExit, match="no variant track-votes here; choose from per-frame, track-classifier"):
        runpy.run_path(script, run_name="__main__")  # a one-class detector has no votes on which class
    monkeypatch.setattr("sys.argv", [*argv, "--variants", "track-reader"])
    runpy.run_path(script, run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["track-reader"] and rows[0]["classifier"] == str(one_class[0] / "reader")
    assert rows[0]["tracks"] > 0 and rows[0]["precision_track_classes"] is not None


# ---- several GPUs (ultralytics DDP) ---------------------------------------------------------------------------

def test_ddp_workers_start_from_the_classifier_trunk(classify_run, classifier, tmp_path):
    """With --device 0,1 ultralytics starts worker processes that rebuild the trainer from its arguments:
    model=RUN/initial.pt, loaded by ultralytics' own checkpoint loader and our trainer's get_model. The model a
    worker gets must be the prepared one: every backbone tensor the classifier's, BatchNorm eps included."""
    from ultralytics.nn.tasks import load_checkpoint

    from fashionkit.detect import train as detect_train
    from fashionkit.detect.model import model_source

    source = model_source(str(classify_run), nc=10, stem=4)
    path = detect_train.save_initial_model(tmp_path, source.model)
    assert path == tmp_path / "initial.pt"
    weights, _ = load_checkpoint(path)  # what BaseTrainer.setup_model does with a .pt model argument
    trainer_class = detect_train.TransferTrainer  # what a worker imports by name
    assert trainer_class is detect_train.transfer_trainer_class() and trainer_class.__name__ == "TransferTrainer"
    from ultralytics.cfg import get_cfg

    worker = trainer_class.__new__(trainer_class)  # get_model needs only its args and the dataset's classes
    worker.args = get_cfg()
    worker.data = {"nc": 10, "channels": 3, "names": dict(source.model.names)}
    model = worker.get_model(cfg=weights.yaml, weights=weights, verbose=False)
    prepared = source.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, prepared[name]), name
    convs = [layer for layer in trunk_layers(classifier) if hasattr(layer, "conv")]
    for i, (index, src) in enumerate(zip(source.yaml[YAML_KEY]["transfer"], convs)):
        conv, bn = conv_bn(model, index)
        if i:
            assert torch.equal(conv.weight, src.conv.weight)
        assert torch.equal(bn.weight, src.bn.weight) and bn.eps == src.bn.eps


def test_several_gpus_on_a_cpu_machine_is_one_clear_line(cli, tmp_path, capsys):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has several GPUs")
    runs = tmp_path / "runs"
    assert cli("detect", "train", "--from", "none", "--data", tmp_path / "nowhere", "--device", "0,1",
               "--runs-dir", runs) == 2
    err = capsys.readouterr().err
    assert "--device 0,1 trains on 2 GPUs (ultralytics DDP), but this machine has" in err
    assert "use --device cpu" in err and len(err.strip().splitlines()) == 1
    assert not (runs / "detect").exists()  # refused before a run directory is made
