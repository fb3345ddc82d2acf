"""``fashionkit serve`` on tiny real runs: the runs page, the doubt ranking and its filters, item pages checked against
``metric lookup`` and ``classify predict``, uploads and their limits, video results, error cards for broken runs,
path traversal (encoded ``../``, symlinks), read-only use of the runs directory, the command line; and a real
headless Chromium (Debian's, through Selenium) clicking through the pages and saving screenshots."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fashionkit.data import CLASSES

HARD = [0, 2, 4, 6]
TEST_ITEMS = 2000  # the ranking covers the first 2,000 test items here (10,000 in use): seconds, not minutes
TINY_METRIC = {"subset": 1000, "epochs": 1, "freeze_epochs": 1, "batch_size": 64, "m_per_class": 16,
               "steps_per_epoch": 3, "eval": False, "dim": 32, "head_hidden": 64}


def tree_state(root: Path) -> dict:
    """Every path under ``root`` with its size, mtime and content hash: what 'read-only' must leave unchanged."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        state[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return state


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_video_result(out: Path) -> None:
    """A ``detect video --track`` output in the format detect/video.py documents: annotated.mp4 (mp4v),
    detections.jsonl, summary.json. Made by hand: a detector run costs minutes."""
    import cv2

    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"stage": "detect", "command": "video", "input": "clip.mp4"}))
    writer = cv2.VideoWriter(str(out / "annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(8):
        frame = np.full((64, 96, 3), 30 * i, np.uint8)
        writer.write(frame)
    writer.release()
    lines = []
    for i in range(8):
        dets = [{"class_id": 4, "class_name": "Coat" if i != 3 else "Shirt", "conf": 0.8, "box": [1, 2, 30, 40],
                 "track_id": 1}]
        if i >= 5:
            dets.append({"class_id": 8, "class_name": "Bag", "conf": 0.6, "box": [50, 2, 90, 40], "track_id": 2})
        lines.append(json.dumps({"frame": i, "time": round(i / 10, 4), "detections": dets}))
    (out / "detections.jsonl").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({
        "input": "clip.mp4", "kind": "video", "frames_read": 8, "frames_processed": 8, "stride": 1, "complete": True,
        "fps": 31.5, "track": True, "video_fps": 10.0,
        "items": {"Coat": {"detections": 7, "frames": 7, "most_in_a_frame": 1, "unique_tracks": 1},
                  "Shirt": {"detections": 1, "frames": 1, "most_in_a_frame": 1, "unique_tracks": 1},
                  "Bag": {"detections": 3, "frames": 3, "most_in_a_frame": 1, "unique_tracks": 1}}}))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A runs directory with a tiny classify run, a metric run (index over a tenth of the reference set, a
    resolve.json), a video result and broken runs; outside it, files that must never be reachable."""
    from fashionkit.classify.train import train as classify_train
    from fashionkit.metric import index as metric_index
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.train import train as metric_train

    base = tmp_path_factory.mktemp("serve")
    root = base / "runs"
    clf, _ = classify_train({"model": "simple", "subset": 1000, "epochs": 1, "lr": 0.02, "batch_size": 100,
                             "test": False, "runs_dir": str(root), "name": "clf"})
    emb, _ = metric_train({**TINY_METRIC, "from": str(clf), "runs_dir": str(root), "name": "emb"})
    full = metric_index.reference_set
    with pytest.MonkeyPatch.context() as mp:  # a tenth of the 24k reference items: the real build, quicker
        mp.setattr(metric_index, "reference_set", lambda ckpt, data_dir=None: tuple(a[::10] for a in
                                                                                  full(ckpt, data_dir)))
        metric_index.build_run_index(emb, {n: o.default for n, o in INDEX_OPTIONS.items()})
    acc = {"accuracy": 0.7, "hard_accuracy": 0.5}
    (emb / "resolve.json").write_text(json.dumps({
        "metric_run": str(emb), "classifier": str(clf), "k": 5, "index": "flat", "hard_classes": HARD,
        "threshold": 0.3, "threshold_source": "--threshold",
        "test": {"items": 10000, "classifier": acc, "resolved": {"accuracy": 0.71, "hard_accuracy": 0.52},
                 "re_decided": 50, "fixed": 30, "broken": 20}}))
    write_video_result(root / "detect" / "video-clip")

    # broken runs: each must become an error card
    broken = root / "classify" / "corrupt"
    shutil.copytree(clf, broken)
    (broken / "summary.json").write_text('{"status": "fini')  # cut mid-write
    half = root / "classify" / "halfway"
    half.mkdir()
    (half / "config.yaml").write_text("model: simple\n")  # start_run died before run.json
    badweights = root / "classify" / "badweights"
    shutil.copytree(clf, badweights)
    (badweights / "weights" / "best.pt").write_bytes(b"not a checkpoint")
    badindex = root / "metric" / "badindex"
    shutil.copytree(emb, badindex)
    with (badindex / "index" / "index.faiss").open("ab") as f:
        f.write(b"x")  # no longer the file index.json describes

    # outside the runs directory: a secret, and symlinks pointing at it from inside
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"SECRET-OUTSIDE-RUNS")
    shutil.copytree(clf, outside / "elsewhere")
    (root / "classify" / "elsewhere").symlink_to(outside / "elsewhere", target_is_directory=True)
    linked = root / "classify" / "linked"
    shutil.copytree(clf, linked)
    (linked / "curves.png").unlink()
    (linked / "curves.png").symlink_to(outside / "secret.png")
    return {"root": root, "base": base, "clf": clf, "emb": emb, "outside": outside}


@pytest.fixture(scope="module")
def app(served):
    from fashionkit.serve.app import create_app

    app = create_app(served["root"], include_bundled=False)
    lookups = app.state.lookups
    load = lookups.split

    def first_test_items(name):
        images, labels = load(name)
        return (images[:TEST_ITEMS], labels[:TEST_ITEMS]) if name == "test" else (images, labels)

    lookups.split = first_test_items
    served["state"] = tree_state(served["root"])  # before any request
    return app


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


# ---- runs --------------------------------------------------------------------------------------------------------

def test_runs_page_lists_runs_and_error_cards(client, served):
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert {"classify/clf", "metric/emb", "detect/video-clip", "classify/corrupt", "classify/halfway"} <= set(runs)
    assert runs["classify/clf"]["error"] is None and runs["classify/clf"]["kind"] == "classify"
    assert [p["file"] for p in runs["classify/clf"]["plots"]] == ["curves.png"]
    assert runs["metric/emb"]["index"]["kind"] == "flat" and runs["metric/emb"]["resolve"]["threshold"] == 0.3
    assert runs["detect/video-clip"]["kind"] == "video"
    assert "corrupted or half-written" in runs["classify/corrupt"]["error"]
    assert "no run.json" in runs["classify/halfway"]["error"]
    assert "classify/elsewhere" not in runs  # a run directory whose real place is outside --runs-dir
    html = client.get("/")
    assert html.status_code == 200 and html.headers["server-timing"].startswith("app;dur=")
    assert html.text.count('class="card error"') == 2 and "corrupted or half-written" in html.text
    assert 'href="/ambiguous?classifier=classify/clf"' in html.text
    page = client.get("/runs/metric/emb")
    assert page.status_code == 200 and "resolver: test accuracy" in page.text and "0.7000 → 0.7100" in page.text
    curves = client.get("/runs/classify/clf/files/curves.png")
    assert curves.status_code == 200 and curves.content[:4] == b"\x89PNG"
    assert "Content-Security-Policy" in curves.headers


@pytest.mark.parametrize("url", [
    "/runs/classify/clf/files/../../../outside/secret.png",
    "/runs/classify/clf/files/..%2F..%2F..%2Foutside%2Fsecret.png",
    "/runs/classify/clf/files/%2e%2e/%2e%2e/%2e%2e/outside/secret.png",
    "/runs/classify/clf/files/%252e%252e%252f%252e%252e%252fconfig.yaml",
    "/runs/classify/clf/files//etc/passwd",
    "/runs/classify/clf/files/config.yaml",  # inside the run, but not on the page's list of files
    "/runs/classify/clf/files/weights/best.pt",
    "/runs/classify/linked/files/curves.png",  # a symlink out of the runs directory
    "/runs/classify/elsewhere/files/curves.png",  # a run directory symlinked from outside
    "/runs/..%2F..%2Foutside/files/secret.png",
    "/runs/%2e%2e/outside/files/secret.png",
    "/img/test/..%2F..%2Fsecret.png",
    "/static/..%2F..%2F..%2Foutside%2Fsecret.png",
    "/static/%2e%2e/catalog.py",
    "/video/classify/..%2F..%2F..%2Foutside/frames/0.jpg",
    "/ambiguous?classifier=..%2F..%2Foutside%2Felsewhere",
    "/api/items/test/0?classifier=/etc",
])
def test_no_path_outside_the_runs_dir_is_reachable(client, url):
    r = client.get(url)
    assert r.status_code in (404, 400, 422), (url, r.status_code)
    assert b"SECRET-OUTSIDE-RUNS" not in r.content and b"root:" not in r.content
    assert b"model: simple" not in r.content and b"Traceback" not in r.content


def test_bundled_models_are_listed_after_the_runs(served, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from fashionkit.serve.app import create_app

    models = tmp_path / "models"
    shutil.copytree(served["clf"], models / "classifier")
    (models / "detector").mkdir()  # not a run: left out
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(models))
    client = TestClient(create_app(served["root"]))
    runs = client.get("/api/runs").json()["runs"]
    assert runs[-1]["id"] == "bundled/classifier" and runs[-1]["bundled"] and runs[-1]["error"] is None
    assert "bundled/detector" not in [r["id"] for r in runs]
    assert client.get("/runs/bundled/classifier/files/curves.png").content[:4] == b"\x89PNG"
    assert 'class="badge">bundled' in client.get("/").text
    assert "bundled/classifier" not in [r["id"] for r in TestClient(create_app(served["root"], include_bundled=False))
                                        .get("/api/runs").json()["runs"]]


def test_symlinked_plot_is_left_off_the_page(client):
    run = client.get("/api/runs/classify/linked").json()
    assert run["error"] is None and run["plots"] == []


# ---- ambiguous items ----------------------------------------------------------------------------------------------

def test_ranking_is_by_margin_and_filters_work(client, served):
    from fashionkit.data import load_split

    data = client.get("/api/ambiguous", params={"classifier": "classify/clf", "per_page": 500}).json()
    # the metric run chosen: one made from this classifier that loads (metric/badindex is newer, but broken)
    assert data["classifier"] == "classify/clf" and data["metric"] == "metric/emb"
    assert data["total"] == TEST_ITEMS and data["matching"] == TEST_ITEMS and data["pages"] == 4
    assert data["resolver"]["threshold"] == 0.3 and data["resolver"]["k"] == 5
    margins = [it["margin"] for it in data["items"]]
    assert margins == sorted(margins) and margins[0] < 0.1
    labels = load_split("test")[1].numpy()
    for it in data["items"][:20]:
        assert it["true"] == labels[it["index"]] and it["p1"] - it["p2"] == pytest.approx(it["margin"], abs=1e-6)
        assert it["p1"] >= it["p2"]

    clf = {"classifier": "classify/clf"}
    coats = client.get("/api/ambiguous", params={**clf, "true": "coat", "pred": "6", "per_page": 500}).json()
    assert coats["matching"] > 0 and all(it["true_name"] == "Coat" and it["resolved_name"] == "Shirt"
                                         for it in coats["items"])
    changed = client.get("/api/ambiguous", params={**clf, "show": "changed", "per_page": 500}).json()
    assert changed["matching"] == changed["changed"] > 0
    for it in changed["items"]:  # re-decided exactly as metric resolve's decide(): hard class, margin < 0.3, vote
        assert it["changed"] and it["top1"] in HARD and it["margin"] < 0.3 and it["resolved_name"] == it["vote"]
    wrong = client.get("/api/ambiguous", params={**clf, "show": "wrong", "page": 2, "per_page": 10}).json()
    assert wrong["page"] == 2 and all(not it["correct"] for it in wrong["items"])

    page = client.get("/ambiguous", params={**clf, "true": "4", "page": "1"})
    assert page.status_code == 200 and 0 < page.text.count('class="tile ') <= 48
    for bad, message in ((("true", "hat"), "not a Fashion-MNIST class"), (("show", "odd"), "show must be one of"),
                         (("page", "x"), "whole number")):
        r = client.get("/api/ambiguous", params=dict([bad]))
        assert r.status_code == 400 and message in r.json()["error"]


def test_ranking_is_computed_once_and_models_are_shared(app, client):
    lookups = app.state.lookups
    clf = app.state.catalog.get("classify/clf")
    results = []
    threads = [threading.Thread(target=lambda: results.append(lookups.classifier(clf))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    first = lookups.ranking(clf, app.state.catalog.get("metric/emb"))
    start = time.perf_counter()
    assert client.get("/ambiguous", params={"classifier": "classify/clf", "show": "wrong"}).status_code == 200
    assert time.perf_counter() - start < 2.0  # the cached ranking: no model runs for a page
    assert lookups.ranking(clf, app.state.catalog.get("metric/emb")) is first


# ---- item pages and uploads ---------------------------------------------------------------------------------------

def test_item_page_matches_metric_lookup(client, served):
    from fashionkit.metric.defaults import LOOKUP_OPTIONS
    from fashionkit.metric.lookup import lookup

    clf = {"classifier": "classify/clf"}
    ranked = client.get("/api/ambiguous", params={**clf, "true": "shirt"}).json()["items"]
    item = ranked[0]["index"]
    data = client.get(f"/api/items/test/{item}", params=clf).json()
    assert data["item"]["true_name"] == "Shirt" and data["doubt_rank"] >= 1
    probs = [p["probability"] for p in data["probabilities"]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
    expected = lookup(served["emb"], {**{n: o.default for n, o in LOOKUP_OPTIONS.items()}, "test_index": item,
                                      "out": str(served["base"] / "strip.png")})
    assert [(n["dataset_index"], n["class_name"]) for n in data["neighbours"]] == \
        [(n["dataset_index"], n["class_name"]) for n in expected["neighbours"]]
    assert [n["distance"] for n in data["neighbours"]] == pytest.approx([n["distance"] for n in expected["neighbours"]],
                                                                       abs=1e-5)
    r = data["resolver"]
    assert r["k"] == 5 and r["threshold"] == 0.3 and r["decision"] in CLASSES

    # a neighbour's own page: it is a reference item, so its own copy is left out of its neighbours
    neighbour = data["neighbours"][0]["dataset_index"]
    again = client.get(f"/api/items/train/{neighbour}", params={**clf, "k": 5}).json()
    assert len(again["neighbours"]) == 5 and neighbour not in [n["dataset_index"] for n in again["neighbours"]]
    page = client.get(f"/items/test/{item}", params=clf)
    assert page.status_code == 200 and 'id="probabilities"' in page.text
    assert f'href="/items/train/{neighbour}?' in page.text
    assert client.get(f"/img/train/{neighbour}.png").content[:4] == b"\x89PNG"
    assert client.get("/items/test/99999").status_code == 404
    assert client.get("/api/items/test/3", params={"k": 0}).status_code == 400


def test_upload_is_preprocessed_as_classify_predict(client, served, tmp_path):
    from PIL import Image

    from fashionkit.classify.predict import predict_files
    from fashionkit.data import load_split

    # a photo-sized product shot: a test item, dark on white, scaled up to 300x300 with a margin
    item = load_split("test")[0][7].numpy()
    big = 255 - np.asarray(Image.fromarray(item).resize((240, 240), Image.Resampling.BICUBIC))
    photo = np.full((300, 300), 255, np.uint8)
    photo[30:270, 30:270] = big
    path = tmp_path / "shot.jpg"
    Image.fromarray(photo).convert("RGB").save(path, quality=90)
    expected = predict_files(served["clf"], [path], top_k=10, device="cpu")[0]["predictions"]
    r = client.post("/api/lookup", files={"file": ("shot.jpg", path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [p["class_name"] for p in got["probabilities"]] == [p["class_name"] for p in expected]
    assert [p["probability"] for p in got["probabilities"]] == pytest.approx([p["probability"] for p in expected],
                                                                             abs=1e-5)
    assert len(got["neighbours"]) == 10 and got["upload"]["size"] == [300, 300]
    page = client.post("/upload", files={"file": ("shot.jpg", path.read_bytes(), "image/jpeg")},
                       data={"classifier": "classify/clf", "metric": "metric/emb"})
    assert page.status_code == 200 and "data:image/png;base64," in page.text and "shot.jpg" in page.text
    assert not list(served["root"].rglob("*shot*"))  # nothing of the upload lands in the runs directory


def test_upload_limits(client, monkeypatch):
    from fashionkit.serve import app as app_module

    assert client.post("/api/lookup").status_code == 400
    r = client.post("/api/lookup", files={"file": ("notes.png", b"this is text", "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    assert client.post("/api/lookup", files={"file": ("x.svg", svg, "image/svg+xml")}).status_code == 415
    assert client.post("/api/lookup", files={"file": ("e.png", b"", "image/png")}).status_code == 400
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 1000)
    r = client.post("/api/lookup", files={"file": ("big.png", png_bytes(np.random.default_rng(0).integers(
        0, 255, (64, 64), dtype=np.uint8)), "image/png")})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    monkeypatch.setattr(app_module, "MAX_UPLOAD_PIXELS", 100)
    r = client.post("/upload", files={"file": ("wide.png", png_bytes(np.zeros((20, 20), np.uint8)), "image/png")})
    assert r.status_code == 413 and 'id="error-card"' in r.text
    truncated = png_bytes(np.zeros((28, 28), np.uint8))[:40]
    monkeypatch.undo()
    r = client.post("/api/lookup", files={"file": ("cut.png", truncated, "image/png")})
    assert r.status_code in (400, 415) and "cut.png" in r.json()["error"] and "/tmp" not in r.json()["error"]


# ---- broken runs, video, read-only --------------------------------------------------------------------------------

@pytest.mark.parametrize("url,message", [
    ("/ambiguous?classifier=classify/badweights&metric=none", "cannot be loaded"),
    ("/items/test/1?classifier=classify/corrupt", "cannot be used"),
    ("/items/test/1?classifier=classify/clf&metric=metric/badindex", "do not belong together"),
    ("/ambiguous?classifier=classify/nosuch", "no run"),
    ("/ambiguous?classifier=metric/emb", "not a classify run"),
    ("/runs/classify/nosuch", "no run"),
])
def test_broken_or_unknown_runs_are_error_cards(client, url, message):
    r = client.get(url)
    assert r.status_code in (400, 404, 422) and 'id="error-card"' in r.text and message in r.text
    api = client.get("/api" + url)  # the JSON twin says the same
    assert api.status_code == r.status_code and message in api.json()["error"]


def test_video_result_page(client):
    data = client.get("/api/video/detect/video-clip").json()
    assert data["frame_count"] == 8 and set(data["items"]) == {"Coat", "Shirt", "Bag"}
    tracks = {t["track_id"]: t for t in data["tracks"]}
    assert tracks[1]["class_name"] == "Coat" and tracks[1]["frames"] == 8 and tracks[1]["agreement"] == 0.875
    assert tracks[2]["class_name"] == "Bag" and tracks[2]["first_frame"] == 5
    page = client.get("/runs/detect/video-clip")
    assert page.status_code == 200 and 'id="tracks"' in page.text and 'id="class-counts"' in page.text
    frame = client.get("/video/detect/video-clip/frames/3.jpg")
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
    assert client.get("/video/detect/video-clip/frames/99.jpg").status_code == 404
    assert client.get("/runs/detect/video-clip/files/annotated.mp4").headers["content-type"] == "video/mp4"


def test_serve_command(cli, capsys, monkeypatch, served, tmp_path):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    assert cli("serve", "--runs-dir", served["root"], "--port", 0) == 2
    assert "--port must lie between" in capsys.readouterr().err
    for threads, says in ((0, "at least 1, got 0"), (-1, "at least 1, got -1")):  # not "at least 0" for -1
        assert cli("serve", "--runs-dir", served["root"], "--threads", threads) == 2
        assert capsys.readouterr().err.strip() == f"error: --threads must be {says}"
    assert cli("serve", "--runs-dir", tmp_path / "none") == 2
    assert "runs directory not found" in capsys.readouterr().err
    assert cli("serve", "--runs-dir", served["root"], "--port", 8765) == 0
    assert started[-1] == {"host": "127.0.0.1", "port": 8765, "log_level": "warning"}
    assert "warning" not in capsys.readouterr().err
    assert cli("serve", "--runs-dir", served["root"], "--host", "0.0.0.0", "--port", 8766) == 0
    assert "warning: binding 0.0.0.0" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli("serve", "--runs-dir", served["root"], "--port", busy.getsockname()[1]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


# ---- a real browser ------------------------------------------------------------------------------------------------

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def live_server(app):
    """The app on uvicorn in a thread, on a free port of 127.0.0.1."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium")
    if not (os.path.exists(CHROMEDRIVER) and shutil.which("chromium")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_browser_runs_to_ambiguous_item_to_neighbour_and_upload(browser, live_server, served, tmp_path):
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(live_server + "/")
    assert "Runs" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.CSS_SELECTOR, ".card.error")  # the broken runs show as cards
    browser.save_screenshot(str(shots / "1-runs.png"))

    browser.find_element(By.CSS_SELECTOR, '[data-run="classify/clf"] a.button').click()
    tiles = browser.find_elements(By.CSS_SELECTOR, "#items a.tile")
    assert len(tiles) == 48
    first = tiles[0].get_attribute("data-index")
    img = tiles[0].find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 28  # the 28x28 item, loaded
    assert img.size["width"] >= 100  # shown large
    assert browser.execute_script("return getComputedStyle(arguments[0]).imageRendering", img) == "pixelated"
    browser.save_screenshot(str(shots / "2-ambiguous.png"))

    tiles[0].click()
    assert f"test item {first}" in browser.find_element(By.TAG_NAME, "h1").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities tr")
    assert len(bars) == 10
    neighbours = browser.find_elements(By.CSS_SELECTOR, "#neighbours a.tile")
    assert len(neighbours) == 10 and "d = " in neighbours[0].text
    browser.save_screenshot(str(shots / "3-item.png"))

    target = neighbours[0].get_attribute("data-index")
    neighbours[0].click()
    assert f"train item {target}" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#neighbours a.tile")) == 10
    browser.save_screenshot(str(shots / "4-neighbour.png"))

    from fashionkit.data import load_split

    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes(load_split("test")[0][0].numpy()))
    browser.get(live_server + "/upload")
    browser.find_element(By.ID, "file").send_keys(str(upload))  # choosing a file submits the form
    deadline = time.monotonic() + 30
    while "upload.png" not in browser.find_element(By.TAG_NAME, "h1").text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "upload.png" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#probabilities tr")) == 10
    browser.save_screenshot(str(shots / "5-upload.png"))

    browser.get(live_server + "/runs/detect/video-clip")
    assert browser.find_element(By.ID, "tracks").is_displayed()
    browser.save_screenshot(str(shots / "6-video.png"))
    for png in shots.iterdir():
        assert png.stat().st_size > 5000, png
    if os.environ.get("FASHIONKIT_SCREENSHOTS"):  # keep them for a person to look at
        shutil.copytree(shots, os.environ["FASHIONKIT_SCREENSHOTS"], dirs_exist_ok=True)


def test_runs_directory_was_only_read(client, served):
    """Last: after every page, upload and error above, the runs directory is byte-for-byte as it was."""
    assert tree_state(served["root"]) == served["state"]
