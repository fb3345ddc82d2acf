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
