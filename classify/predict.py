"""``classify predict``: a trained run's top-k classes for image files; and batched class probabilities, which
eval and inspect share."""

from __future__ import annotations

from pathlib import Path

import torch

from fashionkit.classify.checkpoint import load_run_model
from fashionkit.classify.defaults import EVAL_BATCH
from fashionkit.device import autocast, select_device
from fashionkit.errors import UserError

# test-time augmentation: the image and its mirror image, each also moved one pixel up-left and down-right (the
# background comes in at the edge). On the vgg-fast default's weights this scored 93.90% test accuracy against
# 93.59% for the image and its mirror alone and 93.37% for the image alone (BENCHMARKS.md, "Time to accuracy").
TTA_SHIFTS = ((0, 0), (-1, -1), (1, 1))


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The views TTA averages for a normalised batch ``[B, 1, H, W]``: TTA_SHIFTS of the image, then of its mirror
    image, each ``[B, 1, H, W]`` (a forward pass sees no more images than the batch: see defaults.EVAL_BATCH)."""
    from fashionkit.data.loader import normalize

    background = float(normalize(torch.zeros(())))
    h, w = x.shape[-2:]
    keep_layout = x.is_contiguous(memory_format=torch.channels_last)
    views = []
    for image in (x, x.flip(-1)):
        padded = torch.nn.functional.pad(image, (1, 1, 1, 1), value=background)
        for dy, dx in TTA_SHIFTS:
            view = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            views.append(view.contiguous(memory_format=torch.channels_last) if keep_layout else view)
    return views


def tta_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean softmax probabilities over ``tta_views(x)`` (float32): the image's views and the mirror's averaged
    apart, then the two."""
    views, k = tta_views(x), len(TTA_SHIFTS)
    image = sum(model(v).float().softmax(1) for v in views[:k]) / k
    mirror = sum(model(v).float().softmax(1) for v in views[k:]) / k
    return (image + mirror) / 2


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, device: torch.device, amp=None,
                  batch_size: int = EVAL_BATCH, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities ``[N, C]`` (float32, CPU) for uint8 images ``[N, 28, 28]``.

    ``tta``: average over the image and its mirror image, each also shifted a pixel both ways (``tta_views``).
    Training augments with flips and shifts, so these views are as familiar to the model as the original, and
    their errors partly cancel.
    """
    from fashionkit.data.loader import normalize, to_float

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(images[start:start + batch_size].to(device)))
        with autocast(device, amp):
            probs = tta_probs(model, x) if tta else model(x).float().softmax(1)
        out.append(probs.cpu())
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "num_classes", 10))


def predict_files(run: str | Path, images: list[str | Path], top_k: int = 3, tta: bool = False,
                  device: str = "auto", weights: str = "best") -> list[dict]:
    """``[{image, predictions: [{class_id, class_name, probability}, ...top_k]}]`` for image files."""
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.data.images import read_item_images

    if not 1 <= top_k <= len(CLASSES):
        raise UserError(f"--top-k must be between 1 and {len(CLASSES)}, got {top_k}")
    dev = select_device(device)
    model, _, _, _ = load_run_model(run, dev, weights)
    items = read_item_images(images)  # every file is read (and checked) before any work is done
    probs = predict_probs(model, items, dev, tta=tta)
    top = probs.topk(top_k, dim=1)
    return [{"image": str(path),
             "predictions": [{"class_id": int(c), "class_name": CLASSES[int(c)], "probability": round(float(p), 6)}
                             for p, c in zip(values, ids)]}
            for path, values, ids in zip(images, top.values, top.indices)]


def format_predictions(results: list[dict]) -> str:
    from fashionkit.data.fashion_mnist import CLASSES

    width = max(map(len, CLASSES))
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {i}. {p['class_name']:<{width}}  {p['probability']:.3f}"
                  for i, p in enumerate(r["predictions"], 1)]
    return "\n".join(lines)
