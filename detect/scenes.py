"""Synthetic detection data: Fashion-MNIST items pasted on random backgrounds, as a YOLO dataset or a video.

Fashion-MNIST items are light on a black square. An item's grey value, normalised to its brightest pixel, is
both its shading and (through a steep ramp) its alpha, so the garment is pasted and its black square is not.
The box of an item is the bounding box of the pixels with non-zero alpha after scaling, so it is tight on
exactly what was drawn. Boxes are ``(class, x1, y1, x2, y2)`` in pixel edges: ``x2`` is the last column + 1.

Each item gets a random colour and a brightness range chosen against the background under it (light items on
dark ground, dark "inverted" items on light ground, either on mid-grey), so every item stands out.

Dataset scenes are seeded per scene (``seed, split, index``): the output does not depend on the number of
worker processes, and the same seed gives byte-identical files. Train scenes use only the train part of
``make_splits``, val scenes only its validation part, test scenes only the official test split.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from fashionkit.errors import UserError

SPLITS = ("train", "val", "test")
SOURCE_SPLIT = {"train": "train", "val": "train", "test": "test"}  # official file each scene split draws from
BACKGROUNDS = ("flat", "gradient", "noise", "texture")
MASK_LEVEL = 0.1  # normalised grey above which a scaled pixel belongs to the item (alpha > 0)
ALPHA_RAMP = 0.1  # grey from MASK_LEVEL to MASK_LEVEL + ALPHA_RAMP fades alpha in, for soft edges ...
MIN_ALPHA = 0.3  # ... from this opacity, so the pixels at a box's edge are visibly drawn, not near-transparent
MARKER = ".fashionkit-scenes"  # marks a directory make-data may overwrite
MIN_VISIBLE = 0.3  # realistic scenes label an item only if this share of it is in the frame and not covered


@dataclass(frozen=True)
class SceneStyle:
    """A named scene mix (``--preset``): what make-data and make-video draw, recorded in their config.yaml."""
    name: str
    photos: bool  # photographs behind the items (else procedural backgrounds only)
    photo_share: float  # share of scenes on a photograph; the rest on procedural backgrounds
    scales: tuple[float, float]  # make-data item sizes, multiples of 28 px
    video_scales: tuple[float, float]  # make-video item sizes
    max_overlap: float
    distractors: int  # at most this many non-fashion objects behind the items ...
    occluders: int  # ... and in front of them
    truncate: float  # share of items placed partly outside the frame (at most 40% of their width/height)
    rotate: float  # items turn by up to this many degrees (half of them)
    contrast: tuple[float, float]  # item vs ground brightness difference (choose_look)
    blur_p: float  # share of scenes with motion blur or defocus


PRESETS = {
    "procedural": SceneStyle("procedural", False, 0.0, (1.5, 6.0), (3.0, 7.0), 0.1, 0, 0, 0.0, 0.0,
                             (60, 110), 0.0),
    "realistic": SceneStyle("realistic", True, 0.85, (0.75, 9.0), (1.5, 12.0), 0.3, 4, 2, 0.3, 25.0,
                            (35, 110), 0.4),
}


def apply_preset(cfg: dict[str, Any], video: bool = False) -> dict[str, Any]:
    """Fill the options left unset (None) from ``cfg["preset"]``."""
    style = PRESETS[cfg.get("preset") or "procedural"]
    scales = style.video_scales if video else style.scales
    defaults = {"min_scale": scales[0], "max_scale": scales[1], "backgrounds": ",".join(BACKGROUNDS)}
    if not video:
        defaults["max_overlap"] = style.max_overlap
    return cfg | {k: v for k, v in defaults.items() if cfg.get(k) is None}


def scene_photos(cfg: dict[str, Any], split: str) -> list[Path]:
    """The background photographs one split may use (none for the procedural preset)."""
    from fashionkit.detect.realism import photo_files, split_photos

    if not PRESETS[cfg.get("preset") or "procedural"].photos:
        return []
    return [str(p) for p in split_photos(photo_files(cfg.get("photos")))[split]]


# ---- source items ------------------------------------------------------------------------------------------

def item_pool(split: str, data_dir: str | Path | None = None, val_size: int = 5000, split_seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [N,28,28] uint8, labels [N], indices [N])`` a scene split may use; ``indices`` point into the
    official file of ``SOURCE_SPLIT[split]``."""
    from fashionkit.data.fashion_mnist import load_split
    from fashionkit.data.splits import make_splits

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 10 <= val_size < 60_000:  # said for the test split too, which does not use it: -1 is a mistake anywhere
        raise UserError(f"--val-size must be between 10 and 59999 (of the 60,000 training images), got {val_size}")
    images, labels = (t.numpy() for t in load_split(SOURCE_SPLIT[split], data_dir))
    if split == "test":
        indices = np.arange(len(labels))
    else:
        train_idx, val_idx = make_splits(labels, val_size, split_seed)
        indices = train_idx if split == "train" else val_idx
    return images[indices], labels[indices], indices


