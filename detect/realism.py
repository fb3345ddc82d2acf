"""What real footage has and procedural scenes lack: photographs behind the items, everyday objects among them,
and the camera's faults on top (blur, noise, compression, lighting).

* **Photographs** come from Debian wallpaper packages that install offline (``PHOTO_SOURCES``): about 40
  photographs of landscapes, plants, water, streets, people and objects. Like the items, the photographs are
  split: each file goes to train, val or test by a hash of its path (``split_photos``), so a test scene or the
  evaluation video never shows a background the detector trained on. ``--photos DIR`` takes any folder of
  pictures instead.
* **Distractors** are non-fashion objects: patches cut from another photograph of the same split in an ellipse or
  polygon, flat or shaded geometric shapes, and lines of text. They are drawn behind the items and, as
  occluders, in front of them; they carry no label, so the detector learns to leave them alone.
* **Camera effects** apply to the whole frame after composing, so the boxes (computed from the item masks)
  stay where the items are: a lighting gradient and colour cast, gamma, motion blur or defocus, sensor noise, and
  JPEG compression at a random quality.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fashionkit.errors import UserError

# (Debian package, folder it installs photographs into, file-name pattern)
PHOTO_SOURCES = (
    # the photographs of plasma's wallpapers are JPEGs (its PNGs are abstract art)
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers", "*/contents/images/1920x1080.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature", "*.*"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds", "*_by_*.jpg"),  # Ubuntu 16.04's photographs
)
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))
MAX_SIDE = 1280  # photographs are kept downscaled to this: a 320-px scene crop never needs more
INSTALL_HINT = ("install the background photographs with `apt-get install "
                f"{' '.join(package for package, _, _ in PHOTO_SOURCES)}` (.ci/setup does), pass --photos DIR, or "
                "use --preset procedural")


def photo_files(folder: str | Path | None = None) -> list[Path]:
    """The background photographs: every picture under ``folder``, or those of ``PHOTO_SOURCES``."""
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"--photos {root}: not a folder; pass a folder of photographs ({INSTALL_HINT})")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_EXTS and p.is_file())
        where = str(root)
    else:
        files = sorted(p for _, root, pattern in PHOTO_SOURCES for p in Path(root).glob(pattern)
                       if p.suffix.lower() in PHOTO_EXTS and p.is_file())
        where = " and ".join(root for _, root, _ in PHOTO_SOURCES)
    if len(files) < len(SPLIT_SHARES):
        raise UserError(f"no background photographs found in {where} (need at least 3, one per split); "
                        f"{INSTALL_HINT}")
    return files


def split_photos(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Photographs per split. Each file's split follows from a hash of the last four parts of its path alone (plasma
    names every file 1920x1080.jpg inside the wallpaper's own folder), so adding or
    removing a photograph moves no other one; only a folder so small that a split would stay empty is dealt out
    by rank instead (every split gets at least one)."""
    def unit(p: Path) -> float:
        return int(hashlib.sha1("/".join(p.parts[-4:]).encode()).hexdigest()[:12], 16) / 16 ** 12

    bounds = np.cumsum([share for _, share in SPLIT_SHARES])
    names = [split for split, _ in SPLIT_SHARES]
    out: dict[str, list[Path]] = {split: [] for split in names}
    for p in files:
        out[names[min(int(np.searchsorted(bounds, unit(p), side="right")), len(names) - 1)]].append(p)
    if all(out.values()):
        return {split: sorted(v) for split, v in out.items()}
    ranked = sorted(files, key=unit)
    counts = [max(1, round(share * len(ranked))) for _, share in SPLIT_SHARES[1:]]
    edges = np.cumsum([len(ranked) - sum(counts), *counts])
    return {split: sorted(ranked[a:b]) for split, a, b in zip(names, [0, *edges[:-1]], edges)}


_CACHE: dict[str, np.ndarray] = {}


