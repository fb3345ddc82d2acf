"""Rebuild the bundled models from scratch and package them, with model cards written from what is measured.

    .venv/bin/python benchmarks/build_models.py                     # all steps into ./runs, then package
    .venv/bin/python benchmarks/build_models.py --runs-dir /work/runs --reuse   # package runs made by hand; run
                                                                                # only the steps not finished yet
    .venv/bin/python benchmarks/build_models.py --runs-dir /work/runs --package-only
    .venv/bin/python benchmarks/build_models.py --runs-dir /work/runs --reuse --only detector  # one model anew
    .venv/bin/python benchmarks/build_models.py --extend runs/detect/<run>   # a detector trained further from
                                      # the bundled one (detect train --from fashionkit/models/detector ...)
    .venv/bin/python benchmarks/build_models.py --add-gate runs/detect/<copy>   # the gate made on a copy of the
                                      # bundled detector (detect reader <copy> --background 2 --role gate) into it
    .venv/bin/python benchmarks/build_models.py --tiny               # CI: tiny subsets/epochs into a temp --out

The recipe (runs root RUNS, given to every command as $FASHIONKIT_RUNS):

    classify train --name bundled-classifier --model vgg-small --epochs 25 --augment flip-rotate \
        --resize-from 0 --no-tta --label-smoothing 0.1
    metric train --from RUNS/classify/bundled-classifier --hard-classes 0,2,4,6 --name bundled-metric
    metric index RUNS/metric/bundled-metric
    metric resolve RUNS/metric/bundled-metric --classifier RUNS/classify/bundled-classifier
    detect make-data --preset realistic --out RUNS/detect/bundled-data   (the default scenes where this fashionkit
                                                                          has no --preset)
    detect train --from RUNS/classify/bundled-classifier --data RUNS/detect/bundled-data --minutes 60 \\
        --extra save_period=1 --name bundled-detector-start
    detect train --from RUNS/detect/bundled-detector-start --data RUNS/detect/bundled-data --minutes 60 \\
        --extra save_period=1 --name bundled-detector-more1 (the same detector, trained a second hour)
    detect train --from RUNS/detect/bundled-detector-more1 --data RUNS/detect/bundled-data --minutes 60 \\
        --extra save_period=1 --name bundled-detector-more2 (and a third)
    detect make-data --preset realistic --train 9000 --out RUNS/detect/scenes-9000-data   (three times the
                                                          training scenes; validation and test the same as above)
    detect train --from RUNS/detect/bundled-detector-more2 --data RUNS/detect/scenes-9000-data --minutes 60 \\
        --extra save_period=1 --name bundled-detector       (a fourth hour, on the 9,000 scenes)
    detect reader RUNS/detect/bundled-detector --data RUNS/detect/scenes-9000-data \\
        --from RUNS/classify/bundled-classifier --background 2 --role gate   (its gate: what is not an item)

then the detector's best.pt is exported to ONNX beside it (what ``detect video`` runs on a CPU). Each command runs
in this process through the product's own command line, so what the card records is what a user types. The runs
are copied slimmed into ``--out`` (default: the package's ``fashionkit/models/``): the files the commands that use
them read, the plots a person looks at, no optimizer state or last.pt; then ``card.md`` and ``card.json`` (commands,
data, seed, machine, test metrics, date, wall time per step, size and SHA-256 of every file) are written from the
runs' own summaries. Packaging is atomic per model: a failed build leaves the previous bundled model in place.

The wall-clock times are those of this machine, measured while whatever else ran on it ran too: the card records
the load average before and after each step so a shared machine shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faiss_bench import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MODELS = ROOT / "fashionkit" / "models"
NAMES = {"classifier": "bundled-classifier", "metric": "bundled-metric", "detector": "bundled-detector"}
# the detector trains in several runs: an hour from the classifier, then further hours each from the run before's
# best.pt (one ultralytics schedule of four hours might be better, but each hour is then a detector of its own,
# kept; BENCHMARKS.md compares them); the runs between the first and the last are bundled-detector-more1, ...
DETECTOR_START = "bundled-detector-start"
DETECTOR_MORE = [60.0, 60.0, 60.0]
DATA_NAME = "bundled-data"
# the training scenes of each further hour: 0, bundled-data's 3,000; more, a dataset of its own (scenes-N-data:
# the first N training scenes of the seed, so a larger one holds a smaller one's, and the same validation and test
# scenes). A fourth hour on the same 3,000 found more but named worse, on 9,000 it found more and named better on
# the validation clips (BENCHMARKS.md, "The bundled detector now")
MORE_SCENES = [0, 0, 9000]
# the gate beside the crop reader (`detect video --gate auto`): a reader of the ten classes and "not an item", taught
# 2 crops of background per training scene; on the validation clips F1 with the track's class 2.255 -> 2.378 summed
# (BENCHMARKS.md, "A reader that knows background")
GATE_BACKGROUND = 2


def scenes_data_name(scenes: int) -> str:
    return f"scenes-{scenes}-data"


def default_scenes(hours: int) -> list[int]:
    """MORE_SCENES for ``hours`` further hours: its last counts for the last hours, 0 before them."""
    return ([0] * hours + MORE_SCENES)[-hours:] if hours else []

# ship the ONNX export (fp32, about twice the fp16 best.pt: 12.8 of the bundle's MB) only when at most this big; by
# default not: `detect video` exports the bundled detector once into the user's cache (site-packages is never
# written to), which takes about a second
ONNX_LIMIT_MB = 0

# --tiny: every step on a few hundred items and one epoch, a quarter-width vgg-small (16x fewer FLOPs) so the
# 24,000-item index embeds in seconds: the whole build in about a minute on a 2-core CPU
# the bundled classifier is the default of `classify train` before vgg-fast replaced it (the bundled embedding and
# detector were trained on it); its flags are spelled out so the recipe keeps making the same model
CLASSIFIER = ["--model", "vgg-small", "--epochs", "25", "--augment", "flip-rotate", "--resize-from", "0", "--no-tta",
              "--label-smoothing", "0.1"]
TINY_SCENE_LOOK = ["--imgsz", "160", "--max-scale", "4.0", "--workers", "1"]
TINY_HELD_OUT = ["--val", "8", "--test", "4"]  # both tiny datasets: the same validation and test scenes
TINY = {
    "classify": ["--model-opts", "width=0.25", "--subset", "500", "--epochs", "1", "--lr", "0.02"],
    "metric": ["--subset", "1000", "--epochs", "2", "--batch-size", "64", "--m-per-class", "16",
               "--steps-per-epoch", "3", "--eval-subset", "200", "--plot-points", "100", "--dim", "32",
               "--head-hidden", "64"],
    "scenes": [*TINY_SCENE_LOOK, "--train", "16", *TINY_HELD_OUT],
    "more scenes": [*TINY_SCENE_LOOK, *TINY_HELD_OUT],  # its --train comes from the recipe
    "detect": ["--imgsz", "160", "--epochs", "1", "--batch", "8", "--reader-epochs", "1"],
}


# the recipe's steps each bundled model is made by (what its card lists, and what --only runs)
STEPS_OF = {"classifier": ["classify train"],
            "metric": ["classify train", "metric train", "metric index", "metric resolve"],
            "detector": ["classify train", "detect make-data", "detect make-data more", "detect train",
                         "detect train more", "detect reader gate"]}


@dataclass
class Step:
    key: str
    argv: list[str]
    done: bool  # its output exists and finished (what --reuse skips)
    run: Path | None = None  # the run directory it makes (an unfinished one there is refused, not overwritten)
    seconds: float | None = None
    cpu_seconds: float | None = None  # of this process, all threads (the commands run in it)
    reused: bool = False
    load: dict = field(default_factory=dict)

    def command(self, runs: Path) -> str:
        return f"FASHIONKIT_RUNS={shlex.quote(str(runs))} {shlex.join(self.argv)}"

    def record(self, runs: Path) -> dict:
        out = {"step": self.key, "command": self.command(runs), "wall_seconds": self.seconds,
               "cpu_seconds": self.cpu_seconds, "reused": self.reused, **self.load}
        if self.reused:  # made earlier (by hand): the time the run recorded itself, where it records one
            out["recorded_seconds"] = recorded_seconds(self.key, runs, self.run)
        return out


def recorded_seconds(key: str, runs: Path, run: Path | None = None) -> float | None:
    """The training time a reused run wrote into its own files (None where it keeps none)."""
    cls, met = runs / "classify" / NAMES["classifier"], runs / "metric" / NAMES["metric"]
    if key in ("classify train", "metric train"):
        s = read_json((cls if key == "classify train" else met) / "summary.json") or {}
        per, done = s.get("seconds_per_epoch"), s.get("epochs_done")
        return round(per * done, 1) if per and done else None
    if key == "metric index":
        meta = read_json(met / "index" / "index.json") or {}
        return round(meta.get("embed_seconds", 0) + meta.get("build_seconds", 0), 1) if meta else None
    if key in ("detect train", "detect train more") and run is not None:
        return (read_json(run / "summary.json") or {}).get("train_seconds")
    return None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def preset_available() -> bool:
    from fashionkit.detect.cli import MAKE_DATA_OPTIONS

    return "preset" in MAKE_DATA_OPTIONS


def detector_done(summary: dict) -> bool:
    return (summary.get("status") in ("finished", "early_stopped", "time_limit") and bool(summary.get("best"))
            and "mAP50" in (summary.get("test") or {}))


def recipe(runs: Path, detector_minutes: float, tiny: bool, more_minutes: list[float] | None = None,
           more_scenes: list[int] | None = None) -> list[Step]:
    """The build's steps. ``more_minutes``: the --minutes of each further detect train, each from the one before;
    empty: the detector trains once, straight into bundled-detector. ``more_scenes``: the training scenes of each
    further one (0: bundled-data's; more: a dataset of its own, made once per count)."""
    more_minutes = DETECTOR_MORE if more_minutes is None else more_minutes
    more_scenes = MORE_SCENES if more_scenes is None else more_scenes
    if len(more_scenes) != len(more_minutes):
        raise ValueError(f"{len(more_minutes)} further detect trains but {len(more_scenes)} scene counts")
    cls, met = runs / "classify" / NAMES["classifier"], runs / "metric" / NAMES["metric"]
    data = runs / "detect" / DATA_NAME
    more_data = {n: runs / "detect" / scenes_data_name(n) for n in dict.fromkeys(more_scenes) if n}
    # the detect runs in order: the first from the classifier, each further one from the one before, the last
    # being bundled-detector (the only one when there are no further ones)
    between = [f"bundled-detector-more{i}" for i in range(1, len(more_minutes))]
    names = [DETECTOR_START, *between, NAMES["detector"]] if more_minutes else [NAMES["detector"]]
    chain = [runs / "detect" / name for name in names]
    start = chain[0]
    extra = TINY if tiny else {k: [] for k in TINY}
    cls_sum, met_sum, start_sum = (read_json(p / "summary.json") or {} for p in (cls, met, start))
    resolved = read_json(met / "resolve.json") or {}
    preset = ["--preset", "realistic"] if preset_available() else []
    # save_period=1 keeps every epoch's checkpoint: the learning curve scenes_bench.py reads shorter budgets from
    def budget(minutes: float) -> list[str]:
        return [] if tiny else ["--minutes", f"{minutes:g}", "--extra", "save_period=1"]

    further = [Step("detect train more", ["detect", "train", "--from", str(before), "--data",
                                          str(more_data.get(scenes, data)), *budget(minutes), "--name", run.name,
                                          *extra["detect"]],
                    detector_done(read_json(run / "summary.json") or {}), run)
               for before, run, minutes, scenes in zip(chain, chain[1:], more_minutes, more_scenes)]
    # tiny: 16 training scenes more for each larger dataset (32, 48, ...), whatever the counts say
    make_more = [Step("detect make-data more", ["detect", "make-data", *preset, "--out", str(path), "--train",
                                                str(16 * (i + 2) if tiny else n), *extra["more scenes"]],
                      (path / "data.yaml").is_file(), path)
                 for i, (n, path) in enumerate(sorted(more_data.items()))]
    last = chain[-1]
    gate = last / "gate"
    # the gate learns the background of the last hour's scenes, from the classifier the readers start from
    make_gate = Step("detect reader gate", ["detect", "reader", str(last), "--data",
                                            str(more_data.get(more_scenes[-1], data) if more_scenes else data),
                                            "--from", str(cls), "--background", str(GATE_BACKGROUND), "--role",
                                            "gate", *(["--epochs", "1"] if tiny else [])],
                     (gate / "run.json").is_file() and (gate / "weights" / "best.pt").is_file())
    return [
        Step("classify train", ["classify", "train", "--name", NAMES["classifier"], *CLASSIFIER, *extra["classify"]],
             cls_sum.get("status") in ("finished", "early_stopped") and (cls / "weights/best.pt").is_file(), cls),
        Step("metric train", ["metric", "train", "--from", str(cls), "--hard-classes", "0,2,4,6", "--name",
                              NAMES["metric"], *extra["metric"]],
             met_sum.get("status") == "finished" and (met / "weights/best.pt").is_file(), met),
        Step("metric index", ["metric", "index", str(met)], (met / "index" / "index.json").is_file()),
        Step("metric resolve", ["metric", "resolve", str(met), "--classifier", str(cls)],
             Path(resolved.get("classifier", "-")).name == cls.name),  # as typed: relative or absolute
        Step("detect make-data", ["detect", "make-data", *preset, "--out", str(data), *extra["scenes"]],
             (data / "data.yaml").is_file(), data),
        *make_more,
        Step("detect train", ["detect", "train", "--from", str(cls), "--data", str(data), *budget(detector_minutes),
                              "--name", start.name, *extra["detect"]], detector_done(start_sum), start),
        *further,
        make_gate,
    ]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run_steps(steps: list[Step], runs: Path, reuse: bool, package_only: bool) -> None:
    from fashionkit.cli import main as fashionkit

    for step in steps:
        if step.done and (reuse or package_only):
            step.reused = True
            print(f"[build] reusing: {step.command(runs)}", flush=True)
            continue
        if package_only:
            raise SystemExit(f"error: --package-only, but this step has not finished: {step.command(runs)}")
        # a step whose run directory exists but is unfinished would make bundled-classifier2 etc.: refuse instead
        target = step.run
        if target is not None and target.exists():
            raise SystemExit(f"error: {target} exists ({'finished' if step.done else 'unfinished'}); pass --reuse "
                             f"to package what is finished, or remove it / choose another --runs-dir")
        print(f"[build] {step.command(runs)}", flush=True)
        before, start, cpu = load(), time.perf_counter(), time.process_time()
        code = fashionkit(step.argv)
        step.seconds = round(time.perf_counter() - start, 1)
        step.cpu_seconds = round(time.process_time() - cpu, 1)
        step.load = {"load_before": before, "load_after": load()}
        if code:
            raise SystemExit(f"error: step failed (exit {code}): {step.command(runs)}")
        print(f"[build] {step.key}: {step.seconds:.1f} s", flush=True)


# ---- packaging ------------------------------------------------------------------------------------------------

def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def slim_classifier_checkpoint(src: Path, dst: Path) -> None:
    """best.pt without anything a resume needs (optimizer, scheduler, RNG): only what loading it reads."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    keep = {k: ckpt[k] for k in ("format", "name", "options", "state_dict", "epoch", "metrics", "config") if k in ckpt}
    torch.save(keep, dst)


def slim_embedder_checkpoint(src: Path, dst: Path) -> None:
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    for key in ("optimizer", "scheduler", "best", "best_epoch"):
        ckpt.pop(key, None)
    torch.save(ckpt, dst)


def copy_files(run: Path, tmp: Path, rels: list[str], optional: list[str] = ()) -> None:
    for rel in list(rels) + list(optional):
        src = run / rel
        if not src.is_file():
            if rel in optional:
                continue
            raise SystemExit(f"error: {src} is missing; the run is not complete")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / rel)


def copy_classify_run(src: Path, dst: Path) -> None:
    """A crop reader or gate (a classify run inside a detect run), slimmed: what loading it reads."""
    copy_files(src, dst, ["run.json", "config.yaml", "summary.json"], [])
    (dst / "weights").mkdir()
    slim_classifier_checkpoint(src / "weights" / "best.pt", dst / "weights" / "best.pt")


def export_onnx(pt: Path) -> tuple[Path, float]:
    from fashionkit.detect.weights import onnx_file

    # exported afresh, so the card times an export (the gate step's detector may have made one already)
    pt.with_suffix(".onnx").unlink(missing_ok=True)
    start = time.perf_counter()
    return onnx_file(pt), round(time.perf_counter() - start, 1)


def manifest(root: Path) -> dict:
    from fashionkit.bundled import CARD_JSON, CARD_MD, sha256

    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (CARD_JSON, CARD_MD)}


def card_markdown(card: dict) -> str:
    m = card["machine"]
    lines = [f"# Bundled {card['kind']}: {card['headline']}", "",
             f"{card['description']}", "",
             f"- made: {card['date']} by fashionkit {card['fashionkit']} (commit {card['git_commit'] or 'unknown'})",
             f"- machine: {m['cpu']}; {m['cores']} cores; GPU: {m['gpu'] or 'none'} (torch {m['torch']})",
             f"- seed: {card['seed']}",
             f"- data: {card['data']}", *([f"- note: {card['note']}"] if card.get("note") else []), "",
             "## Commands (in this order; wall time on the machine above)", ""]
    for s in card["commands"]:
        took = (f"made earlier and reused (training time it recorded: {s.get('recorded_seconds')} s)" if s["reused"]
                else f"{s['wall_seconds']} s wall, {s.get('cpu_seconds')} s CPU")
        load = f", load average {s['load_before']} -> {s['load_after']}" if "load_before" in s else ""
        lines.append(f"    {s['command']}")
        lines.append(f"      {took}{load}")
        lines += [f"      {key}: {s[key]}" for key in ("from", "reader") if s.get(key)]  # --extend's step
    lines += ["", "## Test metrics", "", "```json", json.dumps(card["metrics"], indent=2), "```", "",
              "## Files", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {rel} | {meta['bytes']:,} | {meta['sha256'][:16]}... |" for rel, meta in card["files"].items()]
    lines += ["", f"Rebuild: `{card['rebuild']}`", ""]
    return "\n".join(lines)


def describe(kind: str, run: Path, runs: Path, reader_dir: Path | None = None
             ) -> tuple[str, str, dict, dict, int | None]:
    """(description, data, metrics, headline, seed) of a run from its own files (the detector's crop reader from
    ``reader_dir``, default the run)."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    summary = read_json(run / "summary.json") or {}
    if kind == "classifier":
        subset = f"a stratified subset of {cfg['subset']} items of" if cfg.get("subset") else ""
        data = (f"Fashion-MNIST: {subset} the 60,000 training items less {cfg.get('val_size')} held out for validation "
                f"(split seed {cfg.get('seed')}), augment {cfg.get('augment')}; test: the official 10,000 test items")
        metrics = {k: summary.get(k) for k in ("test_acc", "test_loss", "best_val_acc", "best_val_loss", "best_epoch",
                                               "epochs_done", "model", "params", "seconds_per_epoch", "precision")}
        return (f"{cfg.get('model')} classifier ({summary.get('params'):,} parameters), {summary.get('epochs_done')} "
                f"epochs", data, metrics, f"test accuracy {summary.get('test_acc', float('nan')):.4f}",
                cfg.get("seed"))
    if kind == "metric":
        resolved = read_json(run / "resolve.json") or {}
        index = read_json(run / "index" / "index.json") or {}
        test = summary.get("test", {})
        t = resolved.get("test", {})
        metrics = {"retrieval (hard-class test items vs train+val)": {k: test.get(k) for k in ("before", "after")},
                   "index": {k: index.get(k) for k in ("kind", "count", "dim")},
                   "resolve": {"threshold": resolved.get("threshold"), "k": resolved.get("k"),
                               "classifier": {k: t.get("classifier", {}).get(k) for k in ("accuracy", "hard_accuracy")},
                               "resolved": {k: t.get("resolved", {}).get(k) for k in ("accuracy", "hard_accuracy")},
                               "per_class_f1": {n: [t["classifier"]["per_class"][n]["f1"],
                                                    t["resolved"]["per_class"][n]["f1"]]
                                                for n in resolved.get("hard_class_names", [])},
                               "re_decided": t.get("re_decided"), "fixed": t.get("fixed"), "broken": t.get("broken")}}
        before = t.get("classifier", {}).get("hard_accuracy", float("nan"))
        after = t.get("resolved", {}).get("hard_accuracy", float("nan"))
        p1 = test.get("after", {}).get("precision_at_1", float("nan"))
        names = ", ".join(resolved.get("hard_class_names", []))
        data = (f"Fashion-MNIST, hard classes {summary.get('hard_classes')} ({names}); "
                f"trained on the bundled classifier's training items of those classes; the FAISS {index.get('kind')} "
                f"index holds {index.get('count')} training items; test: the official test items")
        return (f"{summary.get('dim')}-d triplet embedding on the bundled classifier's trunk ({summary.get('miner')} "
                f"miner, {summary.get('epochs_done')} epochs) with its FAISS index and the resolver's validation-swept "
                f"threshold", data, metrics,
                f"test P@1 {p1:.4f}; hard-class test accuracy {before:.4f} -> {after:.4f} with the resolver",
                cfg.get("seed"))
    test, val = summary.get("test") or {}, summary.get("val") or {}
    made = Path(summary.get("data") or "-").parent / "config.yaml"
    scenes = (yaml.safe_load(made.read_text()) if made.is_file() else None) or {}
    data = (f"synthetic scenes of Fashion-MNIST items from `detect make-data` ({summary.get('data')}): "
            f"{scenes.get('train')} train / {scenes.get('val')} val / {scenes.get('test')} test scenes of "
            f"{scenes.get('imgsz')} px, preset {scenes.get('preset', 'none (procedural backgrounds)')}, backgrounds "
            f"{scenes.get('backgrounds')}, seed {scenes.get('seed')}; train/val scenes use the train/val parts of "
            f"the training set, test scenes the official test items")
    metrics = {"test": test, "val": val, "epochs_done": summary.get("epochs_done"), "status": summary.get("status"),
               "train_images_per_s": summary.get("train_images_per_s"), "train_seconds": summary.get("train_seconds"),
               "params": summary.get("params")}
    headline = f"test mAP50 {test.get('mAP50', float('nan')):.3f}"
    reader = read_json((reader_dir or run) / "reader" / "summary.json")
    if reader:  # the crop reader: share of the test scenes' ground-truth crops named right, classifier -> reader
        metrics["reader_accuracy_tta"] = reader["accuracy_tta"]
        before, after = reader["accuracy_tta"]["classifier"]["test"], reader["accuracy_tta"]["reader"]["test"]
        if before is not None and after is not None:
            headline += f"; crop reader: test crops named right {before:.3f} -> {after:.3f}"
    gate = read_json((reader_dir or run) / "gate" / "summary.json")
    if gate:
        metrics["gate_accuracy_tta"] = gate_figures(gate)
    return (f"YOLO detector on the bundled classifier's backbone ({summary.get('description', '')})", data, metrics,
            headline, cfg.get("seed"))


def gate_figures(summary: dict) -> dict:
    """A gate's figures for its card, from its summary.json: the share of item crops named right among the ten
    classes, and of background crops it calls not an item (validation and test, six-view TTA)."""
    return {"items": summary["accuracy_tta"]["reader"],
            "background": (summary.get("background") or {}).get("named_not_item_tta")}


def package(kind: str, run: Path, out: Path, steps: list[Step], runs: Path, extra_steps: list[dict] = (),
            onnx_limit_mb: float = ONNX_LIMIT_MB, note: str = "", reader_from: Path | None = None) -> Path:
    """Copy the slimmed run into ``out/kind`` with its cards; replaces an older bundled model only when complete.
    ``reader_from``: the detector folder whose crop reader to ship when the run has none of its own."""
    from fashionkit.bundled import CARD_JSON, CARD_MD
    from fashionkit.runs import atomic_write_json, atomic_write_text, replace_dir

    tmp = out / f".{kind}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    common = ["run.json", "config.yaml", "summary.json"]
    if kind == "classifier":
        copy_files(run, tmp, common, ["curves.png", "metrics.csv"])
        (tmp / "weights").mkdir()
        slim_classifier_checkpoint(run / "weights" / "best.pt", tmp / "weights" / "best.pt")
    elif kind == "metric":
        copy_files(run, tmp, [*common, "index/index.faiss", "index/index.npz", "index/index.json", "resolve.json"],
                   ["curves.png", "tsne.png", "metrics.csv", "confusion_classifier.png", "confusion_resolved.png"])
        (tmp / "weights").mkdir()
        slim_embedder_checkpoint(run / "weights" / "best.pt", tmp / "weights" / "best.pt")
    else:
        summary = read_json(run / "summary.json") or {}
        best = Path(summary["best"])
        onnx = (run / best).with_suffix(".onnx")
        ship_onnx = onnx.is_file() and onnx.stat().st_size <= onnx_limit_mb * 2**20
        copy_files(run, tmp, [*common, "model.yaml", str(best)] + ([str(best.with_suffix(".onnx"))] * ship_onnx),
                   ["ultralytics/results.csv", "ultralytics/results.png", "test/BoxPR_curve.png",
                    "test/confusion_matrix_normalized.png"])
        if ship_onnx:  # the export must not look older than best.pt, or detect video would export again
            os.utime(tmp / best.with_suffix(".onnx"), (time.time() + 1, time.time() + 1))
        # the crop reader `detect video --track` names tracks with, and the gate it asks what is not an item
        for name in ("reader", "gate"):
            made = next((d for d in (run, reader_from) if d is not None
                         and (d / name / "weights" / "best.pt").is_file()), None)
            if made is not None:
                copy_classify_run(made / name, tmp / name)
    description, data, metrics, headline, seed = describe(kind, run, runs, tmp)
    used = STEPS_OF[kind]
    import fashionkit

    card = {"kind": kind, "headline": headline, "description": description, "run": NAMES[kind],
            "source_run": str(run), "commands": [s.record(runs) for s in steps if s.key in used] + list(extra_steps),
            "data": data, "seed": seed, "machine": machine(), "metrics": metrics,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fashionkit": fashionkit.__version__, "git_commit": git_commit(),
            "rebuild": "python benchmarks/build_models.py", "note": note, "files": manifest(tmp)}
    card["bytes"] = sum(f["bytes"] for f in card["files"].values())
    atomic_write_json(tmp / CARD_JSON, card)
    atomic_write_text(tmp / CARD_MD, card_markdown(card))
    return replace_dir(tmp, out / kind)


def train_command(run: Path) -> str:
    """The ``detect train`` command that made ``run``, from its config.yaml: every option not at its default."""
    import yaml

    from fashionkit.config import flag
    from fashionkit.detect.defaults import TRAIN_OPTIONS

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    argv = ["detect", "train"]
    for name, opt in TRAIN_OPTIONS.items():
        value = cfg.get(name, opt.default)
        if value == opt.default:
            continue
        if isinstance(opt.default, bool) and opt.type is None:
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            argv += [flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    return f"FASHIONKIT_RUNS={shlex.quote(str(run.parent.parent))} {shlex.join(argv)}"


def extend_steps(run: Path, out: Path) -> tuple[list[dict], str]:
    """--extend: the bundled detector's recorded commands, then those of ``run``, trained further from it, and the
    bundled card's note. The runs of the earlier hours need not exist any more: the bundled card is their record."""
    from fashionkit.bundled import CARD_JSON

    bundled = (out / "detector").resolve()
    card = read_json(bundled / CARD_JSON)
    summary = read_json(run / "summary.json") or {}
    if card is None:
        raise SystemExit(f"error: --extend: no bundled detector card in {bundled} to extend; build the detector "
                         f"with the recipe instead (--only detector)")
    if not detector_done(summary):
        raise SystemExit(f"error: --extend {run}: not a finished detect run with test metrics (its summary.json); "
                         f"let `detect train` finish or choose another run")
    source = Path(str(summary.get("from", "")))
    sources = {source.resolve(), (ROOT / source).resolve()}
    # the bundled detector itself, or a copy of it (the same card: e.g. a trial --out made by copying the package)
    same = bundled in sources or any((d / CARD_JSON).is_file() and (d / CARD_JSON).read_bytes()
                                     == (bundled / CARD_JSON).read_bytes() for d in sources)
    if summary.get("source") != "detector" or not same:
        raise SystemExit(f"error: --extend {run}: it was trained --from {summary.get('from')}, not from the bundled "
                         f"detector {bundled}; train it with `detect train --from {bundled} ...`")
    if Path(card.get("source_run", "")).resolve() == run.resolve():
        raise SystemExit(f"error: --extend {run}: it is the bundled detector already")
    before = [c for c in card.get("commands", []) if c.get("step") != "onnx export"]
    step = {"step": "detect train more", "command": train_command(run), "wall_seconds": None, "reused": True,
            "recorded_seconds": summary.get("train_seconds"),
            "from": f"the bundled detector then ({card.get('headline')}; its card dated {card.get('date')})"}
    if not (run / "reader" / "weights" / "best.pt").is_file():
        step["reader"] = "none of its own: the bundled detector's crop reader ships with it"
    return [*before, step], card.get("note") or ""


def reader_command(made: Path) -> str:
    """The ``detect reader`` command that made the reader or gate ``made`` (RUN/reader, RUN/gate), from its
    summary.json: its data, classifier and every option not at its default."""
    from fashionkit.config import flag
    from fashionkit.detect.defaults import READER_OPTIONS

    s = read_json(made / "summary.json") or {}
    argv = ["detect", "reader", str(s.get("detect_run", made.parent)), "--data", str(s.get("data", "?")), "--from",
            str(s.get("classifier_run", "?"))]
    for name, value in (s.get("options") or {}).items():
        if name in READER_OPTIONS and value != READER_OPTIONS[name].default:
            argv += [flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(argv)


def add_gate(run: Path, out: Path) -> dict:
    """--add-gate: ``RUN/gate`` (``detect reader RUN --background 2 --role gate``, RUN a copy of the bundled detector)
    into the bundled detector as ``gate/``, running nothing: its card gains the step, the gate's figures and files;
    the rest of the bundled detector stays as it is. Atomic: a failure leaves the bundled detector unchanged."""
    from fashionkit.bundled import CARD_JSON, CARD_MD
    from fashionkit.detect.reader import gate_of
    from fashionkit.runs import atomic_write_json, atomic_write_text, file_sha256, replace_dir

    bundled = (out / "detector").resolve()
    card = read_json(bundled / CARD_JSON)
    if card is None:
        raise SystemExit(f"error: --add-gate: no bundled detector card in {bundled}; build the detector with the "
                         f"recipe instead (--only detector), which makes its gate too")
    gate = gate_of(run)
    if gate is None:
        raise SystemExit(f"error: --add-gate {run}: it has no finished gate (RUN/gate); make one with `detect reader "
                         f"{run} --background {GATE_BACKGROUND} --role gate`")
    best = str((read_json(bundled / "summary.json") or {}).get("best", "ultralytics/weights/best.pt"))
    if not (run / best).is_file() or file_sha256(run / best) != card["files"].get(best, {}).get("sha256"):
        raise SystemExit(f"error: --add-gate {run}: its detector ({best}) is not the bundled one, whose boxes the "
                         f"gate must have learned from; copy the bundled detector (cp -r {bundled} runs/detect/mine), "
                         f"make the gate on the copy and pass that")
    summary = read_json(gate / "summary.json") or {}
    tmp = out / ".detector.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundled, tmp)
    shutil.rmtree(tmp / "gate", ignore_errors=True)
    copy_classify_run(gate, tmp / "gate")
    step = {"step": "detect reader gate", "command": reader_command(gate), "wall_seconds": None, "reused": True,
            "recorded_seconds": (summary.get("seconds") or {}).get("total"),
            "from": f"{run}: a copy of the bundled detector (the same {best}); added to the bundled detector "
                    f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d')} by --add-gate on {cpu_name()}"}
    commands = [c for c in card["commands"] if c.get("step") != "detect reader gate"]
    at = next((i for i, c in enumerate(commands) if c.get("step") == "onnx export"), len(commands))
    card["commands"] = [*commands[:at], step, *commands[at:]]
    card["metrics"]["gate_accuracy_tta"] = gate_figures(summary)
    card["files"] = manifest(tmp)
    card["bytes"] = sum(f["bytes"] for f in card["files"].values())
    atomic_write_json(tmp / CARD_JSON, card)
    atomic_write_text(tmp / CARD_MD, card_markdown(card))
    replace_dir(tmp, bundled)
    return card


def check_bundle(out: Path) -> dict:
    """Every packaged model loads through the code paths the commands use, from ``out``."""
    from fashionkit import bundled
    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.detect.tracks import load_gate
    from fashionkit.detect.weights import weights_file
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder

    saved = os.environ.get(bundled.ENV)
    os.environ[bundled.ENV] = str(out)
    try:
        load_run_model(bundled.bundled_run("classifier"))
        metric = bundled.bundled_run("metric")
        open_run_index(metric, load_embedder(metric)[1]["model_hash"])
        detector = bundled.bundled_run("detector")
        weights_file(detector)
        load_gate({"gate": "auto"}, detector, "cpu")  # what `detect video --gate auto` opens, if it has one
        return {kind: bundled.message(kind) for kind in bundled.KINDS}
    finally:
        if saved is None:
            os.environ.pop(bundled.ENV)
        else:
            os.environ[bundled.ENV] = saved


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs-dir", default=None, help="runs root of the build (default: ./runs; --tiny: OUT/runs)")
    p.add_argument("--out", default=None, help=f"where the packaged models go (default: {PACKAGE_MODELS}; --tiny: "
                   "a new temporary folder)")
    p.add_argument("--reuse", action="store_true", help="skip a step whose run already finished (packages runs "
                   "made by hand with the same commands without retraining)")
    p.add_argument("--package-only", action="store_true", help="run nothing: package the finished runs")
    p.add_argument("--detector-minutes", type=float, default=60.0, help="detect train --minutes (default: 60)")
    more_default = ",".join(f"{m:g}" for m in DETECTOR_MORE)
    p.add_argument("--detector-more-minutes", default=more_default,
                   help="--minutes of each further detect train, comma-separated, each from the detector before "
                   f"(default: {more_default}: a second, third and fourth hour; 0: train the detector once)")
    scenes_default = ",".join(str(n) for n in MORE_SCENES)
    p.add_argument("--detector-more-scenes", default=None, help="training scenes of each further detect train, "
                   "comma-separated, one per --detector-more-minutes (0: the first dataset's 3,000; more: a dataset "
                   "of that many, made once per count, the same validation and test scenes; default: "
                   f"{scenes_default}, the last of these for the last hours when there are fewer, 0 for the first "
                   "when more)")
    p.add_argument("--onnx-limit-mb", type=float, default=ONNX_LIMIT_MB, help="ship the detector's ONNX export "
                   f"when it is at most this many MB (default: {ONNX_LIMIT_MB:g}; 0: never)")
    p.add_argument("--only", default=None, help="comma-separated models to (re)build and package: "
                   "classifier, metric, detector (default: all three; with --extend the detector); the others in "
                   "--out stay as they are")
    p.add_argument("--extend", default=None, metavar="RUN", help="package the detect run RUN, trained further from "
                   "the bundled detector (detect train --from fashionkit/models/detector ...), as the bundled "
                   "detector, running nothing: its card lists the bundled card's commands, then RUN's; the crop "
                   "reader is RUN's own, else the bundled one's (for when the earlier hours' runs are gone)")
    p.add_argument("--add-gate", default=None, metavar="RUN", help="add RUN/gate (`detect reader RUN --background "
                   f"{GATE_BACKGROUND} --role gate`, RUN a copy of the bundled detector) to the bundled detector as "
                   "its gate, running nothing else: its card gains the step and the gate's figures")
    p.add_argument("--note", default="", help="a sentence for the cards of the models packaged now (how the runs "
                   "were made where the commands alone do not say it, e.g. the CPU's limits)")
    p.add_argument("--tiny", action="store_true", help="CI: tiny subsets and one epoch, into a temporary --out "
                   "(never the package's models)")
    p.add_argument("--results", default=None, help="JSON of the build's steps and cards (default: "
                   "benchmarks/results/build_models.json; --tiny: OUT/build_models.json)")
    args = p.parse_args(argv)
    if args.add_gate:
        if args.extend or args.only or args.tiny:
            raise SystemExit("error: --add-gate changes the bundled detector alone; leave out --extend, --only and "
                             "--tiny")
        out = Path(args.out) if args.out else PACKAGE_MODELS
        card = add_gate(Path(args.add_gate).resolve(), out)
        result = {"out": str(out), "added_gate": args.add_gate, "machine": machine(), "bytes": card["bytes"],
                  "step": next(c for c in card["commands"] if c.get("step") == "detect reader gate"),
                  "gate_accuracy_tta": card["metrics"]["gate_accuracy_tta"], "messages": check_bundle(out)}
        results = Path(args.results) if args.results else ROOT / "benchmarks" / "results" / "build_models_gate.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[build] added {args.add_gate}/gate to {out / 'detector'} ({card['bytes'] / 2**20:.2f} MB); wrote "
              f"{results}", flush=True)
        return result
    only = args.only if args.only is not None else ("detector" if args.extend else ",".join(NAMES))
    kinds = [k.strip() for k in only.split(",") if k.strip()]
    if not kinds or set(kinds) - set(NAMES):
        raise SystemExit(f"error: --only {only!r}: choose from {', '.join(NAMES)}")

    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="fashionkit-tiny-models-")) if args.tiny
                                           else PACKAGE_MODELS)
    if args.tiny and out.resolve() == PACKAGE_MODELS.resolve():
        raise SystemExit(f"error: --tiny never writes over the bundled models in {PACKAGE_MODELS}; choose another "
                         f"--out")
    runs = Path(args.runs_dir) if args.runs_dir else (out / "runs" if args.tiny else Path("runs"))
    runs = runs.resolve()
    os.environ["FASHIONKIT_RUNS"] = str(runs)
    out.mkdir(parents=True, exist_ok=True)
    if not args.tiny and not preset_available():
        print("[build] note: this fashionkit's `detect make-data` has no --preset; the detector is trained on the "
              "default scenes", flush=True)

    start = time.perf_counter()
    needed = {key for kind in kinds for key in STEPS_OF[kind]}
    try:
        more = [float(m) for m in args.detector_more_minutes.split(",") if m.strip()]
    except ValueError:
        raise SystemExit(f"error: --detector-more-minutes {args.detector_more_minutes!r}: give minutes, "
                         f"comma-separated, e.g. 60,60 (0: none)") from None
    more = [] if more == [0] else more
    if any(m <= 0 for m in more):
        raise SystemExit(f"error: --detector-more-minutes {args.detector_more_minutes!r}: each must be above 0 (or 0 "
                         f"alone: none)")
    try:
        scenes = ([int(n) for n in args.detector_more_scenes.split(",") if n.strip()]
                  if args.detector_more_scenes is not None else default_scenes(len(more)))
    except ValueError:
        scenes = [-1]
    if any(n < 0 for n in scenes) or len(scenes) != len(more):
        raise SystemExit(f"error: --detector-more-scenes {args.detector_more_scenes!r}: give {len(more)} whole "
                         f"numbers of scenes, comma-separated, one per --detector-more-minutes (0: the first "
                         f"dataset's)")
    extend = Path(args.extend).resolve() if args.extend else None
    if extend is not None and kinds != ["detector"]:
        raise SystemExit("error: --extend packages a detector only; give --only detector or leave --only out")
    steps = [s for s in recipe(runs, args.detector_minutes, args.tiny, more, scenes)
             if s.key in needed] if extend is None else []
    run_steps(steps, runs, args.reuse, args.package_only)
    after_steps = None
    note = args.note
    if "detector" in kinds:
        det = extend or runs / "detect" / NAMES["detector"]
        if extend is not None:
            after_steps, before = extend_steps(extend, out)
            note = "; ".join(filter(None, [note, f"the card before this run: {before}" if before else ""]))
        else:
            after_steps = []
            if (read_json(det / "reader" / "run.json") or {}).get("command") == "detect reader":  # made by hand after
                r = read_json(det / "reader" / "summary.json") or {}
                after_steps.append({"step": "detect reader", "command": f"FASHIONKIT_RUNS={shlex.quote(str(runs))} "
                                    + reader_command(det / "reader"), "wall_seconds": None, "reused": True,
                                    "recorded_seconds": (r.get("seconds") or {}).get("total")})
        best = det / (read_json(det / "summary.json") or {})["best"]
        onnx_path, onnx_seconds = export_onnx(best)
        after_steps.append({"step": "onnx export", "command": f"(detect video's first use) export of {best} to "
                            f"{onnx_path.name}", "wall_seconds": onnx_seconds, "reused": False})
    made = {}
    for kind, stage in (("classifier", "classify"), ("metric", "metric"), ("detector", "detect")):
        if kind not in kinds:
            continue
        run = det if kind == "detector" else runs / stage / NAMES[kind]
        target = package(kind, run, out, steps, runs, after_steps if kind == "detector" else [],
                         args.onnx_limit_mb, note, reader_from=out / "detector" if extend is not None else None)
        made[kind] = read_json(target / "card.json")
        print(f"[build] packaged {target} ({made[kind]['bytes'] / 2**20:.2f} MB): {made[kind]['headline']}",
              flush=True)
    messages = check_bundle(out)
    result = {"out": str(out), "runs": str(runs), "tiny": args.tiny, "machine": machine(),
              "total_wall_seconds": round(time.perf_counter() - start, 1),
              "steps": [s.record(runs) for s in steps] + (after_steps or []),
              "bytes": {kind: card["bytes"] for kind, card in made.items()},
              "headlines": {kind: card["headline"] for kind, card in made.items()}, "messages": messages}
    results = Path(args.results) if args.results else (out / "build_models.json" if args.tiny
                                                          else ROOT / "benchmarks" / "results" / "build_models.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[build] done in {result['total_wall_seconds']:.0f} s; wrote {results}", flush=True)
    return result


if __name__ == "__main__":
    main()
