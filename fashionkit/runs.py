"""Run directories and atomic file writes.

Every command that makes something writes it into ``<runs-dir>/<stage>/<name>/``: the resolved
``config.yaml``, weights, ``metrics.csv``, plots and a ``summary.json``. Later stages take such a directory
as input. Files are written to a temporary name and renamed, so an interrupted run never leaves a
half-written checkpoint, index or summary behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fashionkit.errors import UserError

STAGES = ("data", "classify", "metric", "detect")
_UMASK = os.umask(0)
os.umask(_UMASK)


def runs_root(runs_dir: str | Path | None = None) -> Path:
    return Path(runs_dir or os.environ.get("FASHIONKIT_RUNS") or "runs")


def _writable(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise UserError(f"cannot write to {path}: {e.strerror or e}; choose another output directory") from None
    return path


def ensure_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check it is writable; a UserError says so if it is not."""
    return _writable(Path(path))


def new_run_dir(stage: str, name: str | None = None, runs_dir: str | Path | None = None,
                default_name: str = "train") -> Path:
    """Make a fresh run directory; an existing name gets a number appended (train, train2, train3, ...)."""
    parent = _writable(runs_root(runs_dir) / stage)
    base = name or default_name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", base):
        raise UserError(f"run name {base!r} may only contain letters, digits, '.', '_' and '-'")
    candidate, n = parent / base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = parent / f"{base}{n}"


def open_run(path: str | Path, stage: str | None = None, what: str = "run") -> Path:
    """Check that ``path`` is a run directory (of ``stage`` if given) and return it."""
    path = Path(path)
    if not path.is_dir():
        hint = f"; runs of this stage are under {runs_root() / stage}" if stage else ""
        raise UserError(f"{what} directory not found: {path}{hint}")
    summary = read_json(path / "run.json", missing_ok=True)
    if summary is None:
        raise UserError(f"{path} is not a fashionkit run directory (no run.json); pass a directory made by "
                        f"`{stage or 'fashionkit'} train`")
    if stage is not None and summary.get("stage") != stage:
        raise UserError(f"{path} is a {summary.get('stage')} run, not a {stage} run; pass a runs/{stage}/... directory")
    return path


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_save(write: Callable[[str], None], path: str | Path) -> Path:
    """Call ``write(tmp_path)`` (e.g. ``lambda p: torch.save(obj, p)``), then rename over ``path``."""
    return _atomic(path, write)


