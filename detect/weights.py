"""Loading a detector: the weights a detect run, a file or nothing (the bundled detector) stands for, and the engine
that runs it. On a CPU the network runs in ONNX Runtime (``--backend auto``): best.pt is exported once to best.onnx
beside it (the bundled detector's to the user's cache), which ran the default detector's network twice as fast as
PyTorch on a 2-core Zen 3 (1.3-1.6x end to end in ``detect video``). A file that is not an ultralytics detection
model is a one-line error that says what it is instead.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fashionkit.errors import UserError

ENGINES = {"torch": "PyTorch", "onnx": "ONNX Runtime"}


def weights_file(weights: str | Path | None) -> Path:
    """A detect run directory -> its best.pt (as recorded in summary.json); a .pt or .onnx file as is; none -> the
    bundled detector's, said in one line (a named one always wins)."""
    from fashionkit.runs import open_run, read_json

    if not weights:
        from fashionkit.bundled import announce

        weights = announce("detector")
    path = Path(weights)
    if not path.exists():
        raise UserError(f"weights not found: {path}; pass a detect run directory or a .pt file")
    if path.is_dir():
        run = open_run(path, "detect", what="weights")
        summary = read_json(run / "summary.json", missing_ok=True) or {}
        from fashionkit.detect.train import ULTRALYTICS_DIR

        candidates = [run / summary["best"]] if summary.get("best") else []
        candidates += [run / ULTRALYTICS_DIR / "weights" / f"{w}.pt" for w in ("best", "last")]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise UserError(f"{run} has no weights yet (no {ULTRALYTICS_DIR}/weights/best.pt); let `detect train` finish "
                        f"an epoch, or pass a .pt file")
    if path.suffix not in (".pt", ".onnx"):
        raise UserError(f"--weights {path}: expected a detect run directory, a PyTorch .pt detection checkpoint or "
                        f"its .onnx export")
    return path


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def choose_backend(backend: str, device: str, path: Path) -> str:
    """torch or onnx. auto: ONNX Runtime on a CPU where it is installed (the 3.7-GFLOPs detector ran 2x faster
    through it than through PyTorch on a 2-core Zen 3: 44 vs 22 frames/s, predict only), PyTorch on a GPU."""
    if path.suffix == ".onnx":
        backend = "onnx"
    elif backend == "auto":
        return "onnx" if device == "cpu" and onnx_available() else "torch"
    if backend == "onnx" and device != "cpu":
        raise UserError(f"--backend onnx runs on the CPU; use --device cpu, or --backend torch for device {device}")
    if backend == "onnx" and not onnx_available():
        raise UserError("--backend onnx needs the onnx and onnxruntime packages (pip install onnx onnxruntime); "
                        "or use --backend torch")
    return backend


@contextmanager
def quiet_ultralytics():
    """ultralytics logs every export and ONNX load at INFO; our own line says what happened."""
    import logging

    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def onnx_file(pt: Path, target: Path | None = None) -> Path:
    """The ONNX export of ``pt``, by default beside it (best.pt -> best.onnx): made on first use and again whenever
    the .pt is newer, exported in a temporary folder and moved into place, so a killed export leaves no half file."""
    import shutil
    import tempfile

    from ultralytics import YOLO

    target = target or pt.with_suffix(".onnx")
    if target.is_file() and target.stat().st_mtime >= pt.stat().st_mtime:
        return target
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".onnx-export-") as tmp:
        copy = Path(tmp) / pt.name
        shutil.copyfile(pt, copy)
        with quiet_ultralytics():  # dynamic: any batch and frame size; simplify would need onnxslim, for no gain
            exported = YOLO(str(copy), task="detect").export(format="onnx", dynamic=True, simplify=False,
                                                              imgsz=320, device="cpu")
        os.replace(exported, target)
    print(f"exported {target} for ONNX Runtime in {time.perf_counter() - start:.1f} s (reused until {pt.name} "
          f"changes)", file=sys.stderr)
    return target


def load_detector(weights: str | Path | None, backend: str = "torch", device: str = "cpu"):
    """``(YOLO model, weights path, backend)``: a file that is not an ultralytics detection model is a UserError.
    With backend onnx a .pt is exported once to the .onnx beside it; auto falls back to torch if that fails."""
    from fashionkit.bundled import is_bundled
    from fashionkit.detect.model import use_ultralytics

    path = weights_file(weights)
    chosen = choose_backend(backend, device, path)
    use_ultralytics()
    from ultralytics import YOLO

    if path.suffix == ".onnx":
        return _load_onnx(path), path, "onnx"
    try:
        model = YOLO(str(path), task="detect")
        task = getattr(model.model, "task", None) or model.task
    except Exception:
        raise UserError(_not_a_detector(path)) from None
    if task != "detect" or type(model.model).__name__ != "DetectionModel":
        raise UserError(f"{path} is a YOLO {task} model ({type(model.model).__name__}), not a detection model; "
                        f"pass weights made by `detect train`")
    if chosen == "onnx" and is_bundled(path):
        # the package is never written to: an export shipped beside best.pt is used as it is (an install's file
        # times say nothing about which is newer), else the export goes to the user's cache under best.pt's SHA-256
        # (made once, about a second, 13 MB that the package does not have to carry)
        if path.with_suffix(".onnx").is_file():
            return _load_onnx(path.with_suffix(".onnx")), path, "onnx"
        from fashionkit.bundled import sha256
        from fashionkit.data.fashion_mnist import cache_dir

        try:
            cached = cache_dir().parent / "onnx" / f"bundled-detector-{sha256(path)[:16]}.onnx"
            return _load_onnx(onnx_file(path, cached)), path, "onnx"
        except Exception as e:
            print(f"warning: ONNX export of the bundled detector failed ({type(e).__name__}: {e}); running on "
                  f"PyTorch", file=sys.stderr)
            chosen = "torch"
    if chosen == "onnx":
        try:
            return _load_onnx(onnx_file(path)), path, "onnx"
        except Exception as e:
            if backend == "onnx":
                raise UserError(f"could not export {path} to ONNX ({type(e).__name__}: {e}); use --backend torch") \
                    from None
            print(f"warning: ONNX export of {path} failed ({type(e).__name__}: {e}); running on PyTorch",
                  file=sys.stderr)
    return model, path, "torch"


def _load_onnx(path: Path):
    from ultralytics import YOLO

    try:
        import onnxruntime

        meta = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        task = meta.custom_metadata_map.get("task")
    except Exception:
        raise UserError(f"{path} is not a loadable ONNX model (corrupted or another kind of file); pass a detect run "
                        f"or a detection .pt") from None
    if task != "detect":
        raise UserError(f"{path} is not an ultralytics detection export (task {task!r}); pass a detect run, or the "
                        f".onnx that `detect video` exported beside its best.pt")
    with quiet_ultralytics():
        model = YOLO(str(path), task="detect")
        # the first predict loads the session; on the CPU, as run_video asks (another device makes a new predictor)
        model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, device="cpu", verbose=False)
    return model


def _not_a_detector(path: Path) -> str:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return f"{path} is not a PyTorch checkpoint (corrupted or another kind of file); pass a detection .pt"
    from fashionkit.classify.checkpoint import FORMAT

    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return (f"{path} is a fashionkit classifier checkpoint, not a detector; train a detector from its run with "
                f"`detect train --from {path.parent.parent}` and pass that run")
    return f"{path} is not an ultralytics detection checkpoint; pass weights made by `detect train`"
