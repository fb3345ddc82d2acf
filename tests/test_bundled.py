"""The bundled models: the rebuild script's packages and cards, the product's commands with no run given (they use
the bundled models and say so in one line), named runs winning, and missing or corrupted bundled files.

The bundled models here are the tiny real stand-ins of the ``tiny_bundle`` fixture (benchmarks/build_models.py
--tiny); the package's own models are checked by the last test when they exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
import torch
from conftest import snapshot

from fashionkit import bundled as bundled_mod

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory, test_set):
    """A test item as a user's photo: dark item on a light background, 3x larger, colour."""
    images, labels = test_set
    path = tmp_path_factory.mktemp("photo") / "trouser.png"
    item = cv2.resize(255 - images[2].numpy(), (84, 84), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(item, cv2.COLOR_GRAY2BGR))
    assert int(labels[2]) == 1  # a trouser
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from fashionkit.config import resolve
    from fashionkit.detect.cli import MAKE_VIDEO_OPTIONS
    from fashionkit.detect.scenes import make_video

    path = tmp_path_factory.mktemp("clip") / "input.mp4"
    make_video(path, resolve(MAKE_VIDEO_OPTIONS, {"seconds": 0.8, "fps": 10.0, "width": 320, "height": 240,
                                                  "items": 3, "min_scale": 1.5, "max_scale": 3.0}), progress=False)
    return path


@pytest.fixture
def own_copy(bundled, tmp_path, monkeypatch):
    """A copy of the tiny bundle that a test may damage."""
    copy = tmp_path / "models"
    shutil.copytree(bundled, copy, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(copy))
    return copy


# ---- the rebuild script ------------------------------------------------------------------------------------------

