"""demos/: each demo's --tiny mode runs end to end on real data and writes what it promises."""

from __future__ import annotations

import base64
import json
import re

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    pipeline = load_script("demos/pipeline.py")
    out = tmp_path_factory.mktemp("demo") / "pipeline"
    assert pipeline.main(["--tiny", "--out", str(out)]) == 0
    return out


def test_pipeline_tiny_writes_a_self_contained_report(pipeline_out):
    page = (pipeline_out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # every figure the report promises is there, embedded; nothing refers outside the page
    assert len(images) == 14, len(images)
    assert "not produced" not in page
    assert not re.search(r'(src|href)="(?!data:)', page) and "http://" not in page and "https://" not in page
    for section in ("Timings", "Data check", "Classifier", "Embedding and the resolver", "Ambiguous items",
                    "Detector", "Video"):
        assert section in page
    timings = json.loads((pipeline_out / "timings.json").read_text())
    stages = {s["stage"] for s in timings["steps"]}
    assert stages == {"data check", "classifier", "embedding", "ambiguous items", "detector", "video"}
    assert all(s["seconds"] >= 0 for s in timings["steps"])
    # the runs are ordinary run directories
    for run in ("classify/demo-classifier", "metric/demo-metric", "detect/demo-detector"):
        assert (pipeline_out / "runs" / run / "run.json").is_file()
    assert (pipeline_out / "video" / "video" / "annotated.mp4").is_file()


def test_pipeline_refuses_an_unwritable_output_directory(tmp_path, capsys):
    pipeline = load_script("demos/pipeline.py")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert pipeline.main(["--tiny", "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write to ") and "choose another" in err[0]


def test_ambiguous_tiny_on_the_bundled_models(bundled, tmp_path, capsys):
    ambiguous = load_script("demos/ambiguous.py")
    out = tmp_path / "amb"
    assert ambiguous.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "using the bundled embedding" in printed.err and "using the bundled classifier" in printed.err
    result = json.loads((out / "ambiguous.json").read_text())
    items = result["items"]
    assert len(items) == 6 and result["test_items"] == 2000
    margins = [i["margin"] for i in items]
    assert margins == sorted(margins)  # least sure first
    for item in items:
        assert len(item["neighbours"]) == 5
        assert [n["distance"] for n in item["neighbours"]] == sorted(n["distance"] for n in item["neighbours"])
        assert item["resolver"] == (item["vote"] if item["re_decided"] else item["classifier"])
        assert item["margin"] == pytest.approx(item["p"] - item["p_second"], abs=2e-4)
    assert (out / "ambiguous.png").stat().st_size > 10_000
    assert (out / "ambiguous.md").read_text().count("\n") == 2 + 6

    # by default only items predicted as a hard class are ranked (the tiny classifier, near chance, may predict
    # none: then one error line says so)
    code = ambiguous.main(["--out", str(out / "hard"), "-n", "3", "-k", "2"])
    if code == 2:
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: the classifier predicts none of the 10000 test items as a hard class")
    else:
        result = json.loads((out / "hard" / "ambiguous.json").read_text())
        assert code == 0 and result["items"] and {i["classifier"] for i in result["items"]} <= set(
            result["hard_classes"])


def test_video_tiny_with_the_bundled_detector(bundled, tmp_path, capsys):
    video = load_script("demos/video.py")
    out = tmp_path / "vid"
    assert video.main(["--tiny", "--out", str(out)]) == 0
    assert "using the bundled detector" in capsys.readouterr().err
    result = json.loads((out / "tracks.json").read_text())
    summary = result["summary"]
    assert summary["track"] is True and summary["frames_processed"] == 10 and "gt" in summary
    assert {r["class"] for r in result["per_class"]} == set(summary["items"])
    for r in result["per_class"]:
        assert r["detections"] == summary["items"][r["class"]]["detections"]
    for t in result["tracks"]:
        assert sum(t["classes"].values()) == t["frames"] and t["first_frame"] <= t["last_frame"]
    assert (out / "tracks.md").is_file()