# ---- backgrounds -------------------------------------------------------------------------------------------

def random_tint(rng: np.random.Generator, saturation: float) -> np.ndarray:
    """Per-channel gains with mean 1: multiplying a grey level by them gives a colour of about that level."""
    u = rng.random(3, dtype=np.float32)
    return 1 + 2 * saturation * (u - u.mean())


def _pattern(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A ``[H, W]`` or ``[H, W, 3]`` float32 pattern in [0, 1] that blends two background colours."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        return (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    if kind == "noise":
        shape = (height, width, 3) if rng.random() < 0.5 else (height, width)
        sigma = rng.uniform(0.1, 0.35)
        return np.clip(0.5 + sigma * rng.standard_normal(shape, dtype=np.float32), 0, 1)
    # texture: smooth blobs, stripes or checks
    style = rng.integers(3)
    if style == 0:
        cell = int(rng.integers(8, 65))
        low = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
        blobs = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(blobs, 0, 1)
    period = rng.uniform(6, 60)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    if style == 1:
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def make_background(rng: np.random.Generator, height: int, width: int, kinds: Sequence[str] = BACKGROUNDS,
                    span: tuple[float, float] = (30, 160)) -> np.ndarray:
    """A ``[H, W, 3]`` float32 background of a random kind: two random colours whose brightness differs by
    ``span`` (jitter of brightness and contrast), blended by a flat, gradient, noise or texture pattern."""
    kind = kinds[int(rng.integers(len(kinds)))]
    level = rng.uniform(0, 255)
    c0 = level * random_tint(rng, rng.uniform(0, 0.6))
    if kind == "flat":
        return np.broadcast_to(np.clip(c0, 0, 255), (height, width, 3)).astype(np.float32)
    delta = rng.uniform(*span)
    up = rng.random() < 0.5
    if level + delta > 255 or level - delta < 0:  # only one way has room enough: take the roomier
        up = 255 - level > level
    level1 = np.clip(level + delta if up else level - delta, 0, 255)
    c1 = level1 * random_tint(rng, rng.uniform(0, 0.6))
    p = _pattern(rng, kind, height, width)
    p = p[..., None] if p.ndim == 2 else p
    return np.clip(c0 + (c1 - c0) * p, 0, 255).astype(np.float32, copy=False)


# ---- items -------------------------------------------------------------------------------------------------

class Sprite(NamedTuple):
    shade: np.ndarray  # [h, w] float32 in [0, 1], the item's grey normalised to its brightest pixel
    alpha: np.ndarray  # [h, w] float32 in [0, 1]; > 0 exactly on the item's mask
    dx: int  # offset of this crop inside the full resized item
    dy: int


def item_sprite(grey: np.ndarray, width: int, height: int, flip: bool = False) -> Sprite | None:
    """The 28x28 item resized to ``width x height`` and cropped to its mask; None if nothing is left."""
    g = grey.astype(np.float32)
    interp = cv2.INTER_AREA if width < g.shape[1] else cv2.INTER_LINEAR
    g = cv2.resize(g, (width, height), interpolation=interp)
    if flip:
        g = g[:, ::-1]
    g *= 1.0 / max(float(g.max()), 1.0)
    ramp = np.clip((g - MASK_LEVEL) * (1.0 / ALPHA_RAMP), 0, 1)
    alpha = np.where(g > MASK_LEVEL, MIN_ALPHA + (1 - MIN_ALPHA) * ramp, 0).astype(np.float32)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Sprite(np.ascontiguousarray(g[y0:y1, x0:x1]), np.ascontiguousarray(alpha[y0:y1, x0:x1]),
                  int(x0), int(y0))


@dataclass(frozen=True)
class Look:
    """How an item is drawn: grey level ``offset + gain * shade`` times the colour ``tint``."""
    offset: float
    gain: float
    tint: np.ndarray


def choose_look(rng: np.random.Generator, ground: float, contrast: tuple[float, float] = (60, 110)) -> Look:
    """A random colour and brightness range for an item over ground of mean level ``ground`` (0-255): light
    items on dark ground, dark (inverted) items on light ground, either on mid-grey. Even the item's weakest
    shade differs from ``ground`` by about ``contrast`` (less only where 0 or 255 is in the way)."""
    d = rng.uniform(*contrast)
    light = ground < 105 or (ground <= 150 and rng.random() < 0.5)  # between, both ways have >= ~50 of room
    if light:
        lo = min(ground + d, 200.0)
        hi = rng.uniform(max(lo + 30, 220), 255)
        offset, gain = lo, hi - lo
    else:
        hi = max(ground - d, 55.0)
        lo = rng.uniform(0, min(hi - 30, 35))
        offset, gain = hi, lo - hi  # the item's brightest parts become its darkest
    return Look(offset, gain, random_tint(rng, rng.uniform(0, 0.5)))


def paste(canvas: np.ndarray, sprite: Sprite, look: Look, x: int, y: int
          ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Alpha-blend ``sprite`` onto float ``canvas`` with its top-left at ``(x, y)``, clipped to the canvas.
    Returns the tight box of the visible part and that part's mask (inside the box), or None if none shows."""
    H, W = canvas.shape[:2]
    h, w = sprite.alpha.shape
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    sy, sx = slice(cy0 - y, cy1 - y), slice(cx0 - x, cx1 - x)
    alpha = sprite.alpha[sy, sx]
    mask = alpha > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    colour = np.clip((look.offset + look.gain * sprite.shade[sy, sx])[..., None] * look.tint, 0, 255)
    region = canvas[cy0:cy1, cx0:cx1]
    a = alpha[..., None]
    region *= 1 - a
    region += a * colour
    box = (cx0 + int(cols[0]), cy0 + int(rows[0]), cx0 + int(cols[-1]) + 1, cy0 + int(rows[-1]) + 1)
    return box, mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box with each row of ``others``."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def _item_size(rng: np.random.Generator, min_scale: float, max_scale: float, limit: int) -> tuple[int, int]:
    """Log-uniform scale of the 28-px item with a little aspect jitter, at most ``limit`` pixels a side."""
    scale = math.exp(rng.uniform(math.log(min_scale), math.log(max_scale)))
    stretch = math.sqrt(rng.uniform(0.85, 1.15))
    return (min(limit, max(2, round(28 * scale * stretch))), min(limit, max(2, round(28 * scale / stretch))))


# ---- scenes ------------------------------------------------------------------------------------------------

class Scene(NamedTuple):
    image: np.ndarray  # [H, W, 3] uint8, OpenCV channel order
    boxes: list[tuple[int, int, int, int, int]]  # (class, x1, y1, x2, y2) per placed item, in ``used`` order
    masks: list[np.ndarray]  # [H, W] bool footprint of each placed item (before any occlusion)
    used: list[int]  # positions in ``items`` of the items placed; the others found no room


def compose_scene(rng: np.random.Generator, items: Sequence[np.ndarray], labels: Sequence[int], imgsz: int,
                  min_scale: float = 1.5, max_scale: float = 6.0, max_overlap: float = 0.1,
                  backgrounds: Sequence[str] = BACKGROUNDS, tries: int = 30) -> Scene:
    """Paste ``items`` (28x28 grey) at random sizes and places on a random ``imgsz`` square background.

    A place is redrawn up to ``tries`` times until the item's box has IoU <= ``max_overlap`` with every box
    placed so far; an item that finds no place is left out. Larger items are pasted first, so a small item
    over a large one stays on top and visible."""
    canvas = make_background(rng, imgsz, imgsz, backgrounds)
    placed: list[tuple[int, Sprite, int, int]] = []
    taken = np.zeros((0, 4), np.float32)
    for k, grey in enumerate(items):
        w, h = _item_size(rng, min_scale, max_scale, imgsz)
        sprite = item_sprite(grey, w, h, flip=bool(rng.random() < 0.5))
        if sprite is None:
            continue
        h, w = sprite.alpha.shape
        for _ in range(tries):
            x, y = int(rng.integers(0, imgsz - w + 1)), int(rng.integers(0, imgsz - h + 1))
            box = np.array([x, y, x + w, y + h], np.float32)
            if not len(taken) or _iou(box, taken).max() <= max_overlap:
                placed.append((k, sprite, x, y))
                taken = np.vstack([taken, box])
                break
    boxes, masks = [], []
    for _, sprite, x, y in sorted(placed, key=lambda p: -p[1].alpha.size):
        h, w = sprite.alpha.shape
        look = choose_look(rng, float(canvas[y:y + h, x:x + w].mean()))
        paste(canvas, sprite, look, x, y)
    for k, sprite, x, y in placed:
        h, w = sprite.alpha.shape
        boxes.append((int(labels[k]), x, y, x + w, y + h))
        mask = np.zeros((imgsz, imgsz), bool)
        mask[y:y + h, x:x + w] = sprite.alpha > 0
        masks.append(mask)
    image = np.rint(canvas).astype(np.uint8)
    return Scene(image, boxes, masks, [p[0] for p in placed])


def styled_sprite(rng: np.random.Generator, grey: np.ndarray, w: int, h: int, style: SceneStyle) -> Sprite | None:
    """``item_sprite`` (mirrored half the time), turned by up to ``style.rotate`` degrees half the time."""
    from fashionkit.detect.realism import rotate

    sprite = item_sprite(grey, w, h, flip=bool(rng.random() < 0.5))
    if sprite is None or not style.rotate or rng.random() < 0.5:
        return sprite
    shade, alpha, _, _ = rotate(sprite.shade, sprite.alpha, rng.uniform(-style.rotate, style.rotate))
    alpha[alpha < 0.05] = 0  # interpolation leaves a faint fringe; the mask is what is really drawn
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Sprite(np.ascontiguousarray(shade[y0:y1, x0:x1]), np.ascontiguousarray(alpha[y0:y1, x0:x1]), 0, 0)


def compose_realistic_scene(rng: np.random.Generator, items: Sequence[np.ndarray], labels: Sequence[int],
                            imgsz: int, min_scale: float, max_scale: float, max_overlap: float,
                            backgrounds: Sequence[str], style: SceneStyle, photos: Sequence[str],
                            tries: int = 30) -> Scene:
    """A scene as real footage shows items: on a photograph (or, for ``1 - photo_share`` of scenes, a procedural
    background) among distractors, partly outside the frame, turned, overlapping and partly covered, then seen
    through a camera (lighting, blur, noise, JPEG).

    A box is the tight box of the item's pixels that remain visible (in the frame, not covered by a later item or
    an occluder); an item with less than ``MIN_VISIBLE`` of its pixels visible gets no label. Camera effects come
    after the boxes and move nothing."""
    from fashionkit.detect.realism import camera, paste_distractor, photo_crop

    photo_paths = [Path(p) for p in photos]
    if photo_paths and rng.random() < style.photo_share:
        canvas = photo_crop(rng, photo_paths, imgsz, imgsz)
    else:
        canvas = make_background(rng, imgsz, imgsz, backgrounds).copy()
    for _ in range(int(rng.integers(0, style.distractors + 1))):
        paste_distractor(rng, canvas, photo_paths, (max(4, imgsz // 16), imgsz // 3))
    placed: list[tuple[int, Sprite, int, int]] = []
    taken = np.zeros((0, 4), np.float32)
    for k, grey in enumerate(items):
        w, h = _item_size(rng, min_scale, max_scale, imgsz)
        sprite = styled_sprite(rng, grey, w, h, style)
        if sprite is None:
            continue
        h, w = sprite.alpha.shape
        out_x = int(0.4 * w) if rng.random() < style.truncate else 0  # how far it may stick out of the frame
        out_y = int(0.4 * h) if rng.random() < style.truncate else 0
        for _ in range(tries):
            x = int(rng.integers(-out_x, imgsz - w + out_x + 1))
            y = int(rng.integers(-out_y, imgsz - h + out_y + 1))
            box = np.clip(np.array([x, y, x + w, y + h], np.float32), 0, imgsz)
            if not len(taken) or _iou(box, taken).max() <= max_overlap:
                placed.append((k, sprite, x, y))
                taken = np.vstack([taken, box])
                break
    owner = np.full((imgsz, imgsz), -1, np.int32)  # which item is on top at each pixel (-2: an occluder)
    order = sorted(range(len(placed)), key=lambda i: -placed[i][1].alpha.size)  # large first: small stay on top
    for i in order:
        _, sprite, x, y = placed[i]
        h, w = sprite.alpha.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, imgsz), min(y + h, imgsz)
        look = choose_look(rng, float(canvas[y0:y1, x0:x1].mean()), style.contrast)
        drawn = paste(canvas, sprite, look, x, y)
        if drawn is not None:
            (bx1, by1, bx2, by2), mask = drawn
            owner[by1:by2, bx1:bx2][mask] = i
    for _ in range(int(rng.integers(0, style.occluders + 1))):
        owner[paste_distractor(rng, canvas, photo_paths, (max(4, imgsz // 12), imgsz // 5))] = -2
    boxes, masks, used = [], [], []
    for i, (k, sprite, _, _) in enumerate(placed):
        visible = owner == i
        if visible.sum() < MIN_VISIBLE * np.count_nonzero(sprite.alpha):
            continue
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        boxes.append((int(labels[k]), int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        masks.append(visible)
        used.append(k)
    image = np.rint(camera(rng, canvas, style.blur_p)).astype(np.uint8)
    return Scene(image, boxes, masks, used)


def yolo_lines(boxes: Sequence[tuple[int, int, int, int, int]], width: int, height: int) -> str:
    """YOLO label text: one ``class cx cy w h`` line per box, normalised to [0, 1]."""
    lines = [f"{c} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
             f"{(y2 - y1) / height:.6f}" for c, x1, y1, x2, y2 in boxes]
    return "".join(line + "\n" for line in lines)


# ---- the dataset -------------------------------------------------------------------------------------------

def check_data_options(cfg: dict[str, Any]) -> None:
    """UserErrors for option values make-data cannot work with."""
    if cfg["imgsz"] < 32:
        raise UserError(f"--imgsz {cfg['imgsz']} is too small; use 32 or more (320 is the default)")
    for split in SPLITS:
        if cfg[split] < (0 if split == "test" else 1):
            raise UserError(f"--{split} {cfg[split]}: need at least {0 if split == 'test' else 1} scenes")
    if cfg["max_items"] < 1:
        raise UserError(f"--max-items {cfg['max_items']}: a scene needs room for at least 1 item")
    if not 0 <= cfg["min_items"] <= cfg["max_items"]:
        raise UserError(f"--min-items {cfg['min_items']} must be between 0 and --max-items {cfg['max_items']}")
    check_scales(cfg["min_scale"], cfg["max_scale"], cfg["imgsz"], "--imgsz")
    if not 0 <= cfg["max_overlap"] <= 1:
        raise UserError(f"--max-overlap {cfg['max_overlap']} must be an IoU between 0 and 1")
    parse_backgrounds(cfg["backgrounds"])


def check_scales(min_scale: float, max_scale: float, size: int, size_flag: str) -> None:
    if not 0 < min_scale <= max_scale:
        raise UserError(f"--min-scale {min_scale} and --max-scale {max_scale}: need 0 < min <= max")
    if 28 * max_scale > size:
        raise UserError(f"--max-scale {max_scale} makes items {28 * max_scale:.0f} px, larger than the "
                        f"{size}-px frame; lower --max-scale or raise {size_flag}")


def parse_backgrounds(text: str | Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip())
    unknown = [k for k in kinds if k not in BACKGROUNDS]
    if unknown or not kinds:
        raise UserError(f"--backgrounds {text!r}: use a comma-separated list of {', '.join(BACKGROUNDS)}")
    return kinds


def scene_rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent streams for one scene: which items it shows, and how it draws them."""
    key = [seed, SPLITS.index(split), index]
    return np.random.default_rng(key + [0]), np.random.default_rng(key + [1])


def plan_scene(rng: np.random.Generator, pool_size: int, min_items: int, max_items: int) -> np.ndarray:
    """Positions in the pool of the items one scene will try to place."""
    n = int(rng.integers(min_items, max_items + 1))
    return rng.choice(pool_size, size=min(n, pool_size), replace=False)


def _scene_task(task: tuple) -> tuple[str, int, list[int]]:
    """Compose one scene and write its image and label file (runs in a worker process)."""
    folder, split, index, items, labels, sources, cfg = task
    rng = scene_rngs(cfg["seed"], split, index)[1]
    style = PRESETS[cfg["preset"]]
    if style.photos:
        scene = compose_realistic_scene(rng, items, labels, cfg["imgsz"], cfg["min_scale"], cfg["max_scale"],
                                        cfg["max_overlap"], parse_backgrounds(cfg["backgrounds"]), style,
                                        cfg["photos_by_split"][split])
    else:
        scene = compose_scene(rng, items, labels, cfg["imgsz"], cfg["min_scale"], cfg["max_scale"],
                              cfg["max_overlap"], parse_backgrounds(cfg["backgrounds"]))
    name = f"{index:06d}"
    ext = cfg["format"]
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, encoded = cv2.imencode(f".{ext}", scene.image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {name}.{ext}")
    (Path(folder) / "images" / split / f"{name}.{ext}").write_bytes(encoded.tobytes())
    (Path(folder) / "labels" / split / f"{name}.txt").write_text(yolo_lines(scene.boxes, cfg["imgsz"], cfg["imgsz"]))
    return split, index, [int(sources[k]) for k in scene.used]


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one thread per process: the processes already fill the cores


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: a new or empty directory, or one made by make-data before (its splits are replaced)."""
    from fashionkit.runs import ensure_dir

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"--out {out} is not empty and was not made by `detect make-data`; "
                        f"choose a new directory or empty it")
    ensure_dir(out)
    (out / MARKER).write_text("made by `fashionkit detect make-data`; rerunning it replaces this dataset\n")
    for split in SPLITS:
        for stale in (out / "images" / split, out / "labels" / split):
            shutil.rmtree(stale, ignore_errors=True)
        (out / "labels" / f"{split}.cache").unlink(missing_ok=True)  # ultralytics' label cache of the old files
    for name in ("data.yaml", "sources.json"):
        (out / name).unlink(missing_ok=True)


def make_dataset(cfg: dict[str, Any], progress: bool = True) -> Path:
    """Write the YOLO dataset described by the resolved make-data options ``cfg``; returns ``data.yaml``."""
    import yaml
    from tqdm import tqdm

    from fashionkit.config import save_yaml
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.runs import atomic_write_json, atomic_write_text, runs_root

    cfg = apply_preset(cfg)
    check_data_options(cfg)
    photos = {split: scene_photos(cfg, split) for split in SPLITS}  # before any file is written: errors first
    out = Path(cfg["out"] or runs_root() / "detect" / "data")
    _prepare_out(out)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    pools = {split: item_pool(split, cfg["data_dir"], cfg["val_size"], cfg["split_seed"])
             for split in SPLITS if cfg[split]}
    task_cfg = {k: cfg[k] for k in ("seed", "imgsz", "min_scale", "max_scale", "max_overlap", "backgrounds",
                                     "format", "preset")} | {"photos_by_split": photos}

    def tasks() -> Iterator[tuple]:
        for split, (images, labels, indices) in pools.items():
            for index in range(cfg[split]):
                pick = plan_scene(scene_rngs(cfg["seed"], split, index)[0], len(labels), cfg["min_items"],
                                  cfg["max_items"])
                yield str(out), split, index, images[pick], labels[pick], indices[pick], task_cfg

    total = sum(cfg[split] for split in pools)
    sources: dict[str, dict[str, list[int]]] = {split: {} for split in pools}
    workers = min(cfg["workers"], os.cpu_count() or 1)
    with tqdm(total=total, unit="img", desc="scenes", disable=not progress) as bar:
        if workers > 1 and total >= 8 * workers:
            # spawn, not fork: a forked child inherits OpenCV's thread pool in whatever state the parent left it
            # (after the parent composed scenes itself, the child's first cv2.resize waits forever)
            with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                for split, index, used in pool.imap_unordered(_scene_task, tasks(), chunksize=16):
                    sources[split][f"{index:06d}"] = used
                    bar.update()
        else:
            for task in tasks():
                split, index, used = _scene_task(task)
                sources[split][f"{index:06d}"] = used
                bar.update()

    atomic_write_json(out / "sources.json", {
        "seed": cfg["seed"], "val_size": cfg["val_size"], "split_seed": cfg["split_seed"],
        "splits": {split: {"source_split": SOURCE_SPLIT[split], "scenes": dict(sorted(scenes.items()))}
                   for split, scenes in sources.items()}})
    save_yaml(cfg | {"out": str(out)}, out / "config.yaml")
    if any(photos.values()):  # which photograph lies behind which split: the evaluation must not have seen it
        atomic_write_json(out / "photos.json", photos)
    data = {"path": str(out.resolve())} | {split: f"images/{split}" for split in pools}
    data["names"] = dict(enumerate(CLASSES))
    atomic_write_text(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return out / "data.yaml"


# ---- the video ---------------------------------------------------------------------------------------------

@dataclass
class Track:
    track_id: int
    grey: np.ndarray
    class_id: int
    look: Look
    flip: bool
    size: tuple[int, int]  # item width, height at t0
    growth: float  # relative size change per second
    centre: np.ndarray  # at t0
    velocity: np.ndarray  # px per second
    t0: float
    entered: bool = False
    angle: float = 0.0  # degrees at t0 (realistic preset: items turn as they move)
    spin: float = 0.0  # degrees per second


def _new_track(rng: np.random.Generator, track_id: int, t0: float, pool: tuple, width: int, height: int,
               look_ground: float, min_scale: float, max_scale: float, inside: bool,
               style: SceneStyle | None = None) -> Track:
    """A track entering through a random edge towards the middle area, or (``inside``) already in view."""
    images, labels, _ = pool
    k = int(rng.integers(len(labels)))
    size = _item_size(rng, min_scale, max_scale, min(width, height))
    speed = rng.uniform(0.1, 0.3) * (width + height) / 2
    if inside:
        centre = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height])
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
    else:
        r = max(size) / 2 + 2  # start just out of view
        edge = int(rng.integers(4))
        along = rng.uniform(0.1, 0.9)
        centre = np.array([(-r, along * height), (width + r, along * height),
                           (along * width, -r), (along * width, height + r)][edge])
        target = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height])
        direction = (target - centre) / np.linalg.norm(target - centre)
    look = choose_look(rng, look_ground, contrast=(80, 120))
    track = Track(track_id, images[k], int(labels[k]), look, bool(rng.random() < 0.5), size,
                  rng.uniform(-0.1, 0.1), centre, direction * speed, t0)
    if style is not None and style.rotate:  # drawn after the draws above: the procedural clip stays as it was
        track.angle = rng.uniform(-style.rotate, style.rotate) if rng.random() < 0.5 else 0.0
        track.spin = rng.uniform(-10, 10) if rng.random() < 0.5 else 0.0
    return track


def _draw_track(canvas: np.ndarray, track: Track, t: float, min_side: int = 4):
    """Paste ``track`` as it is at time ``t``; returns paste()'s (box, mask), the full item's rectangle and the
    whole item's pixel count (in the frame or not)."""
    factor = math.exp(track.growth * (t - track.t0))
    w, h = (max(min_side, round(s * factor)) for s in track.size)
    cx, cy = track.centre + track.velocity * (t - track.t0)
    x, y = round(cx - w / 2), round(cy - h / 2)
    sprite = item_sprite(track.grey, w, h, track.flip)
    angle = track.angle + track.spin * (t - track.t0)
    if sprite is not None and angle:
        from fashionkit.detect.realism import rotate

        # turn the whole resized item about its centre, so the track's centre stays where it moves
        full = Sprite(*(np.pad(a, ((sprite.dy, h - sprite.dy - a.shape[0]), (sprite.dx, w - sprite.dx - a.shape[1])))
                        for a in (sprite.shade, sprite.alpha)), 0, 0)
        shade, alpha, gx, gy = rotate(full.shade, full.alpha, angle)
        alpha[alpha < 0.05] = 0
        sprite = Sprite(shade, alpha, -gx, -gy)
    shown = None if sprite is None else paste(canvas, sprite, track.look, x + sprite.dx, y + sprite.dy)
    return shown, (x, y, x + w, y + h), 0 if sprite is None else int(np.count_nonzero(sprite.alpha))


def _film(rng: np.random.Generator, frame: np.ndarray, index: int, fps: float, shake: set[int]) -> np.ndarray:
    """What the camera adds to one frame of a realistic clip: motion blur through the seconds in ``shake``, sensor
    noise and JPEG-like compression in every frame (the mp4v encoder compresses once more)."""
    from fashionkit.detect.realism import blur, jpeg, noise

    if int(index / fps) in shake:
        frame = blur(rng, frame, 0.7)
    return np.clip(jpeg(rng, noise(rng, frame, 5.0), (45, 85)), 0, 255)


def check_video_options(cfg: dict[str, Any]) -> int:
    """UserErrors for unusable make-video options; returns the number of frames."""
    if cfg["fps"] <= 0:
        raise UserError(f"--fps {cfg['fps']} must be positive (e.g. 25)")
    frames = round(cfg["seconds"] * cfg["fps"])
    if frames < 1:
        raise UserError(f"--seconds {cfg['seconds']} at --fps {cfg['fps']} gives no frames; use a positive length")
    if cfg["width"] < 32 or cfg["height"] < 32:
        raise UserError(f"--width {cfg['width']} --height {cfg['height']}: frames must be at least 32x32 px")
    if cfg["width"] % 2 or cfg["height"] % 2:  # the mp4v encoder would silently drop the odd row or column
        raise UserError(f"--width {cfg['width']} --height {cfg['height']}: an mp4 frame needs even sizes")
    if cfg["items"] < 1:
        raise UserError(f"--items {cfg['items']}: need at least 1 item in view")
    check_scales(cfg["min_scale"], cfg["max_scale"], min(cfg["width"], cfg["height"]), "--width/--height")
    parse_backgrounds(cfg["backgrounds"])
    return frames


def make_video(out: str | Path, cfg: dict[str, Any], progress: bool = True) -> list[list[dict[str, Any]]]:
    """Write ``out`` (mp4v) of items moving across a background, ``out.json`` with the boxes of each frame
    (boxes clipped to the frame, items at least partly visible; ``visible`` the share of the whole item in the frame
    and not covered) and the same rows as ``out.csv``."""
    from tqdm import tqdm

    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.runs import atomic_save, atomic_write_text, ensure_dir

    out = Path(out)
    cfg = apply_preset(cfg, video=True)
    n_frames = check_video_options(cfg)
    style = PRESETS[cfg["preset"]]
    photos = [Path(p) for p in scene_photos(cfg, cfg["split"])]
    if out.suffix.lower() != ".mp4":
        raise UserError(f"{out}: the video name must end in .mp4")
    ensure_dir(out.parent)
    W, H, fps = cfg["width"], cfg["height"], cfg["fps"]
    pool = item_pool(cfg["split"], cfg["data_dir"], cfg["val_size"], cfg["split_seed"])
    rng = np.random.default_rng([cfg["seed"], 7])
    if photos:
        # A photograph larger than the frame, the camera panning across it; its distractors move with it.
        from fashionkit.detect.realism import lighting, paste_distractor, photo_crop

        pad = np.array([W // 4, H // 4])
        scenery = photo_crop(rng, photos, H + pad[1], W + pad[0], zoom=(0.5, 1.0))
        for _ in range(int(rng.integers(2, 2 * style.distractors + 1))):
            paste_distractor(rng, scenery, photos, (H // 16, H // 4))
        scenery = lighting(rng, scenery)
        pan_from, pan_to = rng.integers(0, pad + 1), rng.integers(0, pad + 1)
        ground = float(scenery.mean())
    else:
        # A calm background (small brightness span) so one look per item stays visible wherever it goes.
        background = make_background(rng, H, W, parse_backgrounds(cfg["backgrounds"]), span=(15, 50))
        ground = float(background.mean())
    scales = cfg["min_scale"], cfg["max_scale"]
    video_style = style if photos else None
    tracks = [_new_track(rng, i, 0.0, pool, W, H, ground, *scales, inside=True, style=video_style)
              for i in range(cfg["items"])]
    next_id = len(tracks)
    frames: list[list[dict[str, Any]]] = []
    shake = {int(s) for s in rng.choice(max(1, int(cfg["seconds"])), size=max(1, int(cfg["seconds"]) // 4))}
    tmp = out.with_name(f".{out.stem}.part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (W, H))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write an mp4v video to {out}; check the path and OpenCV's video support")
    try:
        for f in tqdm(range(n_frames), unit="frame", desc="video", disable=not progress):
            t = f / fps
            # Top up to --items in view: at most one newcomer per frame, about 2 a second, so they come staggered.
            if len(tracks) < cfg["items"] and rng.random() < min(1.0, 2.0 / fps):
                tracks.append(_new_track(rng, next_id, t, pool, W, H, ground, *scales, inside=False,
                                         style=video_style))
                next_id += 1
            if photos:
                ox, oy = np.rint(pan_from + (pan_to - pan_from) * f / max(n_frames - 1, 1)).astype(int)
                canvas = scenery[oy:oy + H, ox:ox + W].copy()
            else:
                canvas = background.copy()
            owner = np.full((H, W), -1, np.int32)  # which shown item is on top at each pixel
            shown, keep = [], []
            for track in tracks:
                drawn, (x1, y1, x2, y2), whole = _draw_track(canvas, track, t)
                overlaps = x1 < W and y1 < H and x2 > 0 and y2 > 0
                track.entered |= overlaps
                if track.entered and not overlaps or t - track.t0 > 120:
                    continue  # it has left the frame for good
                keep.append(track)
                if drawn is not None:
                    (bx1, by1, bx2, by2), mask = drawn
                    owner[by1:by2, bx1:bx2][mask] = len(shown)
                    shown.append((track, (bx1, by1, bx2, by2), whole))
            tracks = keep
            # visible: the share of the whole item that shows, in the frame and not covered (an item cut by the
            # frame's edge is as hidden as a covered one: MOT16's visibility, and the share make-data labels by)
            on_top = np.bincount(owner[owner >= 0], minlength=len(shown))
            frames.append([
                {"track_id": tr.track_id, "class_id": tr.class_id, "class_name": CLASSES[tr.class_id],
                 "box": list(box), "visible": round(float(on_top[i]) / area, 3)}
                for i, (tr, box, area) in enumerate(shown) if on_top[i] > 0])
            if photos:
                canvas = _film(rng, canvas, f, fps, shake)
            writer.write(np.rint(canvas).astype(np.uint8))
        writer.release()
        os.replace(tmp, out)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)

    # one frame per line: compact, yet a person can still find frame N in it
    atomic_write_text(out.with_suffix(".json"), "[\n" + ",\n".join(json.dumps(f) for f in frames) + "\n]\n")

    def write_csv(path: str) -> None:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame", "track_id", "class_id", "class_name", "x1", "y1", "x2", "y2", "visible"])
            for f, boxes in enumerate(frames):
                for b in boxes:
                    w.writerow([f, b["track_id"], b["class_id"], b["class_name"], *b["box"], b["visible"]])
    atomic_save(write_csv, out.with_suffix(".csv"))
    return frames
