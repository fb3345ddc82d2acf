"""`fashionkit data eda` and `fashionkit data outliers` on the real Fashion-MNIST files."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fashionkit.data import CLASSES
from fashionkit.data.loader import STD, normalize, to_float
from fashionkit.data.outliers import ConvAutoencoder
from fashionkit.data.splits import make_splits


def test_eda_writes_plots_and_stats(cli, tmp_path, capsys):
    out = tmp_path / "eda"
    assert cli("data", "eda", "--out", out) == 0
    assert "stats.json" in capsys.readouterr().out
    for name in ("class_distribution.png", "mean_images.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    splits = json.loads((out / "stats.json").read_text())["splits"]
    assert splits["train"]["pixel_mean"] == pytest.approx(0.2860, abs=1e-3)
    assert splits["train"]["pixel_std"] == pytest.approx(0.3530, abs=1e-3)
    assert splits["train"]["class_counts"] == {name: 6000 for name in CLASSES}
    assert splits["test"]["class_counts"] == {name: 1000 for name in CLASSES}
    # make_splits' defaults hold out 5000 stratified images: 500 per class.
    assert splits["val_part"]["class_counts"] == {name: 500 for name in CLASSES}
    assert splits["train_part"]["items"] + splits["val_part"]["items"] == 60000
    assert 0.25 < splits["val_part"]["pixel_mean"] < 0.32


def test_outliers_lists_the_largest_errors_per_class(cli, runs_dir, train_set):
    top = 5
    assert cli("data", "outliers", "--subset", 2000, "--epochs", 1, "--top", top, "--device", "cpu") == 0
    run = runs_dir / "data" / "outliers"
    for name in ("run.json", "config.yaml", "summary.json", "metrics.csv", "outliers.png", "autoencoder.pt"):
        assert (run / name).is_file(), name
    with (run / "outliers.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == top * len(CLASSES)

    # Recompute every subset image's error with the saved autoencoder.
    images, labels = train_set
    subset, _ = make_splits(labels.numpy(), subset=2000)
    model = ConvAutoencoder()
    model.load_state_dict(torch.load(run / "autoencoder.pt")["model"])
    with torch.no_grad():
        x = normalize(to_float(images[subset]))
        errors = ((model(x) - x) ** 2).mean(dim=(1, 2, 3)) * STD**2
    error_of = dict(zip(subset.tolist(), errors.tolist()))

    for c, name in enumerate(CLASSES):
        listed = [r for r in rows if int(r["class_id"]) == c]
        assert [int(r["rank"]) for r in listed] == list(range(1, top + 1))
        assert all(r["class_name"] == name for r in listed)
        idx = [int(r["dataset_index"]) for r in listed]
        assert all(i in error_of and int(labels[i]) == c for i in idx)
        listed_errors = [float(r["error"]) for r in listed]
        assert listed_errors == sorted(listed_errors, reverse=True)
        assert listed_errors == pytest.approx([error_of[i] for i in idx], rel=1e-4)
        others = [e for i, e in error_of.items() if int(labels[i]) == c and i not in idx]
        assert min(listed_errors) >= max(others) * (1 - 1e-5)


def test_eda_unwritable_out_is_a_user_error(cli, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    assert cli("data", "eda", "--out", tmp_path / "afile" / "out") == 2
    assert capsys.readouterr().err.startswith("error: cannot write to")


def test_outliers_unknown_device_is_a_user_error(cli, runs_dir, capsys):
    assert cli("data", "outliers", "--device", "tpu") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: option 'device'") and "auto, cpu, cuda" in err
    assert not runs_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_outliers_cuda_without_gpu_is_a_user_error(cli, runs_dir, capsys):
    assert cli("data", "outliers", "--device", "cuda") == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_outliers_top_larger_than_a_class_is_a_user_error(cli, runs_dir, capsys):
    # --subset 100 leaves 10 images per class, so 11 per class cannot be listed; nothing is trained or written.
    assert cli("data", "outliers", "--subset", 100, "--top", 11) == 2
    assert "--top 11" in capsys.readouterr().err
    assert not (runs_dir / "data").exists()


@pytest.mark.parametrize("argv, says", [(("--top", 0), "--top must be at least 1, got 0"),
                                        (("--subset", 0), "--subset must be at least 1, got 0"),
                                        (("--epochs", 0), "--epochs must be at least 1, got 0"),
                                        (("--batch-size", -4), "--batch-size must be at least 1, got -4"),
                                        (("--lr", "nan"), "--lr must be a positive number, got nan")])
def test_outliers_options_out_of_range_are_one_line_errors(cli, runs_dir, capsys, argv, says):
    assert cli("data", "outliers", *argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"
    assert not (runs_dir / "data").exists()
