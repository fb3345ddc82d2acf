"""The installed package: one import package, working console scripts, fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_wheel_installs_one_import_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fashionkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"fashionkit", wheel.name.split("-py3")[0] + ".dist-info"}
    for stage in ("data", "classify", "metric", "detect"):
        assert f"fashionkit/{stage}/__init__.py" in names
    assert "fashionkit/classify/defaults.py" in names
    for asset in ("serve/app.py", "serve/templates/item.html", "serve/static/style.css", "serve/static/app.js"):
        assert f"fashionkit/{asset}" in names  # fashionkit serve's pages work from a non-editable install
    # the bundled models travel as package data, every file their cards list (where this checkout has them)
    for card in (ROOT / "fashionkit" / "models").glob("*/card.json"):
        listed = [*json.loads(card.read_text())["files"], "card.json", "card.md"]
        assert {f"fashionkit/models/{card.parent.name}/{rel}" for rel in listed} <= set(names)


def test_every_folder_of_the_bundled_models_is_a_listed_package():
    # setuptools warns, once per folder, about an importable folder missing from pyproject's `packages` (a new
    # folder of the bundled models, such as the detector's gate, is easy to forget there)
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    models = ROOT / "fashionkit" / "models"
    folders = {".".join(("fashionkit", *d.relative_to(ROOT / "fashionkit").parts)) for d in models.rglob("*")
               if d.is_dir() and d.name != "__pycache__"}
    assert folders and folders <= listed, sorted(folders - listed)


@pytest.mark.parametrize("argv", [
    ["fashionkit", "--help"], ["fashionkit", "data", "--help"], ["fashionkit", "data", "eda", "--help"],
    ["classify", "--help"], ["classify", "train", "--help"], ["metric", "--help"], ["detect", "--help"],
])
def test_console_scripts_help(argv):
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    if argv[-2:] == ["train", "--help"]:
        assert "(default: vgg-fast)" in result.stdout and "(default: 17)" in result.stdout  # defaults are shown


def test_help_says_what_an_unset_option_does_once():
    # metric train's --from was shown "(default: none)", but --from none trains from scratch and leaving it out
    # builds on a classifier; options whose help already says what leaving them out does get no "(default: none)"
    result = subprocess.run([str(BIN / "metric"), "train", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    from_help = text.split("--from FROM", 2)[-1].split("--hard-classes")[0]
    assert "not given: the newest finished classify run" in from_help and "default: none" not in from_help
    assert "--data-dir DATA_DIR directory holding the Fashion-MNIST idx files; none: $FASHIONKIT_DATA, else" in text
    assert "downloaded there if missing (default: none)" not in text
    result = subprocess.run([str(BIN / "detect"), "video", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(result.stdout.split())
    assert "class accuracy (default: none)" in text  # --gt: leaving it out is plainly no ground truth


def test_umbrella_lists_every_stage():
    out = subprocess.run([str(BIN / "fashionkit"), "--help"], capture_output=True, text=True).stdout
    for stage in ("data", "classify", "metric", "detect"):
        assert stage in out


def test_unknown_command_exits_nonzero():
    result = subprocess.run([str(BIN / "classify"), "fly"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