def load_photo(path: Path) -> np.ndarray:
    """A photograph as float32 BGR, longer side at most ``MAX_SIDE``; cached per process."""
    key = str(path)
    if key not in _CACHE:
        image = cv2.imread(key, cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"cannot read the background photograph {path}; reinstall its package or remove it "
                            f"from --photos ({INSTALL_HINT})")
        scale = MAX_SIDE / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        _CACHE[key] = image.astype(np.float32)
    return _CACHE[key]


def photo_crop(rng: np.random.Generator, photos: Sequence[Path], height: int, width: int,
               zoom: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    """A random crop of a random photograph, resized to ``height x width``, maybe mirrored: float32 BGR."""
    image = load_photo(photos[int(rng.integers(len(photos)))])
    H, W = image.shape[:2]
    aspect = width / height
    # the crop's share of the largest crop of this aspect that fits (smaller shares zoom in on detail)
    share = math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))
    ch = max(8, int(min(H, W / aspect) * share))
    cw = max(8, int(ch * aspect))
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = cv2.resize(image[y:y + ch, x:x + cw], (width, height),
                      interpolation=cv2.INTER_AREA if ch > height else cv2.INTER_LINEAR)
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop


# ---- distractors -------------------------------------------------------------------------------------------

def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An ellipse, polygon or rounded blob filling most of an ``h x w`` box: float32 alpha in [0, 1]."""
    mask = np.zeros((h, w), np.uint8)
    style = rng.integers(3)
    if style == 0:
        cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 255, -1)
    elif style == 1:
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        pts = np.stack([w / 2 + radii * (w / 2 - 1) * np.cos(angles), h / 2 + radii * (h / 2 - 1) * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 255)
    else:
        cv2.rectangle(mask, (0, 0), (w - 1, h - 1), 255, -1)
    return mask.astype(np.float32) / 255


def _text_patch(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A line of random letters and digits sized to the box: (colour patch, alpha)."""
    letters = "ABCDEFGHKMNPRSTUVWXYZ0123456789"
    text = "".join(letters[i] for i in rng.integers(len(letters), size=int(rng.integers(2, 8))))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(w / max(tw, 1), h / max(th + base, 1))
    canvas = np.zeros((h, w), np.uint8)
    cv2.putText(canvas, text, (0, max(1, int(th * scale))), font, max(scale, 0.2), 255,
                max(1, int(2 * scale)), cv2.LINE_AA)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    return np.broadcast_to(colour, (h, w, 3)).copy(), canvas.astype(np.float32) / 255


