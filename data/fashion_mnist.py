"""The Fashion-MNIST files: where they are, how to read them, and how to know they are the real ones.

Roots are tried in this order: ``--data-dir``, ``$FASHIONKIT_DATA``, ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``), the user cache dir. When none holds the files, they are
downloaded from the official mirror into the cache. Content is verified by the sha256 of the *decompressed*
files, because the Debian ``.gz`` headers differ from upstream's while the data is identical.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from fashionkit.errors import UserError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "test")
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
IDX_MAGIC = {"images": 2051, "labels": 2049}  # idx3 = uint8 3-D, idx1 = uint8 1-D


# ---- class names -------------------------------------------------------------------------------------------

def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_CLASS_KEYS = {_key(name): i for i, name in enumerate(CLASSES)}
_CLASS_KEYS.update({"tshirt": 0, "top": 0, "boot": 9, "ankleboots": 9})


def class_id(value: str | int) -> int:
    """Class id from an id (``6``, ``"6"``) or a name in any spelling (``"Shirt"``, ``t-shirt``, ``ankle_boot``)."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if 0 <= i < len(CLASSES):
            return i
    elif _key(text) in _CLASS_KEYS:
        return _CLASS_KEYS[_key(text)]
    valid = ", ".join(f"{i} {n}" for i, n in enumerate(CLASSES))
    raise UserError(f"unknown class {text!r}: use an id 0-9 or a name ({valid})")


def parse_classes(text: str | list, min_count: int = 1) -> list[int]:
    """``"0,2,coat,shirt"`` -> ``[0, 2, 4, 6]``; rejects unknown and repeated classes."""
    parts = text if isinstance(text, list | tuple) else [p for p in str(text).split(",") if p.strip()]
    ids = [class_id(p) for p in parts]
    repeated = sorted({CLASSES[i] for i in ids if ids.count(i) > 1})
    if repeated:
        raise UserError(f"class listed more than once: {', '.join(repeated)}")
    if len(ids) < min_count:
        raise UserError(f"need at least {min_count} distinct classes, got {len(ids)} ({text!r})")
    return ids


# ---- locating and downloading ------------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashionkit" / "fashion-mnist"


def _file_in(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(root: Path) -> bool:
    return all(_file_in(root, name) for name in FILES.values())


def find_root(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The first root holding all four files; downloads into the cache (or ``data_dir``) when none does."""
    explicit = data_dir or os.environ.get("FASHIONKIT_DATA")
    if explicit:
        root = Path(explicit)
        if _complete(root):
            return root
        candidates, target = [root], root
    else:
        candidates, target = [DEBIAN_ROOT, cache_dir()], cache_dir()
        for root in candidates:
            if _complete(root):
                return root
    if download:
        try:
            _download(target)
            return target
        except OSError as e:
            reason = f"download from {mirror()} failed ({getattr(e, 'reason', None) or e})"
    else:
        reason = "download disabled"
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(f"Fashion-MNIST not found in {looked} and {reason}; install it with "
                    f"`apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding the four idx files")


def mirror() -> str:
    return os.environ.get("FASHIONKIT_MIRROR", MIRROR)


def _download(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if _file_in(target, name):
            continue
        dest = target / f"{name}.gz"
        tmp = dest.with_suffix(".gz.part")
        print(f"downloading {mirror()}{name}.gz -> {dest}")
        with urllib.request.urlopen(f"{mirror()}{name}.gz", timeout=30) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)


# ---- reading and verifying ---------------------------------------------------------------------------------

def read_idx(path: str | Path, kind: str, expected_sha256: str | None = None) -> np.ndarray:
    """Parse an idx file (gzip or raw) into a uint8 array; every way it can be damaged is a UserError."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise UserError(f"{path} is a truncated or corrupted gzip file ({e}); delete it and reinstall "
                            f"the data (apt-get install --reinstall dataset-fashion-mnist)") from None
    if len(raw) < 8:
        raise UserError(f"{path} is too short to be an idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise UserError(f"{path} has magic number {magic}, expected {IDX_MAGIC[kind]} for an idx {kind} file; "
                        f"is it the right file?")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path} has {len(raw)} bytes but its header {dims} needs {expected}: the file is "
                        f"truncated or corrupted; delete it and reinstall the data")
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise UserError(f"{path} does not match the official Fashion-MNIST content (sha256 {digest[:12]}... "
                            f"!= {expected_sha256[:12]}...); delete it and reinstall the data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=8)
def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILES[(split, "images")], FILES[(split, "labels")]
    images = read_idx(_file_in(root, images_name), "images", SHA256[images_name])
    labels = read_idx(_file_in(root, labels_name), "labels", SHA256[labels_name])
    return images, labels


def load_split(split: str, data_dir: str | Path | None = None):
    """``(images, labels)`` of the official ``train`` (60k) or ``test`` (10k) split as torch tensors:
    images uint8 ``[N, 28, 28]``, labels int64 ``[N]``."""
    import torch

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    images, labels = _load(find_root(data_dir).resolve(), split)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
