"""The detector: backbone transfer from a classify run, `detect train`, `detect video` and `detect eval`, on real
Fashion-MNIST items (tiny classify run, 16 scenes at 160 px, 1-2 epochs: seconds on a 2-core CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
                  "freeze_epochs": 1, "extra": "save_period=1,nbs=8", "runs_dir": str(work / "runs"), "name": "det"})


@pytest.fixture(scope="module")
def clip(work):
    from fashionkit.detect.scenes import make_video

    path = work / "clip.mp4"
    frames = make_video(path, resolve(MAKE_VIDEO_OPTIONS, CLIP), progress=False)
    return path, frames


def video_cfg(**overrides):
    return resolve(VIDEO_OPTIONS, {"conf": 0.001, **overrides})


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
    assert cli("detect", "train", "--from", trained[0], "--data", dataset, "--runs-dir", work / "runs") == 2
    assert "is a detect run, not a classify run" in capsys.readouterr().err
    ckpt = classify_run / "weights" / "best.pt"
    assert cli("detect", "train", "--from", ckpt, "--data", dataset, "--runs-dir", work / "runs") == 2
    assert "pass the classify run directory" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", work / "nowhere", "--runs-dir", work / "runs") == 2
    assert "dataset not found" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", dataset, "--imgsz", 100) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert cli("detect", "train", "--from", "none", "--data", dataset, "--warmup-epochs", -1) == 2
    assert "cannot be negative" in capsys.readouterr().err
    assert not (work / "runs" / "detect" / "train").exists()  # no run directory for a failed start


# ---- detect video ------------------------------------------------------------------------------------------

def test_video_writes_annotated_video_jsonl_csv_summary(trained, clip, work):
    from fashionkit.detect.video import run_video

    path, gt = clip
    out = work / "video"
    s = run_video(path, video_cfg(weights=str(trained[0]), out=str(out), stride=2, batch=4), progress=False)
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
    from fashionkit.detect.video import load_detector, run_video

    path, _ = clip
    best = trained[0] / "ultralytics" / "weights" / "best.pt"
    onnx = best.with_suffix(".onnx")
    onnx.unlink(missing_ok=True)

    def frames(backend: str, name: str, weights=trained[0]) -> list[list[dict]]:
        s = run_video(path, video_cfg(weights=str(weights), out=str(work / name), backend=backend, max_frames=6,
                                      save_video=False), progress=False)
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
    assert "mAP50" in capsys.readouterr().out


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
