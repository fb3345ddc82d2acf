"""Augmentation presets, applied to whole batches with per-sample random parameters.

torchvision.transforms.v2 accepts a batched tensor but draws *one* set of random parameters for the whole
batch (every image in it flipped, or none). Training wants independent draws per image, and drawing them one
image at a time is the slowest part of a 2-core pipeline. So each transform here draws a vector of parameters
per batch and applies it in one vectorised call (a flip mask, one ``grid_sample`` for rotation/shift/
perspective, one mask for erasing). Semantics follow the torchvision transforms of the same names.

Inputs and outputs are float images in [0, 1], shape ``[B, C, H, W]``; normalisation happens afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fashionkit.errors import UserError


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def _chosen(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        flip = _chosen(x.shape[0], self.p, g).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class AlternatingFlip:
    """airbench's derandomised flip (Jordan 2024, arXiv 2404.00498, section 3.6): each image starts mirrored or not
    by a coin fixed per image and seed, and is mirrored in every other epoch after that. A random flip shows some
    images the same way several epochs running; this one shows every image both ways in any two consecutive epochs.
    Needs the images' dataset indices and the epoch (``BatchLoader`` passes them); without them it is a random flip.
    """

    takes_index = True

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None, index: torch.Tensor | None = None,
                 epoch: int = 0, seed: int = 0) -> torch.Tensor:
        if index is None:
            return RandomHorizontalFlip()(x, g)
        # the per-image coin: a bit of an integer hash of (index, seed) (no state to store or resume); int64 holds
        # every product here for indices under 2^31
        h = (index.long().cpu() * 2_654_435_761 + (seed + 1) * 2_246_822_519) % (1 << 32)
        h = ((h ^ (h >> 16)) * 0x45D9F3B) % (1 << 32)
        flip = (((h ^ (h >> 16)) & 1) ^ (epoch % 2)).bool().to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def __repr__(self) -> str:
        return "AlternatingFlip()"


class RandomAffine:
    """Rotation by up to ``degrees``, shift by up to ``translate`` of the size, optional ``scale`` range."""

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale: tuple[float, float] | None = None):
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        angle = _uniform(n, -self.degrees, self.degrees, g) * (math.pi / 180)
        # Normalised coordinates span [-1, 1], so a shift by a fraction f of the size is 2f.
        shift = _uniform(2 * n, -self.translate, self.translate, g).view(n, 2) * 2
        s = _uniform(n, *self.scale, g) if self.scale else torch.ones(n)
        # affine_grid maps output to input coordinates, so build the inverse of out = s*R*in + shift.
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        inv = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (1/s) R^T
        theta = torch.cat([inv, -(inv @ shift.unsqueeze(2))], 2)
        return _warp(x, theta.to(x.device, x.dtype))

    def __repr__(self) -> str:
        return f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale})"


def RandomRotation(degrees: float) -> RandomAffine:  # noqa: N802 - named like the torchvision transform
    return RandomAffine(degrees=degrees)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomPerspective:
    """Each corner moves inwards by up to ``distortion`` of the half-size, with probability ``p``."""

    def __init__(self, distortion: float = 0.5, p: float = 0.5):
        self.distortion, self.p = distortion, p

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        inward = -corners.sign()
        jitter = _uniform(n * 8, 0, self.distortion, g).view(n, 4, 2)
        jitter = jitter * _chosen(n, self.p, g).view(n, 1, 1)
        moved = corners + inward * jitter
        # Homography taking output points (moved corners) to input points (corners), as torchvision does.
        H = _homography(moved, corners.expand(n, 4, 2))
        ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                                indexing="ij")
        points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
        mapped = points @ H.transpose(1, 2)
        grid = (mapped[..., :2] / mapped[..., 2:]).view(n, h, w, 2)
        return F.grid_sample(x, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    def __repr__(self) -> str:
        return f"RandomPerspective(distortion={self.distortion}, p={self.p})"


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 homographies mapping 4 ``src`` points to 4 ``dst`` points, each ``[B, 4, 2]``."""
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    A = torch.cat([rows_u, rows_v], 1)
    b = torch.cat([u, v], 1).unsqueeze(-1)
    coeffs = torch.linalg.solve(A, b).squeeze(-1)
    return torch.cat([coeffs, torch.ones(len(coeffs), 1)], 1).view(-1, 3, 3)


