"""The metric stage on small real subsets: training from a tiny classify run, mined-triplet logging, a zero-triplet
epoch, resume, the FAISS index and look-ups, the stale-index check, the resolver, and bad input."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from fashionkit.errors import UserError

HARD = [0, 2, 4, 6]
# small enough for seconds on 2 cores: 2 epochs of 3 batches of 64 (16 per class), evaluation on 200 items
TINY = {"subset": 1000, "epochs": 2, "freeze_epochs": 1, "batch_size": 64, "m_per_class": 16, "steps_per_epoch": 3,
        "eval_subset": 200, "plot_points": 100, "dim": 32, "head_hidden": 64}


def rows(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def learned(run) -> list[tuple]:
    """The columns that must repeat exactly (timings excluded)."""
    return [(r["epoch"], r["train_loss"], r["triplets"], r["empty_batches"], r["val_map_at_r"]) for r in rows(run)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("metric-runs")


@pytest.fixture(scope="module")
def classify_run(root):
    from fashionkit.classify.train import train

    run, _ = train({"model": "simple", "subset": 1000, "epochs": 1, "lr": 0.02, "batch_size": 100, "test": False,
                    "runs_dir": str(root), "name": "clf"})
    return run


@pytest.fixture(scope="module")
def metric_run(root, classify_run):
    from fashionkit.metric.train import train

    run, summary = train({**TINY, "from": str(classify_run), "runs_dir": str(root), "name": "emb"})
    return run, summary


@pytest.fixture(scope="module")
def indexed(metric_run):
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.index import build_run_index

    run, _ = metric_run
    meta = build_run_index(run, {name: opt.default for name, opt in INDEX_OPTIONS.items()})
    return run, meta


def test_train_writes_a_run_and_logs_mined_triplets(metric_run, classify_run):
    from fashionkit.metric.model import load_embedder

    run, summary = metric_run
    for name in ("config.yaml", "run.json", "metrics.csv", "curves.png", "tsne.png", "summary.json",
                 "weights/best.pt", "weights/last.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["stage"] == "metric"
    got = rows(run)
    assert [int(r["epoch"]) for r in got] == [1, 2]
    assert [int(r["frozen"]) for r in got] == [1, 0]
    assert all(int(r["triplets"]) > 0 for r in got)  # the distance-weighted miner's count, per epoch
    assert summary["triplets_per_epoch"] == [int(r["triplets"]) for r in got]
    assert summary["status"] == "finished" and summary["hard_classes"] == HARD
    test = summary["test"]
    assert test["before_is"] == "classifier features" and test["queries"] == 200
    for key in ("before", "after"):
        assert set(test[key]) == {"precision_at_1", "r_precision", "map_at_r"}
        assert 0.25 < test[key]["precision_at_1"] <= 1  # 4 classes: chance is 0.25
    net, ckpt = load_embedder(run)
    z = net(torch.randn(3, 1, 28, 28))
    assert z.shape == (3, 32) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert ckpt["source"]["name"] == "simple" and ckpt["split"] == {"val_size": 5000, "seed": 0}


def test_zero_triplet_epoch_fails_loudly(cli, capsys, classify_run, root):
    # no negative is nearer than 0.001: the distance-weighted miner draws nothing
    code = cli("metric", "train", "--from", classify_run, "--subset", 1000, "--epochs", 1, "--batch-size", 64,
               "--m-per-class", 16, "--steps-per-epoch", 2, "--nonzero-loss-cutoff", 0.001, "--runs-dir", root,
               "--name", "empty")
    err = capsys.readouterr().err
    assert code == 2
    assert "mined no triplets in 2 batches" in err and "--nonzero-loss-cutoff" in err and "Traceback" not in err
    assert json.loads((root / "metric" / "empty" / "summary.json").read_text())["status"] == "no_triplets"
    assert not (root / "metric" / "empty" / "weights" / "last.pt").exists()


def test_resume_continues_where_it_stopped(metric_run, classify_run, root, monkeypatch, capsys):
    from fashionkit.classify.checkpoint import load_classifier
    from fashionkit.metric import train as metric_train
    from fashionkit.metric.model import read_embedder_checkpoint

    calls = []
    original = metric_train.MetricTrainer.validate

    def interrupt_second_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(metric_train.MetricTrainer, "validate", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        metric_train.train({**TINY, "from": str(classify_run), "runs_dir": str(root), "name": "cut", "eval": False})
    run = root / "metric" / "cut"
    err = capsys.readouterr().err
    assert f"1 finished epochs kept in {run / 'weights' / 'last.pt'}" in err
    assert f"continue with: metric train --resume {run}" in err
    assert [int(r["epoch"]) for r in rows(run)] == [1]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    # after the frozen first epoch the trunk is still exactly the classifier's, BatchNorm statistics included
    last = read_embedder_checkpoint(run / "weights" / "last.pt")
    classifier, _ = load_classifier(classify_run)
    for name, value in classifier.trunk.state_dict().items():
        assert torch.equal(last["state_dict"]["trunk." + name], value), name
    monkeypatch.setattr(metric_train.MetricTrainer, "validate", original)
    _, summary = metric_train.resume(run)
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert learned(run) == learned(metric_run[0])  # the same as the uninterrupted run
    with pytest.raises(UserError, match="already finished"):
        metric_train.resume(run)


def test_index_and_lookup_return_sorted_neighbours(indexed, cli, capsys, train_set):
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder

    run, meta = indexed
    labels = train_set[1].numpy()
    assert meta["kind"] == "flat" and meta["count"] == int(np.isin(labels, HARD).sum())
    _, ckpt = load_embedder(run)
    index = open_run_index(run, ckpt["model_hash"])
    assert set(np.unique(index.labels)) == set(HARD) and set(np.unique(index.split)) == {"train", "val"}
    assert np.array_equal(labels[index.source], index.labels)

    item = int(np.flatnonzero(labels == 6)[3])  # a shirt of the reference set
    assert cli("metric", "lookup", run, "--train-index", item, "-k", 5, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    found = result["neighbours"]
    assert len(found) == 5 and result["query"]["in_index"]
    distances = [n["distance"] for n in found]
    assert distances == sorted(distances)
    assert found[0]["dataset_index"] == item and distances[0] < 1e-3  # its own copy first
    assert found[0]["class_name"] == "Shirt"
    assert (run / "lookups" / f"train-{item}.png").is_file()

    out = run / "strip.png"
    assert cli("metric", "lookup", run, "--test-index", 0, "-k", 3, "--out", out) == 0
    text = capsys.readouterr().out
    assert "rank" in text and text.count("\n") >= 5 and out.is_file()


def test_lookup_input_errors(indexed, cli, capsys, tmp_path):
    run, meta = indexed
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    cases = [(("-k", meta["count"] + 1, "--test-index", 0), "larger than the index"),
             ((bad,), "broken.png"),
             ((tmp_path / "missing.png",), "not found"),
             (("--test-index", 10_000), "out of range"),
             ((), "exactly one query")]
    for args, message in cases:
        assert cli("metric", "lookup", run, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (args, err)


def test_stale_index_is_refused(indexed, cli, capsys, tmp_path):
    run, _ = indexed
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    best = copy / "weights" / "best.pt"
    ckpt = torch.load(best, weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("head.") and k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01  # the model changed (e.g. retrained)
    torch.save(ckpt, best)
    assert cli("metric", "lookup", copy, "--test-index", 0) == 2
    err = capsys.readouterr().err
    assert "stale index" in err and "metric index" in err and "Traceback" not in err
    assert cli("metric", "index", copy, "--index", "hnsw") == 0  # rebuilding makes it usable again
    assert cli("metric", "lookup", copy, "--test-index", 0, "-k", 2, "--json") == 0
    assert "indexed" in capsys.readouterr().out
    assert json.loads((copy / "index" / "index.json").read_text())["kind"] == "hnsw"


def test_lookup_of_an_image_file(indexed, cli, capsys, tmp_path, test_set):
    from PIL import Image

    run, _ = indexed
    path = tmp_path / "coat.png"
    item = int(np.flatnonzero(test_set[1].numpy() == 4)[0])
    Image.fromarray(255 - test_set[0][item].numpy()).resize((112, 112)).save(path)  # dark on light, 4x larger
    assert cli("metric", "lookup", run, path, "-k", 4, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == {"kind": "image", "path": str(path), "label": None, "name": "coat"}
    assert len(result["neighbours"]) == 4 and (run / "lookups" / "coat.png").is_file()


def test_faiss_index_kinds_agree_with_exact_search():
    from fashionkit.metric.index import make_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = make_index("flat", x).search(x[:50], 5)[1]
    assert (exact[:, 0] == np.arange(50)).all()
    for kind, opts in (("ivf", {"nlist": 20, "nprobe": 20}), ("hnsw", {"ef_search": 200})):
        found = make_index(kind, x, **opts, train_size=1000).search(x[:50], 5)[1]
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)]) > 0.95, kind
    with pytest.raises(UserError, match="--nlist 5000"):
        make_index("ivf", x, nlist=5000)


def test_ivf_probes_32_lists_by_default_or_all_when_fewer():
    import faiss

    from fashionkit.metric.index import make_index

    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nprobe = {n: faiss.downcast_index(make_index("ivf", x[:n])).nprobe for n in (2000, 500)}
    assert nprobe == {2000: 32, 500: 12}  # 500 vectors -> 12 lists (N/39): all of them, and no error
    assert faiss.downcast_index(make_index("ivf", x, nprobe=4)).nprobe == 4
    with pytest.raises(UserError, match="--nprobe 99"):
        make_index("ivf", x, nlist=20, nprobe=99)


def test_resolve_sweeps_on_validation_and_reports_test(indexed, classify_run, cli, capsys):
    run, _ = indexed
    assert cli("metric", "resolve", run, "--classifier", classify_run, "-k", 5, "--sweep-step", 0.1) == 0
    assert "hard-class accuracy" in capsys.readouterr().out
    result = json.loads((run / "resolve.json").read_text())
    sweep = result["validation"]["sweep"]
    assert [s["threshold"] for s in sweep] == pytest.approx([i / 10 for i in range(11)])
    best = max(sweep, key=lambda s: (s["accuracy"], -s["threshold"]))
    assert result["threshold_source"] == "validation sweep" and result["threshold"] == best["threshold"]
    assert result["validation"]["resolved"]["accuracy"] == pytest.approx(best["accuracy"])
    assert result["validation"]["items"] == 5000  # the val part of the split, never the test split
    assert sweep[0]["re_decided"] == 0
    for key in ("classifier", "resolved"):
        report = result["test"][key]
        assert np.array(report["confusion"]).shape == (4, 4)
        assert sum(map(sum, report["confusion"])) + sum(report["predicted_other"]) == 4000  # test items of 4 classes
        assert set(report["per_class"]) == {"T-shirt/top", "Pullover", "Coat", "Shirt"}
        assert (run / f"confusion_{key}.png").is_file()
    assert result["test"]["items"] == 10_000 and result["tta"] is False


def test_resolve_with_tta_starts_from_the_classifiers_tta_predictions(indexed, classify_run, cli, capsys):
    from fashionkit.classify.evaluate import evaluate_run

    run, _ = indexed
    out = run / "resolve-tta"
    assert cli("metric", "resolve", run, "--classifier", classify_run, "--tta", "--threshold", 0.2, "--out", out) == 0
    assert "six-view TTA" in capsys.readouterr().out
    result = json.loads((out / "resolve.json").read_text())
    tta = evaluate_run(classify_run, tta=True, out=run / "eval-tta")
    assert result["tta"] is True
    assert result["test"]["classifier"]["accuracy"] == pytest.approx(tta["accuracy"], abs=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"hard_classes": "0,2,banana"}, "unknown class 'banana'"),
    ({"hard_classes": "0,2,10"}, "unknown class '10'"),
    ({"hard_classes": "shirt,0,6"}, "more than once: Shirt"),
    ({"hard_classes": "6"}, "at least 2"),
    ({"batch_size": 100, "m_per_class": 32}, "multiple of --m-per-class"),
    ({"model": "nope"}, "unknown model"),
    ({"threads": -1}, "--threads must be at least 0"),  # was torch's traceback from set_num_threads
    # one flag per message (was "--trunk-lr-scale and --weight-decay must not be negative" for either), inf refused
    ({"trunk_lr_scale": -0.5}, r"^--trunk-lr-scale must be 0 or more, got -0.5$"),
    ({"weight_decay": float("inf")}, r"^--weight-decay must be 0 or more, got inf$"),
    ({"margin": 0}, r"^--margin must be a positive number, got 0"),
])
def test_bad_training_options(options, message, tmp_path):
    from fashionkit.metric.train import train

    with pytest.raises(UserError, match=message):
        train({**options, "runs_dir": str(tmp_path)})
    assert not (tmp_path / "metric").exists() or not any((tmp_path / "metric").iterdir())


def test_without_from_it_starts_from_scratch_and_says_so(root, capsys):
    from fashionkit.metric.train import train

    _, summary = train({**TINY, "model": "simple", "epochs": 1, "eval": True, "eval_subset": 100, "plot_points": 0,
                        "runs_dir": str(root), "name": "scratch"})
    assert "from scratch" in capsys.readouterr().out
    assert summary["from"] is None and summary["test"]["before_is"] == "untrained net"


def test_from_must_be_a_classify_run(cli, capsys, tmp_path, metric_run, classify_run):
    assert cli("metric", "train", "--from", tmp_path, "--runs-dir", tmp_path) == 2
    assert "not a fashionkit run directory" in capsys.readouterr().err
    assert cli("metric", "train", "--from", metric_run[0], "--runs-dir", tmp_path) == 2
    assert "is a metric run, not a classify run" in capsys.readouterr().err
    assert cli("metric", "resolve", metric_run[0], "--classifier", metric_run[0]) == 2
    assert "not a classify run" in capsys.readouterr().err
