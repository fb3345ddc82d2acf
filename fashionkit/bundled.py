"""The bundled models: a default classifier, the hard-class embedding with its FAISS index, and a detector, shipped
inside the package so the product's commands work on a fresh install.

Each is an ordinary run directory under ``fashionkit/models/`` -- ``classifier/`` (a classify run), ``metric/`` (a
metric run with its ``index/``), ``detector/`` (a detect run, with the ONNX export beside its best.pt) -- plus a
model card: ``card.md`` for people and ``card.json`` for programs (the exact commands that made it, data, seed,
machine, test metrics, date, and the size and SHA-256 of every file). ``benchmarks/build_models.py`` makes them.

``FASHIONKIT_MODELS_DIR`` points at another folder of the same layout (tests use tiny stand-ins this way).

A named run always wins: commands call :func:`bundled_run` only when the user named none, and then say so in one
line (:func:`announce`). The package is never written to: outputs of commands that use a bundled model go under
the runs root, and the detector's ONNX export is shipped rather than made on first use.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fashionkit.errors import UserError

ENV = "FASHIONKIT_MODELS_DIR"
REBUILD = "python benchmarks/build_models.py"
CARD_JSON, CARD_MD = "card.json", "card.md"

# kind -> (stage of its run directory, how a user names their own instead, what it is called in messages)
KINDS = {
    "classifier": ("classify", "pass a run (runs/classify/<run>) for your own", "classifier"),
    "metric": ("metric", "pass a run (runs/metric/<run>) for your own", "embedding"),
    "detector": ("detect", "pass --weights runs/detect/<run> for your own", "detector"),
}


def models_root() -> Path:
    """``$FASHIONKIT_MODELS_DIR`` if set, else the ``models/`` folder of the installed package."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "models"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown bundled model kind {kind!r}; one of {', '.join(KINDS)}")


def bundled_dir(kind: str) -> Path:
    _check_kind(kind)
    return models_root() / kind


def available(kind: str) -> bool:
    """Whether a bundled model of this kind is installed (its card exists); says nothing about its health."""
    return (bundled_dir(kind) / CARD_JSON).is_file()


def is_bundled(path: str | Path) -> bool:
    """Whether ``path`` lies inside the bundled models folder (which commands must never write to)."""
    try:
        Path(path).resolve().relative_to(models_root().resolve())
        return True
    except ValueError:
        return False


def _broken(path: Path, what: str) -> UserError:
    return UserError(f"bundled model file {path} is {what}; reinstall fashionkit, or rebuild the bundled models "
                     f"from a source checkout with `{REBUILD}`")


def sha256(path: Path) -> str:
    from fashionkit.runs import file_sha256

    return file_sha256(path)


def card(kind: str) -> dict:
    """The parsed ``card.json`` of a bundled model; missing or unreadable is a UserError."""
    path = bundled_dir(kind) / CARD_JSON
    if not path.is_file():
        if not bundled_dir(kind).exists():
            raise UserError(f"no bundled {KINDS[kind][2]} in {models_root()} ({path} is missing); "
                            f"{KINDS[kind][1].replace(' for your own', '')}, or build the bundled models with "
                            f"`{REBUILD}`")
        raise _broken(path, "missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise _broken(path, "corrupted (not readable JSON)") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise _broken(path, "corrupted (no file list)")
    return data


def bundled_run(kind: str, verify: bool = True) -> Path:
    """The bundled run directory of ``kind`` (classifier, metric, detector). Every file its card lists must exist
    with the recorded size and SHA-256 (``verify``: a few MB of hashing, tens of milliseconds); otherwise a one-line
    UserError names the file and the rebuild command."""
    root = bundled_dir(kind)
    files = card(kind)["files"]
    for rel, meta in files.items():
        path = root / rel
        if not path.is_file():
            raise _broken(path, "missing")
        if not os.access(path, os.R_OK):
            raise _broken(path, "not readable")
        if path.stat().st_size != meta.get("bytes"):
            raise _broken(path, f"corrupted ({path.stat().st_size} bytes, the card says {meta.get('bytes')})")
        if verify and sha256(path) != meta.get("sha256"):
            raise _broken(path, "corrupted (its SHA-256 differs from the card's)")
    return root


def headline(kind: str) -> str:
    """The card's one-phrase figure of merit, e.g. ``test mAP50 0.803``."""
    return str(card(kind).get("headline") or "no test figure recorded")


def message(kind: str) -> str:
    _check_kind(kind)
    return f"using the bundled {KINDS[kind][2]}: {headline(kind)}; {KINDS[kind][1]}"


def announce(kind: str) -> Path:
    """:func:`bundled_run` plus the one line saying so (on stderr, so --json output stays clean)."""
    run = bundled_run(kind)
    print(message(kind), file=sys.stderr, flush=True)
    return run


def output_home(run: str | Path, kind: str) -> Path:
    """Where a command writes what it makes from ``run`` by default: the run itself, or for a bundled model (the
    installed package is read-only) ``<runs root>/bundled/<kind>``."""
    from fashionkit.runs import runs_root

    return runs_root() / "bundled" / kind if is_bundled(run) else Path(run)


def split_run(positionals: list[str], named: str | None, kind: str, most: int | None = None) -> tuple[Path, list[str]]:
    """``(run, the other arguments)`` for commands whose run is optional: ``--run`` if given, else a first
    argument that is a directory, else the bundled model of ``kind`` (announced). ``most``: how many other
    arguments the command takes; they are image files, and one that does not exist is said before the bundled model
    is announced, so that the mistake is the one line printed."""
    stage = KINDS[kind][0]
    run_first = bool(positionals) and Path(positionals[0]).is_dir()
    for other in positionals[1:] if run_first else positionals:
        if not Path(other).exists():
            raise UserError(f"image not found: {other} (nor is it a {stage} run directory)")
    if named is not None:
        if run_first:
            raise UserError(f"two runs given: --run {named} and {positionals[0]}; pass one")
        run, rest = Path(named), list(positionals)
    elif run_first:
        run, rest = Path(positionals[0]), list(positionals[1:])
    else:
        run, rest = announce(kind), list(positionals)
    if most is not None and len(rest) > most:
        raise UserError(f"too many arguments: {' '.join(rest)}; give at most {most} after the optional {stage} run")
    return run, rest