def test_build_script_packages_three_slim_runs_with_cards_from_its_measurements(tiny_bundle):
    out, result = tiny_bundle
    if any(s["reused"] for s in result["steps"]):
        pytest.skip("FASHIONKIT_TEST_TINY_BUNDLE names a bundle packaged from reused runs: no step was timed")
    steps = [s["step"] for s in result["steps"]]
    assert steps == ["classify train", "metric train", "metric index", "metric resolve", "detect make-data",
                     "detect make-data more", "detect train", "detect train more", "detect train more",
                     "detect train more", "detect reader gate", "onnx export"]
    assert all(isinstance(s["wall_seconds"], float) and s["wall_seconds"] > 0 for s in result["steps"])
    runs = Path(result["runs"])
    for kind, stage in (("classifier", "classify"), ("metric", "metric"), ("detector", "detect")):
        card = json.loads((out / kind / "card.json").read_text())
        assert card["machine"]["cpu"] and card["date"] and card["seed"] == 0
        assert (out / kind / "card.md").read_text().startswith(f"# Bundled {kind}: {card['headline']}")
        # the card's figures are the run's own
        summary = json.loads((runs / stage / f"bundled-{kind}" / "summary.json").read_text())
        if kind == "classifier":
            assert card["headline"] == f"test accuracy {summary['test_acc']:.4f}"
            assert card["commands"][0]["command"].endswith(
                "classify train --name bundled-classifier --model vgg-small --epochs 25 --augment flip-rotate "
                "--resize-from 0 --no-tta --label-smoothing 0.1 --model-opts width=0.25 --subset 500 --epochs 1 "
                "--lr 0.02")
        elif kind == "detector":
            reader = summary["reader"]["accuracy_tta"]  # detect train made its crop reader, which ships with it
            assert card["headline"] == (f"test mAP50 {summary['test']['mAP50']:.3f}; crop reader: test crops named "
                                        f"right {reader['classifier']['test']:.3f} -> {reader['reader']['test']:.3f}")
            assert card["metrics"]["reader_accuracy_tta"] == reader
            ckpt = torch.load(out / kind / "reader" / "weights" / "best.pt", map_location="cpu", weights_only=False)
            assert "state_dict" in ckpt and "reader" not in ckpt  # slimmed like the classifier's
            assert json.loads((out / kind / "reader" / "run.json").read_text())["command"] == "detect train"
            assert [c["step"] for c in card["commands"]] == ["classify train", "detect make-data",
                                                             "detect make-data more", "detect train",
                                                             "detect train more", "detect train more",
                                                             "detect train more", "detect reader gate",
                                                             "onnx export"]
            # the gate: the ten classes and not an item, learned on the last hour's scenes from the classifier
            gate = card["commands"][7]["command"]
            assert gate.endswith(f"detect reader {runs / 'detect' / 'bundled-detector'} --data "
                                 f"{runs / 'detect' / 'scenes-9000-data'} --from "
                                 f"{runs / 'classify' / 'bundled-classifier'} --background 2 --role gate --epochs 1")
            made = json.loads((runs / "detect" / "bundled-detector" / "gate" / "summary.json").read_text())
            assert card["metrics"]["gate_accuracy_tta"] == {"items": made["accuracy_tta"]["reader"],
                                                           "background": made["background"]["named_not_item_tta"]}
            ckpt = torch.load(out / kind / "gate" / "weights" / "best.pt", map_location="cpu", weights_only=False)
            assert "state_dict" in ckpt and "reader" not in ckpt
            assert "num_classes=11" in (out / kind / "gate" / "config.yaml").read_text()
            # each further hour starts from the hour before's detector; the last trains on the second dataset, of
            # twice the training scenes (tiny; three times in the real recipe) and the same validation and test ones
            more_data, first, second, third, fourth = (card["commands"][i]["command"] for i in (2, 3, 4, 5, 6))
            assert f"--out {runs / 'detect' / 'scenes-9000-data'} --train 32 " in more_data
            assert "--name bundled-detector-start" in first and "--from" in first
            assert f"--from {runs / 'detect' / 'bundled-detector-start'} " in second
            assert second.endswith("--name bundled-detector-more1 --imgsz 160 --epochs 1 --batch 8 --reader-epochs 1")
            assert f"--from {runs / 'detect' / 'bundled-detector-more1'} " in third
            assert f"--data {runs / 'detect' / 'bundled-data'} " in third and "--name bundled-detector-more2 " in third
            assert f"--from {runs / 'detect' / 'bundled-detector-more2'} " in fourth
            assert f"--data {runs / 'detect' / 'scenes-9000-data'} " in fourth and "--name bundled-detector " in fourth
            assert len(list((runs / "detect" / "scenes-9000-data" / "images" / "train").iterdir())) == 32
            for split in ("val", "test"):  # the same held-out scenes as the first dataset's
                first_split = runs / "detect" / "bundled-data" / "images" / split
                assert {p.name: p.read_bytes() for p in first_split.iterdir()} == {
                    p.name: p.read_bytes() for p in (runs / "detect" / "scenes-9000-data" / "images" / split).iterdir()}
            assert summary["source"] == "detector"
        else:
            resolved = json.loads((runs / "metric" / "bundled-metric" / "resolve.json").read_text())
            assert f"{resolved['test']['resolved']['hard_accuracy']:.4f} with the resolver" in card["headline"]
        # every file listed with its size and hash, nothing unlisted, nothing to resume from
        files = {str(p.relative_to(out / kind)) for p in (out / kind).rglob("*") if p.is_file()}
        assert files - set(card["files"]) == {"card.json", "card.md"}
        assert not any("last.pt" in f for f in files)
    for kind in ("classifier", "metric"):
        ckpt = torch.load(out / kind / "weights" / "best.pt", map_location="cpu", weights_only=False)
        assert "optimizer" not in ckpt and "scheduler" not in ckpt
    # the ONNX export stays out of the package (13 MB for the real detector): detect video makes it in the user's cache
    assert not (out / "detector" / "ultralytics" / "weights" / "best.onnx").exists()
    assert set(result["messages"]) == {"classifier", "metric", "detector"}


