"""Ordinary image files (a photo, a product shot, a scan) -> 28x28 uint8 items framed like Fashion-MNIST's.

Fashion-MNIST items are light on a black background, trimmed to the item, scaled so the longer side fills all
28 pixels, centred along the shorter side, with intensities reaching 255. ``read_item_image`` gives any file
that framing, so a model trained on the dataset sees what it was trained on:

1. decode with Pillow (any format it reads; EXIF rotation applied; transparent parts made white, the
   background of the product photos the dataset was made from);
2. grey; invert when the background is light (the median of the border pixels is above mid-grey);
3. subtract the background level and stretch the item to 0..255;
4. crop to the bounding box of the pixels above a fraction of the item's brightness;
5. resize the longer side to 28 (antialiased) and pad the shorter side, centred.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashionkit.errors import UserError

SIZE = 28
THRESHOLD = 0.1  # of the item's peak: pixels above it define the bounding box (JPEG noise stays below)


def _open(path: Path) -> np.ndarray:
    """Decode ``path`` to a float grey array in [0, 255]; every way the file can be bad is a UserError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"image not found: {path}" + ("  (it is a directory)" if path.is_dir() else ""))
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()  # decoding happens here: a truncated file fails now, not later
            return _grey(img)
    except (UnidentifiedImageError, ImportError):
        # ImportError: once ultralytics is imported it patches Image.open to retry unidentified files with a HEIF
        # plugin (pi-heif) that is not installed; the file is still not an image we can read.
        raise UserError(f"{path} is not an image file Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP ...)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path} is too large to read safely ({e}); scale it down first") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated / damaged data
        raise UserError(f"{path} is truncated or damaged and cannot be decoded ({e}); use another file") from None


def _grey(img) -> np.ndarray:
    if img.mode.startswith("I;16"):  # 16-bit grey: Pillow's convert("L") would clip, not scale
        return np.asarray(img, dtype=np.float64) / 257.0
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        return (a - a.min()) * (255.0 / span) if span > 0 else np.zeros_like(a)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return np.asarray(img.convert("L"), dtype=np.float64)
    grey_alpha = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float64)
    grey, alpha = grey_alpha[..., 0], grey_alpha[..., 1] / 255.0
    # a cut-out goes on white: Fashion-MNIST's items are product photos on white, negated (step 2 does that)
    return grey * alpha + 255.0 * (1 - alpha)


def to_item(grey: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """A grey ``[H, W]`` array (0..255, any size) -> uint8 ``[size, size]``: light item on black, dataset framing."""
    from PIL import Image

    grey = np.asarray(grey, dtype=np.float64)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # dark item on a light background (product shots, scans)
        grey, border = 255.0 - grey, 255.0 - border
    item = np.clip(grey - np.median(border), 0, None)
    peak = item.max()
    if peak <= 0:
        return torch.zeros(size, size, dtype=torch.uint8)  # a blank image: nothing to frame
    item *= 255.0 / peak
    rows, cols = np.nonzero(item > THRESHOLD * 255)
    item = item[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = item.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    # float mode keeps the precision through the antialiased (Lanczos) resize; clipped back to 0..255 below
    resized = np.asarray(Image.fromarray(item.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS))
    out = np.zeros((size, size), dtype=np.float32)
    # odd leftovers go to the top/left margin, as in the dataset (the other way shifts items by a pixel)
    top, left = (size - new_h + 1) // 2, (size - new_w + 1) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def read_item_image(path: str | Path) -> torch.Tensor:
    """One image file -> uint8 ``[28, 28]`` (light item on black, like Fashion-MNIST). Bad files raise UserError."""
    return to_item(_open(Path(path)))


def read_item_images(paths) -> torch.Tensor:
    """Image files -> uint8 ``[N, 28, 28]``."""
    paths = list(paths)
    if not paths:
        raise UserError("no image files given")
    return torch.stack([read_item_image(p) for p in paths])
