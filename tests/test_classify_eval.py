"""classify eval / inspect / compare / predict and data.images, on small real runs trained once per module."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fashionkit.classify.checkpoint import load_run_model
from fashionkit.classify.evaluate import compare_runs, evaluate_run
from fashionkit.classify.inspect import inspect_run
from fashionkit.classify.predict import predict_files, predict_probs, tta_views
from fashionkit.classify.train import evaluate_loader, train
from fashionkit.data.fashion_mnist import CLASSES
from fashionkit.data.images import read_item_image, read_item_images
from fashionkit.data.loader import BatchLoader
from fashionkit.data.splits import make_splits
from fashionkit.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small CNN (two convolutions, ~65% test accuracy) and an MLP, trained for real in ~15 s together."""
    root = tmp_path_factory.mktemp("runs")
    common = {"subset": 2000, "epochs": 2, "runs_dir": str(root)}
    cnn, _ = train({**common, "model": "simple", "model_opts": "channels=[32,64]", "lr": 0.05, "name": "cnn"})
    mlp, _ = train({**common, "model": "mlp", "lr": 0.02, "epochs": 1, "name": "mlp"})
    return {"cnn": cnn, "mlp": mlp}


@pytest.fixture(scope="module")
def val_eval(runs):
    return evaluate_run(runs["cnn"], split="val", top_errors=12, device="cpu")