class RandomCrop:
    """torchvision's ``RandomCrop(size, padding)`` at the input size: zero-pad by ``padding`` and cut the
    original size back out at a random offset, i.e. shift each image by whole pixels (no interpolation blur,
    and a gather instead of a ``grid_sample``: the cheapest geometric augmentation)."""

    def __init__(self, padding: int = 2):
        self.padding = padding

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        dy, dx = (torch.randint(0, 2 * p + 1, (2, n), generator=g)).to(x.device)
        padded = F.pad(x, (p, p, p, p))
        rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1)
        cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, chans, rows, cols]

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomErasing:
    """With probability ``p`` blank a rectangle of ``scale`` of the area and aspect ``ratio`` (torchvision's)."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0):
        self.p, self.scale, self.ratio, self.value = p, scale, ratio, value

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        area = _uniform(n, *self.scale, g) * h * w
        aspect = torch.exp(_uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), g))
        eh = torch.sqrt(area * aspect).round().clamp(1, h - 1)
        ew = torch.sqrt(area / aspect).round().clamp(1, w - 1)
        top = (torch.rand(n, generator=g) * (h - eh + 1)).floor()
        left = (torch.rand(n, generator=g) * (w - ew + 1)).floor()
        rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
        inside &= _chosen(n, self.p, g).view(-1, 1, 1)
        return x.masked_fill(inside.unsqueeze(1).to(x.device), self.value)

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"


class Compose:
    def __init__(self, transforms: list):
        self.transforms = transforms

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None, **where) -> torch.Tensor:
        """``where``: ``index`` (dataset indices of the batch), ``epoch`` and ``seed``, for the transforms that
        take them (``takes_index``); the others draw from ``g`` alone."""
        for t in self.transforms:
            x = t(x, g, **where) if where and getattr(t, "takes_index", False) else t(x, g)
        return x

    def __repr__(self) -> str:
        return " -> ".join(map(repr, self.transforms)) or "identity"


# The presets practitioners use on this dataset (see shared/reference): name -> (description, transforms).
# Flips use p=0.5: flipping is label-preserving for every class here, and 0.5 gives the most variety.
PRESETS: dict[str, tuple[str, list]] = {
    "none": ("no augmentation", []),
    "flip": ("horizontal flip", [RandomHorizontalFlip()]),
    "flip-rotate": ("flip + rotation ±5°", [RandomHorizontalFlip(), RandomRotation(5)]),
    "flip-erase-rotate": ("flip + random erasing + rotation ±5°",
                          [RandomHorizontalFlip(), RandomErasing(), RandomRotation(5)]),
    "flip-perspective-erase": ("flip + perspective (0.115, p=0.4) + random erasing",
                               [RandomHorizontalFlip(), RandomPerspective(0.115, p=0.4), RandomErasing()]),
    "flip-crop": ("flip + random crop with 2 px padding (a shift by whole pixels)",
                  [RandomHorizontalFlip(), RandomCrop(2)]),
    "altflip-crop": ("alternating flip (every image mirrored in every other epoch) + random crop with 2 px padding",
                     [AlternatingFlip(), RandomCrop(2)]),
    "flip-crop-erase": ("flip + random crop with 2 px padding + random erasing",
                        [RandomHorizontalFlip(), RandomCrop(2), RandomErasing()]),
    "flip-affine": ("flip + affine (±10°, 10% shift)", [RandomHorizontalFlip(), RandomAffine(10, 0.1)]),
    "rotate-shift-flip": ("rotation ±15° + 20% shift + flip", [RandomAffine(15, 0.2), RandomHorizontalFlip()]),
}


def build_augment(name: str) -> Compose | None:
    """The preset's transforms as one callable ``(batch, generator) -> batch``; ``None`` for ``none``."""
    if name not in PRESETS:
        raise UserError(f"unknown augmentation preset {name!r}; choose one of: {', '.join(PRESETS)} "
                        f"(list them with `fashionkit data presets`)")
    transforms = PRESETS[name][1]
    return Compose(transforms) if transforms else None