def replace_dir(tmp: Path, target: Path) -> Path:
    """Put the finished folder ``tmp`` in place of ``target``: the old one goes only once the new one is complete
    (a crash in between leaves ``.NAME.old`` beside it, never nothing)."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path, missing_ok: bool = False) -> Any:
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupted ({e.msg} at line {e.lineno}); re-create it") from None


def write_run_info(run: Path, stage: str, command: str, **extra: Any) -> None:
    """``run.json`` marks a directory as a run of ``stage`` so later stages can check what they are given."""
    atomic_write_json(run / "run.json", {"stage": stage, "command": command, **extra})


class MetricsCSV:
    """Append-only ``metrics.csv``; on resume, rows after ``keep_until`` epoch are dropped first."""

    def __init__(self, path: str | Path, keep_until: int | None = None):
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
            if keep_until is not None:
                rows = [r for r in rows if int(r["epoch"]) <= keep_until]
                self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)
        atomic_save(write, self.path)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.fields is None
        if new:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))


def start_run(stage: str, cfg: dict, make_trainer: Callable[[Path], Any], **info: Any) -> tuple[Path, Any]:
    """Make ``runs/<stage>/<name>``, save the resolved ``config.yaml`` and ``run.json``, then build the trainer.

    If building fails (bad data dir, unknown device, ...), the half-made directory is removed again, so a
    mistake leaves nothing behind.
    """
    from fashionkit.config import save_yaml

    run = new_run_dir(stage, cfg["name"], cfg["runs_dir"])
    try:
        save_yaml(cfg, run / "config.yaml")
        write_run_info(run, stage, "train", **info)
        return run, make_trainer(run)
    except BaseException:
        for name in ("config.yaml", "run.json", "metrics.csv"):
            (run / name).unlink(missing_ok=True)
        try:
            os.rmdir(run)
        except OSError:
            pass
        raise


def fit_run(trainer: Any, stage: str, plot_curves: Callable[[list[dict], Path, str], None],
            test: Callable[[], dict] | None) -> dict:
    """How ``classify train`` and ``metric train`` run a trainer to its end: ``trainer.loop()`` (returns how it
    ended); on Ctrl-C the summary says interrupted and the command that resumes is printed; at the end (main
    process) the curves and the summary with ``test()``'s figures, then that summary shared with every DDP process.

    The trainer has ``main``, ``run``, ``epoch``, ``metrics`` (a MetricsCSV), ``loop()`` and ``write_summary(status,
    **figures)``."""
    from fashionkit import distributed

    try:
        status = trainer.loop()
    except KeyboardInterrupt:
        if trainer.main:
            trainer.write_summary("interrupted")
            print(f"\ninterrupted: {trainer.epoch} finished epochs kept in {trainer.run / 'weights' / 'last.pt'} (a "
                  f"partial epoch is discarded); continue with: {stage} train --resume {trainer.run}", file=sys.stderr)
        raise
    summary = None
    if trainer.main:
        plot_curves(trainer.metrics.rows(), trainer.run / "curves.png", trainer.run.name)
        summary = trainer.write_summary(status, **(test() if test else {}))
    summary = distributed.share(summary)
    distributed.finish()
    return summary


def resume_point(run: str | Path, stage: str, read_checkpoint: Callable[[Path], dict]) -> tuple[Path, dict, dict]:
    """``(run, last checkpoint, saved config dict)`` of an interrupted run; a finished or empty run is refused."""
    from fashionkit.config import load_yaml

    run = open_run(run, stage)
    last = run / "weights" / "last.pt"
    if not last.is_file():
        raise UserError(f"{run} has no finished epoch to resume from (no weights/last.pt); start it again")
    ckpt = read_checkpoint(last)
    config = load_yaml(run / "config.yaml")
    summary = read_json(run / "summary.json", missing_ok=True) or {}
    if ckpt["epoch"] >= config.get("epochs", 0) or summary.get("status") in ("finished", "early_stopped"):
        raise UserError(f"{run} already finished ({ckpt['epoch']}/{config.get('epochs')} epochs); nothing to resume")
    return run, ckpt, config


def read_torch_checkpoint(path: str | Path, fmt: str, made_by: str) -> dict:
    """``torch.load`` a checkpoint of format ``fmt``; a damaged or foreign file is a UserError."""
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for damaged files
        raise UserError(f"cannot read checkpoint {path}: the file is corrupted or not a PyTorch checkpoint "
                        f"({type(e).__name__}); use another checkpoint or run `{made_by}` again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise UserError(f"{path} is not a fashionkit checkpoint of the right kind (made by `{made_by}`)")
    return ckpt


def newest_run(stage: str, runs_dir: str | Path | None = None, command: str = "train",
               statuses: tuple[str, ...] = ("finished", "early_stopped")) -> Path | None:
    """The most recently finished ``<stage> <command>`` run under the runs root (by its summary.json's time), or
    None: what a later stage builds on when the user names no run."""
    root = runs_root(runs_dir) / stage
    found = []
    for run in root.glob("*/"):
        try:
            info = read_json(run / "run.json", missing_ok=True)
            summary = read_json(run / "summary.json", missing_ok=True)
        except UserError:
            continue  # a damaged run is no candidate
        if (isinstance(info, dict) and info.get("stage") == stage and info.get("command") == command
                and isinstance(summary, dict) and summary.get("status") in statuses
                and (run / "weights" / "best.pt").is_file()):
            found.append(((run / "summary.json").stat().st_mtime, run))
    return max(found)[1] if found else None
