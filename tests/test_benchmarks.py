"""The benchmark scripts run (tiny sizes) and measure what they say: a broken benchmark would go unnoticed until
someone needed its figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_faiss_bench_sweeps_nprobe_and_exact_search_has_full_recall(tmp_path):
    out = tmp_path / "faiss.json"
    # 2,000 vectors -> 51 ivf lists: probing all of them is exact search, probing one is not.
    subprocess.run([sys.executable, str(ROOT / "benchmarks/faiss_bench.py"), "--real-size", "2000", "--vectors", "0",
                    "--queries", "300", "--single", "20", "--methods", "flat,ivf,sklearn", "--nprobe", "1,51",
                    "--clusters", "20", "--out", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    rows = {(r["method"], r["params"]): r for r in result["rows"]}
    assert rows[("faiss flat", "exact")]["recall"] == 1.0
    assert rows[("sklearn brute", "euclidean")]["recall"] > 0.99  # same order on unit vectors, up to float ties
    assert rows[("faiss ivf", "nlist 51, nprobe 51")]["recall"] == 1.0
    assert rows[("faiss ivf", "nlist 51, nprobe 1")]["recall"] < 1.0
    assert "cpus)" in result["machine"]["cpu"]  # the CPU model, not just "x86_64" (Linux, as CI)
    assert "| faiss ivf | nlist 51, nprobe 1 |" in result["markdown"]


def test_index_scale_bench_quick_run_measures_recall_speed_rss_and_shards(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/index_scale_bench.py"), "--quick", "--vectors", "20000",
                    "--queries", "100", "--nlist", "32", "--nprobe", "32,1", "--pq-m", "8", "--rerank", "400",
                    "--shards", "2",
                    "--repeats", "1", "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    rows = result["search"]["rows"]
    assert result["config"]["vectors"] == 20000 and not (tmp_path / "work" / "vectors.npy").exists()
    # 8 bytes for 64 dims is a rough code: re-ranking 400 candidates by exact distance makes up for it
    full, pq_only = rows["ivfpq, nprobe 32 + rerank 400"], rows["ivfpq, nprobe 32"]
    assert full["recall"] > 0.9 and full["recall"] > pq_only["recall"]
    # the sweep searches the one built index at each --nprobe, with and without re-ranking; one list of 32 cannot
    # find more of the true neighbours than all 32 do
    assert sorted(r["nprobe"] for r in rows.values()) == [1, 1, 32, 32]
    assert rows["ivfpq, nprobe 1"]["recall"] <= pq_only["recall"]
    assert rows["ivfpq, nprobe 1 + rerank 400"]["recall"] <= full["recall"]
    assert result["shards"]["recall"] > 0.9 and result["shards"]["same_top_k_as_single"] > 0.9
    assert result["build"]["rss_mib"]["VmHWM"] > 0 and "| 2 shards, 2 processes, nprobe 32" in result["markdown"]


def test_time_to_accuracy_quick_runs_all_three_recipes_under_the_avx2_cap(tmp_path):
    out = tmp_path / "tta.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--quick", "--isa", "avx2",
                           "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
                          check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["isa"] == "avx2" and result["quick"] and result["cpu"]["model_name"]
    recipes = {r["recipe"]: r for r in result["results"]}
    assert set(recipes) == {"default", "previous", "reference"}
    for r in recipes.values():
        assert r["precision"] == "fp32"  # the AVX2 cap trains in fp32, as on an AVX2-only CPU
        assert [c["epoch"] for c in r["curve"]] == [1, 2]
        assert 0 < r["curve"][0]["seconds"] < r["curve"][1]["seconds"] <= r["seconds_total"]
        assert all(0.05 < c["test_acc"] <= 1 for c in r["curve"])
        first = r["first_passing"]
        assert list(first) == ["92%", "93%", "94%", "95%"]
        assert all(v is None or v in [c["seconds"] for c in r["curve"]] for v in first.values())
    assert recipes["default"]["options"]["epochs"] == 2 and recipes["default"]["tta"] is True
    assert recipes["previous"]["options"]["model"] == "vgg-small" and recipes["previous"]["tta"] is False
    assert "speedup_vs_reference" in recipes["default"] and out.with_suffix(".png").stat().st_size > 10_000
    assert "first passing" in proc.stdout


def test_time_to_accuracy_scores_from_a_given_epoch_the_60_minute_recipe(tmp_path):
    """The 60-minute recipe's augmentation through --set, scored from epoch 2 only (its wide net would make the
    test-split scoring here take a minute)."""
    out = tmp_path / "hour.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--quick", "--recipes", "default",
                    "--set", "augment=flip-crop-erase", "--set", "amp=off", "--score-from", "2",
                    "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    (r,) = json.loads(out.read_text())["results"]
    assert r["options"]["augment"] == "flip-crop-erase"
    assert r["options"]["amp"] == "off" and r["precision"] == "fp32"  # "off" the word, not YAML's False
    assert [c["epoch"] for c in r["curve"]] == [2] and r["curve"][0]["seconds"] <= r["seconds_total"]


def test_time_to_accuracy_rejects_an_unknown_recipe():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--recipes", "fastest"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown recipe 'fastest'" in proc.stderr


@pytest.mark.parametrize("setting, message", [("epoch=3", "'epoch' is no option of classify train"),
                                              ("amp=bogus", "option 'amp': 'bogus' is not one of")])
def test_time_to_accuracy_refuses_a_bad_set_before_training(setting, message):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--quick", "--set", setting],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert "default:" not in proc.stdout  # stopped before the first recipe


def test_time_to_accuracy_refuses_a_final_augment_for_the_reference():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/time_to_accuracy.py"), "--quick", "--recipes",
                           "reference", "--set", "final_augment=flip", "--set", "final_augment_epochs=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "final_augment has no reference version" in proc.stderr


def test_track_errors_counts_wrong_tracks_by_the_item_each_followed_most(tmp_path):
    """Track 1 follows a coat and is named coat; track 2 follows a shirt for two frames and a bag for one, and is
    named T-shirt/top: wrong, judged as the shirt (its most-matched item), within the hard classes; track 3 sits on
    an item only 30% visible (left out, as in the run's scoring) and so is matched to nothing."""
    coat, shirt, bag, hidden = ([0, 0, 50, 50], [100, 100, 150, 150], [200, 200, 250, 250], [300, 0, 350, 50])
    truth, frames = [], []
    for f in range(3):
        items = [{"track_id": 0, "class_id": 4, "box": coat, "visible": 1.0},
                 {"track_id": 1, "class_id": 6, "box": shirt, "visible": 1.0},
                 {"track_id": 2, "class_id": 8, "box": bag, "visible": 1.0},
                 {"track_id": 3, "class_id": 1, "box": hidden, "visible": 0.3}]
        truth.append(items)
        dets = [{"class_id": 4, "conf": 0.9, "box": coat, "track_id": 1, "track_class_id": 4},
                {"class_id": 0, "conf": 0.8, "box": shirt if f < 2 else bag, "track_id": 2, "track_class_id": 0},
                {"class_id": 1, "conf": 0.7, "box": hidden, "track_id": 3, "track_class_id": 1},
                {"class_id": 5, "conf": 0.6, "box": [0, 0, 5, 5]}]  # untracked: not counted
        frames.append({"frame": f, "detections": dets})
    gt = tmp_path / "clip.json"
    gt.write_text(json.dumps(truth))
    out = tmp_path / "video-out"
    out.mkdir()
    (out / "detections.jsonl").write_text("".join(json.dumps(f) + "\n" for f in frames))
    (out / "summary.json").write_text(json.dumps({"gt": {"file": str(gt), "min_visible": 0.5}}))
    script = str(ROOT / "benchmarks/track_errors.py")
    result = subprocess.run([sys.executable, script, str(out)], check=True, capture_output=True, text=True)
    assert "1 of 2 matched tracks named right; 1 wrong, 1 of them within the hard classes" in result.stdout
    assert "1  Shirt named T-shirt/top" in result.stdout
    # boxes: the coat in every frame, the shirt in two, the bag in the last (the second track's box moved onto it);
    # the run names no imgsz or frame size, so sizes are in frame pixels: all three items are 50 px, one bin
    assert "by the item's short side (px of the frame): 6 of 9 item-frames" in result.stdout
    assert result.stdout.splitlines()[-1].split() == ["45-70", "9", "0.667", "3", "0", "0"]
    # with every item counted, track 3 is matched (and right): 2 of 3
    result = subprocess.run([sys.executable, script, str(out), "--min-visible", "0"], check=True,
                            capture_output=True, text=True)
    assert "2 of 3 matched tracks named right" in result.stdout
    assert "6 of 9" not in result.stdout and "9 of 12 item-frames" in result.stdout
    # at imgsz 320 in a 640-px frame the items are 25 px at the detector's input; the hidden one touches the top edge
    (out / "summary.json").write_text(json.dumps({"gt": {"file": str(gt), "min_visible": 0.0}, "imgsz": 320,
                                                  "video_size": [640, 480]}))
    (out / "detections.jsonl").write_text("".join(json.dumps({**f, "detections": f["detections"][:2]}) + "\n"
                                                  for f in frames))
    result = subprocess.run([sys.executable, script, str(out)], check=True, capture_output=True, text=True)
    assert "(px at imgsz 320): 6 of 12 item-frames" in result.stdout
    assert result.stdout.splitlines()[-1].split() == ["20-30", "12", "0.500", "6", "0", "3"]
    (out / "summary.json").write_text(json.dumps({"fps": 30}))  # a run made without --gt
    failed = subprocess.run([sys.executable, script, str(out)], capture_output=True, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "was not scored against a ground truth: give --gt clip.json" in failed.stderr
    failed = subprocess.run([sys.executable, script, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr and "no detections.jsonl" in failed.stderr


def test_reader_ceiling_reads_every_ground_truth_box_once(tmp_path):
    """The crops the script reads are the labelled boxes, in order with their classes: its accuracy is the one
    `reader.scene_crops` + `predict_probs` give for the same split, and every box falls in one size bin and on one
    side of the frame-edge split."""
    import numpy as np
    import torch

    from fashionkit.bundled import bundled_dir
    from fashionkit.classify.predict import predict_probs
    from fashionkit.config import resolve
    from fashionkit.detect.cli import MAKE_DATA_OPTIONS
    from fashionkit.detect.reader import scene_crops
    from fashionkit.detect.scenes import make_dataset
    from fashionkit.detect.tracks import open_classifier

    data = tmp_path / "scenes"
    make_dataset(resolve(MAKE_DATA_OPTIONS, {"out": str(data), "imgsz": 160, "max_scale": 4.0, "workers": 1,
                                             "train": 2, "val": 6, "test": 2}), progress=False)
    reader = bundled_dir("detector") / "reader"
    out = tmp_path / "ceiling.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/reader_ceiling.py"), "--reader", str(reader), "--data",
                    str(data), "--splits", "val", "--out", str(out)], check=True, capture_output=True, text=True,
                   timeout=300)
    val = json.loads(out.read_text())["splits"]["val"]
    labels = [np.loadtxt(f, ndmin=2) for f in sorted((data / "labels" / "val").glob("*.txt")) if f.stat().st_size]
    assert val["boxes"] == sum(len(rows) for rows in labels) > 0
    items, classes = scene_crops(data / "data.yaml", "val")
    assert val["readable"] == len(classes)
    model = open_classifier(reader, torch.device("cpu"))[0]
    right = (predict_probs(model, items, torch.device("cpu")).argmax(1) == classes).sum().item()
    one = val["one view"]
    assert one["accuracy"] == round(right / val["boxes"], 4)
    assert 0 < one["mAP50 of the ground-truth boxes read"] <= 1
    assert sum(b["n"] for b in one["by longer side (px)"].values()) == val["boxes"]
    assert one["at the frame edge"]["n"] + one["inside the frame"]["n"] == val["boxes"]
    assert one["hard classes"]["n"] + one["other classes"]["n"] == val["boxes"]