def test_build_script_only_detector_repackages_it_from_the_finished_runs_and_leaves_the_others(tiny_bundle, cli,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    from conftest import load_script

    src, result = tiny_bundle
    out = tmp_path / "models"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("runs"))
    before = {kind: (out / kind / "card.json").read_text() for kind in ("classifier", "metric", "detector")}
    build_models = load_script("benchmarks/build_models.py")
    # the script sets the runs root for its commands; monkeypatch puts the test session's back afterwards
    monkeypatch.setenv("FASHIONKIT_RUNS", result["runs"])
    # a crop reader made by hand after the detector (as for a detector trained before readers existed)
    det = Path(result["runs"]) / "detect" / "bundled-detector"
    assert cli("detect", "reader", det, "--epochs", 1) == 0
    again = build_models.main(["--tiny", "--out", str(out), "--runs-dir", result["runs"], "--reuse", "--only",
                               "detector", "--note", "trained under an AVX2 cap", "--results",
                               str(tmp_path / "build.json")])
    # only the detector's steps, every one reused (nothing retrained), and only its card rewritten
    assert [s["step"] for s in again["steps"]] == ["classify train", "detect make-data", "detect make-data more",
                                                   "detect train", "detect train more", "detect train more",
                                                   "detect train more", "detect reader gate", "detect reader",
                                                   "onnx export"]
    assert again["steps"][8]["command"].endswith("--epochs 1") and again["steps"][8]["recorded_seconds"] > 0
    assert all(s["reused"] for s in again["steps"][:8]) and set(again["headlines"]) == {"detector"}
    assert (out / "classifier" / "card.json").read_text() == before["classifier"]
    assert (out / "metric" / "card.json").read_text() == before["metric"]
    card = json.loads((out / "detector" / "card.json").read_text())
    assert card["note"] == "trained under an AVX2 cap" and card["date"] >= json.loads(before["detector"])["date"]
    assert "- note: trained under an AVX2 cap" in (out / "detector" / "card.md").read_text()
    with pytest.raises(SystemExit, match="--only 'detectors'"):
        build_models.main(["--tiny", "--out", str(out), "--only", "detectors"])


def test_build_script_extend_packages_a_detector_trained_further_from_the_bundled_one(tiny_bundle, cli, tmp_path,
                                                                                       monkeypatch):
    """--extend: a detector trained on from the bundled one is packaged without the runs of the earlier hours; its
    card keeps the bundled card's commands, adds the new run's own, and ships the bundled crop reader."""
    from conftest import load_script

    src, result = tiny_bundle
    out = tmp_path / "models"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("runs"))
    before = json.loads((out / "detector" / "card.json").read_text())
    before["note"] = "four hours"  # the bundled card's note is carried over, after the new one
    (out / "detector" / "card.json").write_text(json.dumps(before))
    monkeypatch.setenv("FASHIONKIT_RUNS", str(tmp_path / "runs"))
    data = Path(result["runs"]) / "detect" / "bundled-data"
    assert cli("detect", "train", "--from", out / "detector", "--data", data, "--imgsz", 160, "--epochs", 1,
               "--batch", 8, "--reader-epochs", 0, "--name", "fifth") == 0
    run = tmp_path / "runs" / "detect" / "fifth"
    assert not (run / "reader").exists()
    build_models = load_script("benchmarks/build_models.py")
    # a copy of the bundle (a trial --out) counts as the detector the run was trained from: the same card
    trial = tmp_path / "trial"
    shutil.copytree(out, trial)
    build_models.main(["--out", str(trial), "--extend", str(run), "--results", str(tmp_path / "trial.json")])
    assert json.loads((trial / "detector" / "card.json").read_text())["source_run"] == str(run.resolve())
    made = build_models.main(["--out", str(out), "--extend", str(run), "--note", "one more epoch",
                              "--results", str(tmp_path / "build.json")])
    card = json.loads((out / "detector" / "card.json").read_text())
    assert set(made["headlines"]) == {"detector"} and card["source_run"] == str(run.resolve())
    assert card["note"] == "one more epoch; the card before this run: four hours"
    # the bundled card's commands (less its export), then the new run's, rebuilt from its config.yaml
    kept = [c for c in before["commands"] if c["step"] != "onnx export"]
    assert card["commands"][:len(kept)] == kept
    step = card["commands"][len(kept)]
    assert step["command"] == (f"FASHIONKIT_RUNS={tmp_path / 'runs'} detect train --from {out / 'detector'} "
                               f"--data {data} --imgsz 160 --epochs 1 --batch 8 --reader-epochs 0 --name fifth"
                               .replace("--imgsz 160 --epochs 1", "--epochs 1 --imgsz 160"))
    assert step["recorded_seconds"] > 0 and before["headline"] in step["from"] and "crop reader" in step["reader"]
    assert [c["step"] for c in card["commands"][len(kept) + 1:]] == ["onnx export"]
    # the run's own weights and test figures; the bundled crop reader carried over
    summary = json.loads((run / "summary.json").read_text())
    assert card["metrics"]["test"] == summary["test"]
    assert card["files"]["ultralytics/weights/best.pt"]["sha256"] != before["files"]["ultralytics/weights/best.pt"][
        "sha256"]
    assert card["files"]["reader/summary.json"] == before["files"]["reader/summary.json"]
    assert "reader_accuracy_tta" in card["metrics"] and "from: the bundled detector then" in (
        out / "detector" / "card.md").read_text()
    # refused: the same run again (it is the bundled one now), a run not trained from the bundled detector, and
    # --extend with the other models
    with pytest.raises(SystemExit, match="trained --from .*not from the bundled detector"):
        build_models.main(["--out", str(out), "--extend", str(Path(result["runs"]) / "detect" /
                                                                "bundled-detector-start")])
    with pytest.raises(SystemExit, match="bundled detector already"):
        build_models.main(["--out", str(out), "--extend", str(run)])
    with pytest.raises(SystemExit, match="--extend packages a detector only"):
        build_models.main(["--out", str(out), "--extend", str(run), "--only", "classifier,detector"])
    with pytest.raises(SystemExit, match="not a finished detect run"):
        build_models.main(["--out", str(out), "--extend", str(tmp_path)])