def distractor(rng: np.random.Generator, photos: Sequence[Path] | None, h: int, w: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A non-fashion object of ``h x w`` px: (float32 BGR patch, float32 alpha in [0, 1])."""
    kind = rng.random()
    if kind < 0.15:
        return _text_patch(rng, h, w)
    alpha = _shape_mask(rng, h, w)
    if photos and kind < 0.65:  # a cut-out of a real photograph: the most object-like clutter there is
        patch = photo_crop(rng, photos, h, w, zoom=(0.05, 0.4))
    else:  # a shaded solid: one colour with a linear light fall-off
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        t = (x * np.cos(angle) + y * np.sin(angle)) / max(h, w)
        patch = colour * (0.7 + 0.6 * (t - t.min()))[..., None]
    return np.clip(patch, 0, 255), alpha


def paste_distractor(rng: np.random.Generator, canvas: np.ndarray, photos: Sequence[Path] | None,
                     size: tuple[int, int]) -> np.ndarray:
    """Alpha-blend a random distractor of about ``size`` px (min, max side) at a random place; returns its
    ``[H, W]`` bool footprint (what it covers)."""
    H, W = canvas.shape[:2]
    h = int(rng.integers(size[0], size[1] + 1))
    w = int(np.clip(h * math.exp(rng.uniform(-0.7, 0.7)), 4, W))
    h = min(h, H)
    patch, alpha = distractor(rng, photos, h, w)
    x, y = int(rng.integers(-w // 3, W - 2 * w // 3 + 1)), int(rng.integers(-h // 3, H - 2 * h // 3 + 1))
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    footprint = np.zeros((H, W), bool)
    if cx0 >= cx1 or cy0 >= cy1:
        return footprint
    a = alpha[cy0 - y:cy1 - y, cx0 - x:cx1 - x, None]
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1 - a
    region += a * patch[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
    footprint[cy0:cy1, cx0:cx1] = a[..., 0] > 0.5
    return footprint


# ---- camera effects ----------------------------------------------------------------------------------------

def motion_kernel(length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return k / max(float(k.sum()), 1e-6)


def blur(rng: np.random.Generator, image: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Motion blur (a line kernel) or defocus (a Gaussian), up to ~``7 * strength`` px wide on a 320-px frame."""
    scale = max(image.shape[:2]) / 320
    if rng.random() < 0.5:
        length = max(3, int(rng.uniform(3, 3 + 6 * strength) * scale) | 1)
        return cv2.filter2D(image, -1, motion_kernel(length, rng.uniform(0, np.pi)))
    sigma = rng.uniform(0.6, 0.6 + 1.6 * strength) * scale
    return cv2.GaussianBlur(image, (0, 0), sigma)


def lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Exposure, gamma, a colour cast and a light gradient across the frame."""
    H, W = image.shape[:2]
    gain = math.exp(rng.uniform(-0.5, 0.35))
    cast = 1 + rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle)) / max(H, W)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    fall = 1 - rng.uniform(0, 0.45) * t
    out = image * (gain * fall)[..., None] * cast
    gamma = math.exp(rng.uniform(-0.3, 0.3))
    return 255 * np.power(np.clip(out, 0, 255) / 255, gamma)


def noise(rng: np.random.Generator, image: np.ndarray, sigma_max: float = 8.0) -> np.ndarray:
    """Sensor noise: Gaussian read noise plus shot noise that grows with brightness."""
    sigma = rng.uniform(0, sigma_max)
    shot = rng.uniform(0, 0.6)
    std = np.sqrt(sigma ** 2 + shot * np.clip(image, 0, 255))
    return image + std * rng.standard_normal(image.shape, dtype=np.float32)


def jpeg(rng: np.random.Generator, image: np.ndarray, quality: tuple[int, int] = (30, 90)) -> np.ndarray:
    """Encode and decode at a random JPEG quality: blocking and ringing as in compressed footage."""
    q = int(rng.integers(quality[0], quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", np.clip(np.rint(image), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) if ok else image


def camera(rng: np.random.Generator, image: np.ndarray, blur_p: float = 0.4, strength: float = 1.0) -> np.ndarray:
    """The whole camera: lighting, sometimes blur, noise, compression. Float32 BGR in, float32 BGR out."""
    out = lighting(rng, image) if rng.random() < 0.8 else image
    if rng.random() < blur_p:
        out = blur(rng, out, strength)
    if rng.random() < 0.7:
        out = noise(rng, out)
    if rng.random() < 0.7:
        out = jpeg(rng, out)
    return np.clip(out, 0, 255)


# ---- item geometry -----------------------------------------------------------------------------------------

def rotate(shade: np.ndarray, alpha: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rotate a sprite's shade and alpha about its centre on a canvas large enough to hold it; returns both and
    how far the canvas grew to the left and top (the sprite's centre stays put)."""
    h, w = alpha.shape
    rad = math.radians(degrees)
    nw = int(math.ceil(abs(w * math.cos(rad)) + abs(h * math.sin(rad))))
    nh = int(math.ceil(abs(w * math.sin(rad)) + abs(h * math.cos(rad))))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    flags = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (cv2.warpAffine(shade, m, (nw, nh), **flags), cv2.warpAffine(alpha, m, (nw, nh), **flags),
            (nw - w) // 2, (nh - h) // 2)