def read_predictions(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- data.images ---------------------------------------------------------------------------------------------

def save(array: np.ndarray, path, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_read_item_image_any_file_gives_the_dataset_framing(test_set, tmp_path):
    images, _ = test_set
    to_original, inverted_vs_plain, rgb_vs_plain, alpha_vs_plain = [], [], [], []
    for i in range(20):
        a = images[i].numpy()
        plain = read_item_image(save(a, tmp_path / "plain.png"))
        # a dark item on white, as a product photo would be
        inverted = read_item_image(save(255 - a, tmp_path / "inverted.png"))
        rgb = read_item_image(save(np.array(Image.fromarray(255 - a).convert("RGB").resize(
            (84, 84), Image.Resampling.NEAREST)), tmp_path / "rgb.jpg", quality=95))
        # a cut-out: the item opaque, the rest transparent
        rgba = np.dstack([np.repeat((255 - a)[..., None], 3, 2), np.where(a > 0, 255, 0)]).astype(np.uint8)
        alpha = read_item_image(save(rgba, tmp_path / "alpha.png"))
        assert plain.dtype == torch.uint8 and plain.shape == (28, 28)
        to_original.append((plain.float() - images[i].float()).abs().mean().item())
        inverted_vs_plain.append((inverted.int() - plain.int()).abs().max().item())
        rgb_vs_plain.append((rgb.float() - plain.float()).abs().mean().item())
        alpha_vs_plain.append((alpha.int() - plain.int()).abs().max().item())
    # dataset items are already framed: most come back unchanged (a few by a pixel's shift or faint-edge crop)
    assert np.median(to_original) == 0 and np.mean(to_original) < 5
    assert max(inverted_vs_plain) == 0 and max(alpha_vs_plain) == 0
    assert np.mean(rgb_vs_plain) < 8  # 3x larger, colour, JPEG: close, not equal


def test_read_item_image_frames_a_small_item_in_a_large_photo(test_set, tmp_path):
    images, _ = test_set
    a = images[1].numpy()
    canvas = np.full((300, 500), 255, np.uint8)
    canvas[40:40 + 140, 300:300 + 140] = np.array(Image.fromarray(255 - a).resize((140, 140),
                                                                                  Image.Resampling.NEAREST))
    item = read_item_image(save(canvas, tmp_path / "photo.png"))
    assert (item.float() - read_item_image(save(a, tmp_path / "plain.png")).float()).abs().mean() < 8
    blank = read_item_image(save(np.full((50, 50), 200, np.uint8), tmp_path / "blank.png"))
    assert blank.max() == 0


def test_read_item_image_bad_files_name_the_file(tmp_path, test_set):
    (tmp_path / "notes.png").write_text("not an image")
    full = save(np.kron(test_set[0][0].numpy(), np.ones((8, 8), np.uint8)), tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    for name, message in (("missing.png", "not found"), ("notes.png", "not an image"), ("cut.png", "truncated")):
        with pytest.raises(UserError, match=message) as e:
            read_item_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(UserError, match="directory"):
        read_item_image(tmp_path)
    with pytest.raises(UserError, match="no image"):
        read_item_images([])
    assert read_item_images([full, full]).shape == (2, 28, 28)


# ---- eval ----------------------------------------------------------------------------------------------------

def test_eval_matches_the_training_engine_on_the_runs_val_split(runs, val_eval, train_set):
    out = runs["cnn"] / "eval" / "val"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["accuracy"] == val_eval["accuracy"] and saved["items"] == 400

    # the same items the run validated on, scored by the engine's own evaluate_loader
    images, labels = train_set
    val_idx = make_splits(labels.numpy(), 5000, 0, 2000)[1]
    model, _, _, _ = load_run_model(runs["cnn"])
    loss, acc = evaluate_loader(model, BatchLoader(images, labels, 500, indices=val_idx), torch.device("cpu"), None)
    assert saved["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert saved["loss"] == pytest.approx(loss, rel=1e-4)

    rows = read_predictions(out / "predictions.csv")
    assert [int(r["index"]) for r in rows] == val_idx.tolist()
    assert [int(r["label"]) for r in rows] == labels[val_idx].tolist()
    assert np.mean([r["label"] == r["pred"] for r in rows]) == saved["accuracy"]
    probs = np.array([[float(r[f"p{c}"]) for c in range(10)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)

    matrix = np.array(saved["confusion_matrix"])
    rates = np.array(saved["confusion_matrix_normalized"])
    assert matrix.sum() == 400 and np.trace(matrix) == round(saved["accuracy"] * 400)
    assert np.allclose(rates.sum(1), 1)
    assert set(CLASSES) <= set(saved["report"]) and saved["report"]["accuracy"] == saved["accuracy"]
    assert 0 < saved["report"]["macro avg"]["f1-score"] < 1
    for pair in saved["top_confused"]:
        t, p = CLASSES.index(pair["true"]), CLASSES.index(pair["pred"])
        assert t != p and pair["count"] == matrix[t, p]
        assert pair["rate"] == pytest.approx(matrix[t, p] / matrix[t].sum())
    assert [p["count"] for p in saved["top_confused"]] == sorted((p["count"] for p in saved["top_confused"]),
                                                                 reverse=True)

    by_index = {int(r["index"]): r for r in rows}
    mistakes = saved["top_errors"]
    assert len(mistakes) == 12
    assert all(m["true"] != m["pred"] and by_index[m["index"]]["label"] != by_index[m["index"]]["pred"]
               for m in mistakes)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    # nothing wrong is more confident than the least confident one listed
    wrong = [float(r["confidence"]) for r in rows if r["label"] != r["pred"]]
    assert sorted(wrong, reverse=True)[:12] == pytest.approx(confidences, abs=1e-5)
    assert (out / "confusion.png").stat().st_size > 10_000 and (out / "mistakes.png").is_file()


def test_eval_tta_averages_mirror_and_shifted_views(runs, train_set):
    tta = evaluate_run(runs["cnn"], split="val", tta=True, top_errors=0, device="cpu")
    out = runs["cnn"] / "eval" / "val-tta"
    assert 0 < tta["accuracy"] <= 1 and tta["tta"] and not (out / "mistakes.png").exists()
    rows = read_predictions(out / "predictions.csv")
    probs = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in rows])

    images, labels = train_set
    items = images[torch.as_tensor(make_splits(labels.numpy(), 5000, 0, 2000)[1])]
    model, _, _, _ = load_run_model(runs["cnn"])
    cpu = torch.device("cpu")
    def moved(images, dy, dx):  # the uint8 items shifted by (dy, dx) pixels, background coming in
        return torch.nn.functional.pad(images, (1, 1, 1, 1))[:, 1 + dy:29 + dy, 1 + dx:29 + dx]

    views = [moved(view, dy, dx) for view in (items, items.flip(-1)) for dy, dx in ((0, 0), (-1, -1), (1, 1))]
    expected = sum(predict_probs(model, v, cpu) for v in views) / 6
    assert torch.allclose(probs, expected, atol=1e-5)
    assert not torch.allclose(probs, predict_probs(model, items, cpu), atol=1e-3)  # the flip changed something
    # the six views come one batch at a time: a forward pass sees no more images than --batch-size
    batch = torch.randn(7, 1, 28, 28)
    assert [v.shape for v in tta_views(batch)] == [batch.shape] * 6
    truth = torch.tensor([int(r["label"]) for r in rows])
    assert tta["accuracy"] == pytest.approx((expected.argmax(1) == truth).float().mean().item())


def test_engine_tta_scores_what_eval_tta_scores(runs, train_set):
    """The training engine's TTA validation (--tta) and `classify eval --tta` average the same two views."""
    images, labels = train_set
    val_idx = make_splits(labels.numpy(), 5000, 0, 2000)[1]
    model, _, _, _ = load_run_model(runs["cnn"])
    loader = BatchLoader(images, labels, 500, indices=val_idx)
    loss, acc = evaluate_loader(model, loader, torch.device("cpu"), None, tta=True)
    expected = evaluate_run(runs["cnn"], split="val", tta=True, top_errors=0, device="cpu")
    assert acc == pytest.approx(expected["accuracy"], abs=1e-9)
    assert loss == pytest.approx(expected["loss"], rel=1e-4)
    assert (loss, acc) != evaluate_loader(model, loader, torch.device("cpu"), None)


def test_eval_cli_on_test_split(runs, cli, capsys):
    assert cli("classify", "eval", runs["cnn"], "--top-errors", "4", "--device", "cpu") == 0
    text = capsys.readouterr().out
    saved = json.loads((runs["cnn"] / "eval" / "test" / "eval.json").read_text())
    summary = json.loads((runs["cnn"] / "summary.json").read_text())
    assert saved["items"] == 10_000 and len(saved["top_errors"]) == 4
    # train's test number came from the same weights, with its six TTA views
    assert saved["accuracy"] == pytest.approx(summary["test_acc"], abs=0.01)
    assert f"accuracy {saved['accuracy']:.4f}" in text and "Ankle boot" in text and "->" in text
    # and in fp32 whatever --amp trained (bf16 on a CPU that has it): eval's default precision gives the same figure
    assert summary["test_tta"] is True
    assert cli("classify", "eval", runs["cnn"], "--tta", "--top-errors", "0", "--out", runs["cnn"] / "eval-tta") == 0
    tta = json.loads((runs["cnn"] / "eval-tta" / "eval.json").read_text())
    assert tta["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert tta["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)


# ---- compare -------------------------------------------------------------------------------------------------

def test_compare_one_row_per_run(runs, tmp_path, cli, capsys):
    rows, table, files = compare_runs([runs["cnn"], runs["mlp"]], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2 and table in md
    assert lines[2].startswith("| cnn | simple |") and lines[3].startswith("| mlp | mlp |")
    summary = json.loads((runs["cnn"] / "summary.json").read_text())
    assert rows[0]["best val acc"] == pytest.approx(summary["best_val_acc"])
    assert rows[0]["test acc"] == summary["test_acc"] and rows[0]["params"] == summary["params"]
    assert f"{summary['test_acc']:.4f}" in lines[2]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000

    assert cli("classify", "compare", runs["cnn"], "--out", tmp_path / "cli") == 0
    assert "| cnn | simple |" in capsys.readouterr().out
    assert cli("classify", "compare", runs["cnn"], tmp_path) == 2
    assert "not a fashionkit run" in capsys.readouterr().err


# ---- predict -------------------------------------------------------------------------------------------------

def test_predict_image_files_like_the_dataset_tensor(runs, test_set, tmp_path, cli, capsys):
    images, labels = test_set
    model, _, _, _ = load_run_model(runs["cnn"])
    probs = predict_probs(model, images[:200], torch.device("cpu"))
    confident = [i for i in range(200) if probs[i].argmax() == labels[i] and probs[i].max() > 0.7][:3]
    assert len(confident) == 3
    paths = []
    for i in confident:
        a = images[i].numpy()
        paths += [save(a, tmp_path / f"{i}.png"), save(255 - a, tmp_path / f"{i}-inverted.png"),
                  save(np.array(Image.fromarray(a).convert("RGB").resize((84, 84), Image.Resampling.NEAREST)),
                       tmp_path / f"{i}-rgb.png")]
    results = predict_files(runs["cnn"], paths, top_k=10, device="cpu")
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for n, i in enumerate(confident):
        plain, inverted, rgb = results[3 * n: 3 * n + 3]
        assert sum(p["probability"] for p in plain["predictions"]) == pytest.approx(1, abs=1e-4)
        assert plain["predictions"][0]["class_id"] == int(labels[i])  # = the model on the dataset tensor
        assert inverted["predictions"] == plain["predictions"]
        assert rgb["predictions"][0]["class_name"] == CLASSES[int(labels[i])]

    assert cli("classify", "predict", runs["cnn"], paths[0], paths[1], "--json", "--top-k", "2") == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 2 and [len(d["predictions"]) for d in doc] == [2, 2]
    assert set(doc[0]["predictions"][0]) == {"class_id", "class_name", "probability"}
    assert cli("classify", "predict", runs["cnn"], paths[0], "--tta") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"  1. {CLASSES[int(labels[confident[0]])]}")


# ---- inspect -------------------------------------------------------------------------------------------------

def test_inspect_filters_and_feature_maps(runs, tmp_path, test_set):
    r = inspect_run(runs["cnn"], index=3, layers=5, out=tmp_path / "a", device="cpu")
    assert r["layers"] == ["trunk.0", "trunk.3"]  # the model has two convolutions: K is capped there
    assert r["label"] == CLASSES[int(test_set[1][3])]
    for name in ("input.png", "filters.png", "features_1_trunk-0.png", "features_2_trunk-3.png"):
        assert (tmp_path / "a" / name).stat().st_size > 2_000, name
    image = save(test_set[0][3].numpy(), tmp_path / "item.png")
    r = inspect_run(runs["cnn"], image=image, layers=1, device="cpu")
    assert r["layers"] == ["trunk.0"] and (runs["cnn"] / "inspect" / "features_1_trunk-0.png").is_file()
    with pytest.raises(UserError, match="no convolution"):
        inspect_run(runs["mlp"], index=0)
    with pytest.raises(UserError, match="exactly one"):
        inspect_run(runs["cnn"])
    with pytest.raises(UserError, match="out of range"):
        inspect_run(runs["cnn"], index=10_000)


# ---- mistakes a user can make ---------------------------------------------------------------------------------

@pytest.fixture
def damaged(runs, tmp_path):
    """Copies of the CNN run, one with a garbage best.pt, one with the MLP's best.pt."""
    garbage, swapped = tmp_path / "garbage", tmp_path / "swapped"
    for copy in (garbage, swapped):
        shutil.copytree(runs["cnn"], copy, ignore=shutil.ignore_patterns("eval", "inspect"))
    (garbage / "weights" / "best.pt").write_bytes(b"\x00garbage" * 100)
    shutil.copy(runs["mlp"] / "weights" / "best.pt", swapped / "weights" / "best.pt")
    return garbage, swapped


def test_a_changed_registry_default_does_not_orphan_a_run_and_a_copied_best_pt_is_still_refused(runs, tmp_path,
                                                                                                 monkeypatch):
    from fashionkit.classify import models
    from fashionkit.classify.checkpoint import save_checkpoint

    cnn = runs["cnn"]  # simple with channels=[32,64] given, dense=100 from the registry's defaults
    before, _, _, _ = load_run_model(cnn)
    assert before.options["dense"] == 100
    # a later version registers simple with another default: the run still loads, as it was built
    spec = models.MODELS["simple"]
    monkeypatch.setitem(models.MODELS, "simple", models.ModelSpec(spec.family, {**spec.defaults, "dense": 64},
                                                                  spec.description))
    model, _, _, _ = load_run_model(cnn)
    assert model.options == before.options and model.head.in_features == 100
    monkeypatch.undo()
    # a best.pt of the same model but another architecture, copied in, differs from the run's last.pt
    copy = tmp_path / "copied-in"
    shutil.copytree(cnn, copy, ignore=shutil.ignore_patterns("eval", "inspect"))
    save_checkpoint(copy / "weights" / "best.pt", models.create_model("simple", channels=[32, 64], dense=50))
    with pytest.raises(UserError, match=r"best.pt does not belong to this run: its simple differs from the run's "
                                        r"last.pt's in dense"):
        load_run_model(copy)
    # and one that contradicts what config.yaml sets is refused on that
    save_checkpoint(copy / "weights" / "best.pt", models.create_model("simple", channels=[16, 64]))
    with pytest.raises(UserError, match="differs from config.yaml's in channels"):
        load_run_model(copy)


def test_user_mistakes_are_one_line_errors(runs, damaged, tmp_path, cli, capsys):
    garbage, swapped = damaged
    (tmp_path / "notes.png").write_text("hello")
    (tmp_path / "file").write_text("")
    cnn = runs["cnn"]
    cases = [
        (("eval", tmp_path / "nope"), "run directory not found"),
        (("eval", tmp_path), "not a fashionkit run"),
        (("eval", cnn, "--split", "train"), "'split'"),
        (("eval", garbage, "--split", "val"), "corrupted"),
        (("eval", swapped, "--split", "val"), "does not belong to this run"),
        (("eval", cnn, "--split", "val", "--out", tmp_path / "file" / "sub"), "cannot write"),
        (("inspect", runs["mlp"], "--index", "0"), "no convolution"),
        (("inspect", swapped, "--index", "0"), "does not belong"),
        (("predict", cnn, tmp_path / "missing.png"), "not found"),
        (("predict", cnn, tmp_path / "notes.png"), "not an image"),
        (("predict", garbage, tmp_path / "notes.png"), "corrupted"),
        (("predict", cnn, tmp_path / "notes.png", "--top-k", "0"), "top-k"),
        (("compare", cnn, tmp_path / "nope"), "not found"),
        (("eval", cnn, "--split", "val", "--batch-size", "0", "--out", tmp_path / "eval-bad"), "--batch-size"),
    ]
    for argv, message in cases:
        assert cli("classify", *argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "eval-bad").exists()  # a refused evaluation leaves no empty folder behind