def test_build_script_add_gate_puts_a_gate_made_on_a_copy_into_the_bundled_detector(tiny_bundle, cli, tmp_path,
                                                                                     monkeypatch):
    """--add-gate: a gate made on a copy of the bundled detector goes into it, its step on the card before the
    export; the rest of the bundled detector and the other models stay as they were."""
    from conftest import load_script

    from fashionkit.detect.tracks import auto_runs

    src, result = tiny_bundle
    out = tmp_path / "models"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("runs"))
    # a bundled detector of the time before gates: no gate/, none on its card
    card = json.loads((out / "detector" / "card.json").read_text())
    shutil.rmtree(out / "detector" / "gate")
    card["commands"] = [c for c in card["commands"] if c["step"] != "detect reader gate"]
    card["files"] = {rel: meta for rel, meta in card["files"].items() if not rel.startswith("gate/")}
    del card["metrics"]["gate_accuracy_tta"]
    (out / "detector" / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(out))
    monkeypatch.setenv("FASHIONKIT_RUNS", str(tmp_path / "runs"))
    weights = out / "detector" / "ultralytics" / "weights" / "best.pt"
    assert auto_runs(weights)["gate"] is None
    copy = tmp_path / "runs" / "detect" / "mine"
    shutil.copytree(out / "detector", copy)
    build_models = load_script("benchmarks/build_models.py")
    with pytest.raises(SystemExit, match="no finished gate"):
        build_models.main(["--out", str(out), "--add-gate", str(copy)])
    data = Path(result["runs"]) / "detect" / "bundled-data"
    assert cli("detect", "reader", copy, "--data", data, "--from", out / "classifier", "--background", 2, "--role",
               "gate", "--epochs", 1) == 0
    other = tmp_path / "runs" / "detect" / "other"  # a gate made on another detector
    shutil.copytree(copy, other)
    with (other / "ultralytics" / "weights" / "best.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SystemExit, match="is not the bundled one"):
        build_models.main(["--out", str(out), "--add-gate", str(other)])
    with pytest.raises(SystemExit, match="changes the bundled detector alone"):
        build_models.main(["--out", str(out), "--add-gate", str(copy), "--only", "detector"])
    others = {kind: snapshot(out / kind) for kind in ("classifier", "metric")}
    assert auto_runs(weights)["gate"] is None  # nothing refused wrote anything
    made = build_models.main(["--out", str(out), "--add-gate", str(copy), "--results", str(tmp_path / "gate.json")])
    after = json.loads((out / "detector" / "card.json").read_text())
    kept = [c for c in card["commands"] if c["step"] != "onnx export"]
    assert after["commands"][:len(kept)] == kept and [c["step"] for c in after["commands"][len(kept):]] == [
        "detect reader gate", "onnx export"]
    step = after["commands"][len(kept)]
    assert step["command"].startswith(f"detect reader {copy} --data {data}")
    assert step["command"].endswith(f"--from {out / 'classifier'} --epochs 1 --background 2 --role gate")
    assert step["recorded_seconds"] > 0 and step["reused"] and str(copy) in step["from"] and made["step"] == step
    gate = json.loads((copy / "gate" / "summary.json").read_text())
    assert after["metrics"]["gate_accuracy_tta"] == {"items": gate["accuracy_tta"]["reader"],
                                                     "background": gate["background"]["named_not_item_tta"]}
    # the gate's files added, every other file of the bundled detector the same
    assert {rel: meta for rel, meta in after["files"].items() if not rel.startswith("gate/")} == card["files"]
    assert {rel for rel in after["files"] if rel.startswith("gate/")} == {
        "gate/config.yaml", "gate/run.json", "gate/summary.json", "gate/weights/best.pt"}
    assert bundled_mod.bundled_run("detector") and auto_runs(weights)["gate"] == out / "detector" / "gate"
    assert "--role gate" in (out / "detector" / "card.md").read_text()
    assert {kind: snapshot(out / kind) for kind in ("classifier", "metric")} == others


def test_build_script_recipe_gives_each_further_hour_its_scenes(tmp_path):
    from conftest import load_script

    build_models = load_script("benchmarks/build_models.py")
    steps = build_models.recipe(tmp_path, 60, False, [60, 60, 60, 45], [0, 0, 9000, 18000])
    made = [s.argv for s in steps if s.key == "detect make-data more"]
    assert [(a[a.index("--out") + 1], a[a.index("--train") + 1]) for a in made] == [
        (str(tmp_path / "detect" / "scenes-9000-data"), "9000"), (str(tmp_path / "detect" / "scenes-18000-data"),
                                                                  "18000")]
    hours = [s.argv for s in steps if s.key == "detect train more"]
    assert [Path(a[a.index("--data") + 1]).name for a in hours] == ["bundled-data", "bundled-data",
                                                                      "scenes-9000-data", "scenes-18000-data"]
    assert [a[a.index("--minutes") + 1] for a in hours] == ["60", "60", "60", "45"]
    assert [Path(a[a.index("--from") + 1]).name for a in hours] == [
        "bundled-detector-start", "bundled-detector-more1", "bundled-detector-more2", "bundled-detector-more3"]
    assert hours[-1][hours[-1].index("--name") + 1] == "bundled-detector"
    # fewer hours than the default counts: the last counts go to the last hours
    assert build_models.default_scenes(2) == build_models.MORE_SCENES[-2:]
    assert build_models.default_scenes(len(build_models.MORE_SCENES) + 1) == [0, *build_models.MORE_SCENES]
    for bad in ("0,9000", "0,0,lots", "0,0,-1"):
        with pytest.raises(SystemExit, match="--detector-more-scenes .*give 3 whole numbers"):
            build_models.main(["--runs-dir", str(tmp_path), "--detector-more-minutes", "60,60,60",
                               "--detector-more-scenes", bad, "--out", str(tmp_path / "models")])
    assert not (tmp_path / "detect").exists()  # refused before any step ran


def test_build_script_tiny_refuses_the_package_models():
    from conftest import load_script

    build_models = load_script("benchmarks/build_models.py")
    with pytest.raises(SystemExit, match="never writes over the bundled models"):
        build_models.main(["--tiny", "--out", str(ROOT / "fashionkit" / "models")])


# ---- the used-by commands with no run ------------------------------------------------------------------------

def test_classify_predict_without_a_run_uses_the_bundled_classifier(bundled, cli, capsys, photo):
    before = snapshot(bundled)
    assert cli("classify", "predict", photo, "--json") == 0
    out, err = capsys.readouterr()
    card = json.loads((bundled / "classifier" / "card.json").read_text())
    assert err.strip().splitlines() == [f"using the bundled classifier: {card['headline']}; pass a run "
                                        f"(runs/classify/<run>) for your own"]
    result = json.loads(out)  # stdout stays clean JSON
    assert result[0]["image"] == str(photo) and len(result[0]["predictions"]) == 3
    assert snapshot(bundled) == before


def test_classify_predict_a_named_run_wins(bundled, cli, capsys, photo, tiny_bundle):
    mine = Path(tiny_bundle[1]["runs"]) / "classify" / "bundled-classifier"
    for argv in ([mine, photo], ["--run", mine, photo]):
        assert cli("classify", "predict", *argv) == 0
        out, err = capsys.readouterr()
        assert "bundled" not in err and str(photo) in out
    assert cli("classify", "predict", mine) == 2  # a run and no image
    assert "no image given" in capsys.readouterr().err


def test_classify_eval_and_inspect_of_the_bundled_classifier_write_under_the_runs_root(bundled, runs_dir, cli,
                                                                                        capsys):
    before = snapshot(bundled)
    assert cli("classify", "eval", bundled / "classifier", "--split", "val", "--top-errors", "2") == 0
    assert cli("classify", "inspect", bundled / "classifier", "--index", "0", "--layers", "1") == 0
    home = runs_dir / "bundled" / "classifier"
    assert json.loads((home / "eval" / "val" / "eval.json").read_text())["run"] == str(bundled / "classifier")
    assert (home / "inspect" / "filters.png").is_file()
    assert f"wrote {home / 'eval' / 'val' / 'eval.json'}" in capsys.readouterr().out
    assert snapshot(bundled) == before  # the installed package is never written to


def test_metric_lookup_without_a_run_uses_the_bundled_embedding(bundled, runs_dir, cli, capsys, photo):
    before = snapshot(bundled)
    assert cli("metric", "lookup", photo, "-k", "4", "--json") == 0
    out, err = capsys.readouterr()
    assert err.startswith("using the bundled embedding: test P@1 ")
    result = json.loads(out)
    assert len(result["neighbours"]) == 4 and result["run"] == str(bundled / "metric")
    strip = runs_dir / "bundled" / "metric" / "lookups" / "trouser.png"
    assert result["png"] == str(strip) and strip.is_file()  # under the runs root, never inside the package
    assert cli("metric", "lookup", "--test-index", "5", "-k", "3") == 0
    assert "test item 5" in capsys.readouterr().out
    assert snapshot(bundled) == before


def test_metric_lookup_a_named_run_wins(bundled, cli, capsys, photo, tiny_bundle):
    mine = Path(tiny_bundle[1]["runs"]) / "metric" / "bundled-metric"
    assert cli("metric", "lookup", mine, photo, "-k", "2", "--out", Path(tiny_bundle[1]["runs"]) / "strip.png") == 0
    out, err = capsys.readouterr()
    assert "bundled" not in err and str(photo) in out
    assert cli("metric", "lookup", mine, photo, photo) == 2
    assert "too many arguments" in capsys.readouterr().err


def test_metric_resolve_without_a_run_resolves_with_the_bundled_models(bundled, runs_dir, cli, capsys):
    before = snapshot(bundled)
    assert cli("metric", "resolve", "-k", "5") == 0
    out, err = capsys.readouterr()
    assert err.startswith("using the bundled embedding") and "using the bundled classifier" in err
    result = json.loads((runs_dir / "bundled" / "metric" / "resolve.json").read_text())
    assert result["metric_run"] == str(bundled / "metric") and result["classifier"] == str(bundled / "classifier")
    assert "threshold" in out
    assert snapshot(bundled) == before


TINY_METRIC = ["--epochs", "1", "--subset", "600", "--batch-size", "64", "--m-per-class", "16", "--steps-per-epoch",
               "2", "--dim", "16", "--head-hidden", "0", "--no-eval"]


def test_metric_train_without_from_builds_on_the_bundled_classifier_then_on_the_newest_run(
        bundled, runs_dir, cli, capsys, tiny_bundle):
    import yaml

    assert cli("metric", "train", "--hard-classes", "0,2,4,6", "--name", "a", *TINY_METRIC) == 0
    err = capsys.readouterr().err
    assert "building on the bundled classifier (test accuracy" in err and "--from none" in err
    cfg = yaml.safe_load((runs_dir / "metric" / "a" / "config.yaml").read_text())
    assert Path(cfg["from"]) == bundled / "classifier"

    mine = runs_dir / "classify" / "mine"  # a finished classify run of the user's: it wins over the bundled one
    shutil.copytree(Path(tiny_bundle[1]["runs"]) / "classify" / "bundled-classifier", mine)
    assert cli("metric", "train", "--hard-classes", "0,2,4,6", "--name", "b", *TINY_METRIC) == 0
    assert f"building on the newest classify run {mine}" in capsys.readouterr().err
    assert Path(yaml.safe_load((runs_dir / "metric" / "b" / "config.yaml").read_text())["from"]) == mine


def test_metric_train_without_from_says_a_mistake_in_one_line_before_choosing_what_to_build_on(bundled, runs_dir,
                                                                                               cli, capsys):
    for argv, message in ((["--hard-classes", "0,2,11"], "unknown class '11'"),
                          (["--hard-classes", "0"], "at least 2 distinct classes"),
                          (["--batch-size", "100"], "multiple of --m-per-class")):
        assert cli("metric", "train", *argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (runs_dir / "metric").exists()


def test_a_missing_image_is_one_line_before_any_bundled_model_is_announced(bundled, cli, capsys, tmp_path):
    for argv in (["metric", "lookup"], ["classify", "predict"]):
        assert cli(*argv, str(tmp_path / "missing.png")) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: image not found: ") and "run directory" in err, err
        assert len(err.strip().splitlines()) == 1 and "using the bundled" not in err, err


def test_metric_train_from_none_trains_from_scratch(bundled, runs_dir, cli, capsys):
    assert cli("metric", "train", "--from", "none", "--name", "s", *TINY_METRIC) == 0
    out, err = capsys.readouterr()
    assert "building on" not in err and "from scratch" in out
    summary = json.loads((runs_dir / "metric" / "s" / "summary.json").read_text())
    assert summary["from"] is None


def test_detect_video_without_weights_uses_the_bundled_detector_exported_into_the_user_cache(
        own_copy, runs_dir, cli, capsys, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = snapshot(own_copy)
    out_dir = runs_dir / "v"
    assert cli("detect", "video", clip, "--imgsz", "160", "--out", out_dir, "--device", "cpu") == 0
    out, err = capsys.readouterr()
    card = json.loads((own_copy / "detector" / "card.json").read_text())
    assert f"using the bundled detector: {card['headline']}; pass --weights runs/detect/<run> for your own" in err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["backend"] == "onnx" and summary["frames_processed"] == 8
    # tracking by default, each track read by the bundled detector's crop reader; an 8-frame clip is shorter than
    # --min-track-frames (10), so its tracks need only span it
    assert summary["track"] is True and summary["tracks"]["classifier"] == str(own_copy / "detector" / "reader")
    assert summary["tracks"]["min_track_frames"] == 8
    assert Path(summary["weights"]) == own_copy / "detector" / "ultralytics" / "weights" / "best.pt"
    assert snapshot(own_copy) == before  # the package is never written to
    exported = list((tmp_path / "cache" / "fashionkit" / "onnx").glob("bundled-detector-*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    assert cli("detect", "video", clip, "--imgsz", "160", "--out", runs_dir / "v2", "--device", "cpu") == 0
    assert exported[0].stat().st_mtime_ns == stamp  # exported once, then reused


def test_detect_video_named_weights_win(bundled, runs_dir, cli, capsys, clip, tiny_bundle):
    mine = Path(tiny_bundle[1]["runs"]) / "detect" / "bundled-detector"
    assert cli("detect", "video", clip, "--weights", mine, "--imgsz", "160", "--out", runs_dir / "v",
               "--backend", "torch", "--max-frames", "2") == 0
    assert "bundled" not in capsys.readouterr().err
    assert json.loads((runs_dir / "v" / "summary.json").read_text())["weights"].startswith(str(mine))


# ---- missing and damaged bundled files --------------------------------------------------------------------------

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_missing_bundled_file_is_a_one_line_error_naming_it_and_the_rebuild(own_copy, cli, capsys, photo):
    (own_copy / "classifier" / "weights" / "best.pt").unlink()
    assert cli("classify", "predict", photo) == 2
    line = one_error_line(capsys)
    assert str(own_copy / "classifier" / "weights" / "best.pt") in line and "is missing" in line
    assert "python benchmarks/build_models.py" in line


def test_a_corrupted_bundled_file_is_a_one_line_error(own_copy, cli, capsys, photo):
    index = own_copy / "metric" / "index" / "index.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    index.write_bytes(bytes(data))
    assert cli("metric", "lookup", photo) == 2
    line = one_error_line(capsys)
    assert str(index) in line and "corrupted" in line and "build_models.py" in line

    (own_copy / "detector" / "card.json").write_text("{not json")
    assert cli("detect", "video", photo) == 2
    line = one_error_line(capsys)
    assert str(own_copy / "detector" / "card.json") in line and "corrupted" in line


def test_no_bundled_models_at_all_says_how_to_name_your_own(tmp_path, monkeypatch, runs_dir, cli, capsys, clip):
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(tmp_path / "none"))
    assert cli("detect", "video", clip) == 2
    line = one_error_line(capsys)
    assert "no bundled detector" in line and "--weights runs/detect/<run>" in line


# ---- the package's own bundled models -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(bundled_mod.KINDS))
def test_the_package_bundled_models_are_whole_when_present(kind, monkeypatch):
    monkeypatch.delenv("FASHIONKIT_MODELS_DIR", raising=False)
    if not (ROOT / "fashionkit" / "models" / kind / "card.json").is_file():
        pytest.skip(f"no bundled {kind} in this checkout yet (benchmarks/build_models.py makes it)")
    run = bundled_mod.bundled_run(kind)
    assert run == ROOT / "fashionkit" / "models" / kind
    card = bundled_mod.card(kind)
    assert card["commands"] and card["machine"]["cpu"] and card["headline"] in bundled_mod.message(kind)


def test_track_decisions_of_the_bundled_detector_use_its_crop_reader_and_the_bundled_embedding(bundled):
    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.detect.tracks import auto_runs, open_gate

    weights = bundled / "detector" / "ultralytics" / "weights" / "best.pt"
    gate = bundled / "detector" / "gate"  # what `detect video --gate auto` asks which tracks are not items
    assert auto_runs(weights) == {"classifier": bundled / "detector" / "reader", "metric": bundled / "metric",
                                  "gate": gate}
    assert auto_runs(weights, reader=False) == {"classifier": bundled / "classifier", "metric": bundled / "metric",
                                                "gate": gate}
    reader, _, _, _ = load_run_model(bundled / "detector" / "reader")  # a classify run as shipped, slimmed
    classifier, _, _, _ = load_run_model(bundled / "classifier")
    assert reader.name == classifier.name and reader.options == classifier.options
    model, run = open_gate(gate, torch.device("cpu"))
    assert run == gate and model.num_classes == 11 and model.name == classifier.name
