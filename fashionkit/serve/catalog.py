"""The runs the page can show, and the only files it may serve.

Runs are found by walking ``<runs-dir>/{classify,metric,detect}/*`` (and ``detect video`` outputs one or two
levels down), plus the bundled models (``fashionkit/models/{classifier,metric,detector}``) where installed. Each
gets an id, ``<group>/<name>`` (group: a stage or ``bundled``), and an allow-list of the files its page shows
(plots, the annotated video). A request names a run by id and a file by its place in that list: no path from a
request is ever joined onto the file system, and a file whose real path (symlinks followed) lies outside its run
directory -- or a run directory that lies outside ``--runs-dir`` -- is left out. Reading a run never writes to it.

A run that cannot be read (a corrupted summary.json, a half-written directory) is still listed, with the reason
in ``error``: the pages show it as an error card.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE_DIRS = ("classify", "metric", "detect")
BUNDLED = {"classifier": "classify", "metric": "metric", "detector": "detect"}  # bundled kind -> stage
PLOT_EXTS = (".png", ".jpg", ".jpeg")
# files that mark a directory as a (possibly half-written) run, so one without run.json still gets an error card
RUN_MARKERS = ("config.yaml", "summary.json", "weights", "metrics.csv")
# folders of images a detect run holds in bulk: never walked (a dataset has thousands of files)
SKIP_DIRS = {"images", "labels", "annotated", "weights", "ultralytics", "index", "lookups"}
SCAN_TTL = 2.0  # seconds a scan is reused: pages stay fresh while a run trains, requests stay cheap

# (label, glob relative to the run) of the plots each kind of run shows, in page order
PLOTS = {
    "classify": [("training curves", "curves.png"), ("confusion ({})", "eval/*/confusion.png"),
                 ("most confident mistakes ({})", "eval/*/mistakes.png")],
    "metric": [("training curves", "curves.png"), ("t-SNE of the test embedding", "tsne.png"),
               ("hard classes, classifier alone", "confusion_classifier.png"),
               ("hard classes, resolved", "confusion_resolved.png")],
    "detect": [("training curves", "ultralytics/results.png"), ("PR curve (val)", "ultralytics/BoxPR_curve.png"),
               ("PR curve (val)", "ultralytics/PR_curve.png"),
               ("confusion (val)", "ultralytics/confusion_matrix_normalized.png"),
               ("PR curve (test)", "test/BoxPR_curve.png"), ("PR curve (test)", "test/PR_curve.png"),
               ("confusion (test)", "test/confusion_matrix_normalized.png")],
    "video": [],
}


@dataclass
class Run:
    id: str  # "<group>/<name>": what URLs carry
    group: str  # classify, metric, detect or bundled
    name: str
    stage: str  # classify, metric or detect
    kind: str  # classify, metric, detect (a training run) or video (a detect video output)
    path: Path  # real path
    bundled: bool = False
    mtime: float = 0.0
    info: dict = field(default_factory=dict)  # run.json
    summary: dict = field(default_factory=dict)
    error: str | None = None
    status: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (label, value) headline figures
    plots: list[tuple[str, str]] = field(default_factory=list)  # (label, file key)
    files: dict[str, Path] = field(default_factory=dict)  # file key (relative path) -> real path: the allow-list
    extra: dict[str, Any] = field(default_factory=dict)  # index.json, resolve.json, ...

    def as_json(self) -> dict:
        return {"id": self.id, "name": self.name, "stage": self.stage, "kind": self.kind, "bundled": self.bundled,
                "path": str(self.path), "mtime": self.mtime, "status": self.status, "error": self.error,
                "figures": [{"label": k, "value": v} for k, v in self.figures],
                "plots": [{"label": k, "file": f, "url": f"/runs/{self.id}/files/{f}"} for k, f in self.plots],
                "summary": self.summary, **{k: v for k, v in self.extra.items() if k in ("index", "resolve")}}


def models_root() -> Path:
    from fashionkit import bundled

    return bundled.models_root()


def bundled_available() -> bool:
    return any((models_root() / kind / "run.json").is_file() for kind in BUNDLED)


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``'s real location (symlinks followed) lies inside the real ``root``."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, None when absent; a damaged file raises ValueError naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name} is corrupted or half-written ({e}); re-create it") from None
    except OSError as e:
        raise ValueError(f"{path.name} cannot be read ({e.strerror or e})") from None


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Catalog:
    """The runs under ``runs_dir`` (and the bundled models), rescanned at most every ``SCAN_TTL`` seconds."""

    def __init__(self, runs_dir: str | Path, include_bundled: bool = True):
        self.root = Path(runs_dir)
        self.include_bundled = include_bundled
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._scanned = -1e9

    def runs(self) -> dict[str, Run]:
        with self._lock:
            if time.monotonic() - self._scanned > SCAN_TTL:
                self._runs = self._scan()
                self._scanned = time.monotonic()
            return self._runs

    def get(self, run_id: str) -> Run | None:
        return self.runs().get(run_id)

    def of_kind(self, kind: str) -> list[Run]:
        """Healthy runs of ``kind``, newest first (bundled models last)."""
        return [r for r in self.ordered() if r.kind == kind and r.error is None]

    def ordered(self) -> list[Run]:
        return sorted(self.runs().values(), key=lambda r: (r.bundled, -r.mtime, r.id))

    # ---- scanning ---------------------------------------------------------------------------------------------

    def _scan(self) -> dict[str, Run]:
        found: dict[str, Run] = {}
        for stage in STAGE_DIRS:
            stage_dir = self.root / stage
            if not stage_dir.is_dir() or not inside(stage_dir, self.root):
                continue
            for child in sorted(stage_dir.iterdir()):
                if not child.is_dir() or child.name.startswith(".") or not inside(child, self.root):
                    continue
                run = self._load(stage, child.name, child, self.root)
                if run is not None:
                    found[run.id] = run
                if stage == "detect":  # `detect video --out` / `detect eval --video` outputs inside a run
                    for sub in _video_dirs(child, depth=3):  # e.g. RUN/eval/test/video of `detect eval --video`
                        if inside(sub, self.root):
                            rel = sub.relative_to(child).as_posix().replace("/", "~")
                            video = self._load(stage, f"{child.name}~{rel}", sub, self.root)
                            if video is not None:
                                found[video.id] = video
        if self.include_bundled:
            root = models_root()
            for kind, stage in BUNDLED.items():
                path = root / kind
                if path.is_dir() and (path / "run.json").is_file():
                    run = self._load(stage, kind, path, path, bundled=True)
                    if run is not None:
                        found[run.id] = run
        return found

    def _load(self, stage: str, name: str, path: Path, root: Path, bundled: bool = False) -> Run | None:
        is_video = (path / "detections.jsonl").is_file() or (path / "annotated.mp4").is_file()
        if not (path / "run.json").is_file() and not is_video and not any((path / m).exists() for m in RUN_MARKERS):
            return None  # not a run at all (a dataset folder, notes): not listed
        group = "bundled" if bundled else stage
        real = Path(os.path.realpath(path))
        run = Run(id=f"{group}/{name}", group=group, name=name, stage=stage, kind="video" if is_video else stage,
                  path=real, bundled=bundled)
        try:
            run.mtime = max((p.stat().st_mtime for p in (path / "summary.json", path / "run.json", path)
                             if p.exists()), default=0.0)
            run.info = _read_json(path / "run.json") or {}
            if not isinstance(run.info, dict):
                raise ValueError("run.json is not a JSON object; re-create it")
            if run.info and run.info.get("stage") not in (None, stage):
                raise ValueError(f"run.json says it is a {run.info.get('stage')} run, but it lies under {stage}/")
            if run.info.get("command") == "video":
                run.kind = "video"
            summary = _read_json(path / "summary.json")
            if summary is not None and not isinstance(summary, dict):
                raise ValueError("summary.json is not a JSON object; re-create it")
            run.summary = summary or {}
            if not run.info and not is_video:
                raise ValueError("no run.json: a half-written directory, or not made by fashionkit")
            run.status = str(run.summary.get("status") or ("complete" if run.summary else "running or interrupted "
                                                            "(no summary.json yet)"))
            self._files(run, root)
            FIGURES[run.kind](run)
        except ValueError as e:
            run.error = str(e)
        except Exception as e:  # anything else odd in a run's files is still its error card, not a failed page
            run.error = f"cannot read this run ({type(e).__name__}: {e})"
        return run

    def _files(self, run: Run, root: Path) -> None:
        def allow(rel: str) -> bool:
            p = run.path / rel
            if p.is_file() and inside(p, run.path) and inside(p, root):
                run.files[rel] = Path(os.path.realpath(p))
                return True
            return False

        for label, pattern in PLOTS[run.kind]:
            for p in sorted(run.path.glob(pattern)):
                rel = p.relative_to(run.path).as_posix()
                if p.suffix.lower() in PLOT_EXTS and allow(rel):
                    # a glob's `*` is the eval tag (test, test-tta, ...): it goes into the label
                    tag = p.parent.name if "{}" in label else ""
                    run.plots.append((label.format(tag), rel))
        if run.kind == "video":
            for rel in ("annotated.mp4", "detections.jsonl", "detections.csv", "summary.json"):
                allow(rel)


def _video_dirs(run_dir: Path, depth: int) -> list[Path]:
    out = []
    if depth == 0:
        return out
    try:
        children = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)
    except OSError:
        return out
    for child in children:
        if (child / "detections.jsonl").is_file():
            out.append(child)
        out += _video_dirs(child, depth - 1)
    return out


# ---- headline figures per kind ------------------------------------------------------------------------------

def _classify_figures(run: Run) -> None:
    s = run.summary
    f = run.figures
    f.append(("model", str(s.get("model") or run.info.get("model") or "?")))
    if "test_acc" in s:
        f.append(("test accuracy", _fmt(s["test_acc"])))
    if s.get("best_val_acc") is not None:
        f.append(("best val accuracy", _fmt(s["best_val_acc"])))
    if "epochs_done" in s:
        f.append(("epochs", f"{s['epochs_done']}/{s.get('epochs', '?')}"))
    if s.get("params"):
        f.append(("parameters", f"{int(s['params']):,}"))
    for eval_json in sorted(run.path.glob("eval/*/eval.json")):
        try:
            e = _read_json(eval_json)
            f.append((f"eval {eval_json.parent.name} accuracy", _fmt(e["accuracy"])))
        except (ValueError, KeyError, TypeError):
            f.append((f"eval {eval_json.parent.name}", "eval.json unreadable"))


def _metric_figures(run: Run) -> None:
    from fashionkit.data.fashion_mnist import CLASSES

    s = run.summary
    f = run.figures
    hard = s.get("hard_classes")
    if hard:
        f.append(("hard classes", ", ".join(CLASSES[c] for c in hard if 0 <= c < len(CLASSES))))
    if s.get("dim"):
        f.append(("embedding", f"{s['dim']}-d, {s.get('miner', '?')} miner"))
    test = s.get("test") or {}
    before, after = test.get("before") or {}, test.get("after") or {}
    if "precision_at_1" in after:
        f.append(("test precision@1", f"{_fmt(before.get('precision_at_1', float('nan')))} → "
                                      f"{_fmt(after['precision_at_1'])}"))
    if "map_at_r" in after:
        f.append(("test MAP@R", _fmt(after["map_at_r"])))
    try:
        index = _read_json(run.path / "index" / "index.json")
    except ValueError as e:
        index, run.extra["index_error"] = None, str(e)
    if isinstance(index, dict):
        run.extra["index"] = {k: index.get(k) for k in ("kind", "count", "dim", "params", "model_hash")}
        f.append(("FAISS index", f"{index.get('kind')}, {index.get('count')} items"))
    else:
        f.append(("FAISS index", "none (run `metric index`)"))
    try:
        resolved = _read_json(run.path / "resolve.json")
    except ValueError as e:
        resolved, run.extra["resolve_error"] = None, str(e)
    if isinstance(resolved, dict) and isinstance(resolved.get("test"), dict):
        run.extra["resolve"] = {k: resolved.get(k) for k in ("classifier", "k", "threshold", "threshold_source",
                                                            "hard_classes")}
        t = resolved["test"]
        try:
            f.append(("resolver: test accuracy", f"{_fmt(t['classifier']['accuracy'])} → "
                                                 f"{_fmt(t['resolved']['accuracy'])}"))
            f.append(("resolver: hard-class accuracy", f"{_fmt(t['classifier']['hard_accuracy'])} → "
                                                       f"{_fmt(t['resolved']['hard_accuracy'])}"))
            f.append(("re-decided", f"{t['re_decided']} ({t['fixed']} fixed, {t['broken']} broken), "
                                    f"threshold {_fmt(resolved['threshold'], 2)}"))
        except (KeyError, TypeError):
            f.append(("resolver", "resolve.json incomplete"))


def _detect_figures(run: Run) -> None:
    s = run.summary
    f = run.figures
    if "epochs_done" in s:
        f.append(("epochs", f"{s['epochs_done']}/{s.get('epochs_planned', '?')}"))
    for split in ("val", "test"):
        m = s.get(split)
        if isinstance(m, dict):
            m = m.get("metrics", m)
            for key in ("mAP50", "mAP50-95"):
                if key in m:
                    f.append((f"{split} {key}", _fmt(m[key])))


def _video_figures(run: Run) -> None:
    s = run.summary
    f = run.figures
    if "frames_processed" in s:
        f.append(("frames", f"{s['frames_processed']} processed of {s.get('frames_read')} read"))
    if s.get("fps"):
        f.append(("speed", f"{s['fps']} frames/s end to end"))
    if s.get("complete") is False:
        f.append(("incomplete", f"the input stopped at frame {s.get('stopped_at_frame')}"))
    items = s.get("items")
    if isinstance(items, dict) and items:
        f.append(("items", ", ".join(f"{name} {row.get('unique_tracks', row.get('detections'))}"
                                     for name, row in items.items() if isinstance(row, dict))))


FIGURES = {"classify": _classify_figures, "metric": _metric_figures, "detect": _detect_figures,
           "video": _video_figures}
