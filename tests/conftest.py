"""Shared fixtures. Tests use the real Fashion-MNIST files (Debian package dataset-fashion-mnist) and small
subsets of them, so they check real behaviour in seconds on a 2-core CPU."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def train_set():
    from fashionkit.data import load_split

    return load_split("train")


@pytest.fixture(scope="session")
def test_set():
    from fashionkit.data import load_split

    return load_split("test")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """Every run of a test goes to its own temporary runs root."""
    root = tmp_path / "runs"
    monkeypatch.setenv("FASHIONKIT_RUNS", str(root))
    return root


@pytest.fixture
def cli():
    """``cli("data", "eda", "--out", d)`` runs the umbrella command in-process and returns its exit code."""
    from fashionkit.cli import main

    return lambda *argv: main([str(a) for a in argv])


def snapshot(root) -> dict:
    """Every path under ``root`` with its modification time: what a command must leave as it was (a file rewritten,
    even with the same bytes, shows)."""
    from pathlib import Path

    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def load_script(rel: str):
    """Import a script of the repository (benchmarks/, demos/) as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / rel
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def trained_looking_bn(bn: torch.nn.BatchNorm2d) -> None:
    """Give a fresh BatchNorm the kind of statistics training leaves (positive scales, shifted means, variances
    off 1), so that tests comparing two nets in eval mode are not passed by the identity a fresh BN computes."""
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.normal_(0, 0.3)
    bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Small real stand-ins of the bundled models, made by the rebuild script's --tiny mode (a quarter-width
    vgg-small on 500 items, a 32-d embedding with its 24,000-item index, a one-epoch detector on 16 scenes): the
    tests of the commands that use bundled models point FASHIONKIT_MODELS_DIR here, never at the package's own.
    FASHIONKIT_TEST_TINY_BUNDLE=DIR reuses the output of an earlier `build_models.py --tiny --out DIR` instead."""
    import json

    reuse = os.environ.get("FASHIONKIT_TEST_TINY_BUNDLE")
    if reuse:  # a developer's shortcut: a folder an earlier `build_models.py --tiny --out DIR` made
        from pathlib import Path

        return Path(reuse), json.loads((Path(reuse) / "build_models.json").read_text())
    build_models = load_script("benchmarks/build_models.py")
    out = tmp_path_factory.mktemp("bundle")
    saved = os.environ.get("FASHIONKIT_RUNS")
    try:
        result = build_models.main(["--tiny", "--out", str(out), "--runs-dir", str(out / "runs")])
    finally:  # the script sets the runs root for its commands
        if saved is None:
            os.environ.pop("FASHIONKIT_RUNS", None)
        else:
            os.environ["FASHIONKIT_RUNS"] = saved
    return out, result


@pytest.fixture
def bundled(tiny_bundle, runs_dir, monkeypatch):
    """The tiny bundled models as FASHIONKIT_MODELS_DIR, with an empty runs root of the test's own."""
    out, _ = tiny_bundle
    monkeypatch.setenv("FASHIONKIT_MODELS_DIR", str(out))
    return out
