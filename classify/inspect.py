"""``classify inspect``: what a trained CNN's first layers look for and respond to.

Writes ``filters.png`` (the first convolution's kernels, on one colour scale centred on 0: red excites, blue
inhibits), ``input.png`` (the 28x28 item the model sees) and ``features_<k>_<layer>.png`` for each of the first
K convolutions of the trunk (their output channels for that item, captured with forward hooks).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from fashionkit.errors import UserError

MAX_MAPS = 64  # channels shown per layer: more would make cells too small to read


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The trunk's convolutions in forward-definition order, named as in the state dict."""
    return [(f"trunk.{name}", m) for name, m in model.trunk.named_modules() if isinstance(m, nn.Conv2d)]


def load_item(image: str | Path | None, index: int | None, split: str, data_dir: str | None
              ) -> tuple[torch.Tensor, str, int | None]:
    """``(uint8 [28, 28], description, true label or None)`` from an image file or a dataset index."""
    if (image is None) == (index is None):
        raise UserError("give exactly one of --image PATH or --index N (an item of --split)")
    if image is not None:
        from fashionkit.data.images import read_item_image

        return read_item_image(image), str(image), None
    from fashionkit.data import load_split

    images, labels = load_split(split, data_dir)
    if not 0 <= index < len(labels):
        raise UserError(f"--index {index} is out of range: the {split} split has items 0 to {len(labels) - 1}")
    return images[index], f"{split} #{index}", int(labels[index])


def inspect_run(run: str | Path, image: str | Path | None = None, index: int | None = None, split: str = "test",
                out: str | Path | None = None, layers: int = 3, device: str = "auto", weights: str = "best",
                data_dir: str | None = None) -> dict:
    from fashionkit.bundled import output_home
    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.classify.predict import predict_probs
    from fashionkit.data.fashion_mnist import CLASSES
    from fashionkit.device import select_device
    from fashionkit.runs import ensure_dir

    if layers < 1:
        raise UserError(f"--layers must be at least 1, got {layers}")
    dev = select_device(device)
    model, _, cfg, run = load_run_model(run, dev, weights)
    convs = conv_layers(model)
    if not convs:
        raise UserError(f"the model of {run} ({model.name}) has no convolution layers, so there are no filters or "
                        f"feature maps to show; inspect a run of a CNN (lenet, simple, vgg, resnet, ...)")
    item, what, label = load_item(image, index, split, data_dir or cfg.get("data_dir"))
    out = ensure_dir(out or output_home(run, "classifier") / "inspect")

    maps: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: maps.__setitem__(name, o.detach().float().cpu()))
             for name, m in convs[:layers]]
    try:
        probs = predict_probs(model, item[None], dev)[0]
    finally:
        for h in hooks:
            h.remove()

    files = {"input": str(plot_input(item, out / "input.png", what))}
    first_name, first = convs[0]
    files["filters"] = str(plot_filters(first.weight.detach().float().cpu(), out / "filters.png",
                                        f"{run.name}: {first_name} filters ({first.in_channels}->{first.out_channels}, "
                                        f"{first.kernel_size[0]}x{first.kernel_size[1]})"))
    for k, (name, _) in enumerate(convs[:layers], 1):
        fmap = maps[name][0]
        title = f"{run.name}: {name} output for {what} ({fmap.shape[0]} channels, {fmap.shape[1]}x{fmap.shape[2]})"
        files[f"features_{k}"] = str(plot_maps(fmap, out / f"features_{k}_{name.replace('.', '-')}.png", title))
    pred = int(probs.argmax())
    return {"item": what, "label": CLASSES[label] if label is not None else None, "pred": CLASSES[pred],
            "probability": float(probs[pred]), "layers": [n for n, _ in convs[:layers]],
            "conv_layers": len(convs), "files": files}


def _grid(cells: int, cell: float = 0.9, title_space: float = 0.5):
    from fashionkit.plots import pyplot

    cols = min(cells, max(4, math.ceil(math.sqrt(cells))))
    rows = math.ceil(cells / cols)
    # constrained layout keeps each cell's title clear of the row above and makes room for a colour bar
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.15) + title_space),
                                  squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)[:cells]


def plot_input(item: torch.Tensor, path: Path, what: str) -> Path:
    from fashionkit.plots import pyplot, save

    fig, ax = pyplot().subplots(figsize=(2.6, 2.8))
    ax.imshow(item.numpy(), cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"input: {what}", fontsize=9)
    ax.axis("off")
    return save(fig, path)


def plot_filters(weight: torch.Tensor, path: Path, title: str) -> Path:
    """``weight`` [out, in, k, k]; with several input channels each filter is shown averaged over them."""
    from fashionkit.plots import save

    kernels = weight.mean(1)[:MAX_MAPS]
    scale = float(kernels.abs().max()) or 1.0
    fig, axes = _grid(len(kernels))
    for i, (ax, k) in enumerate(zip(axes, kernels)):
        im = ax.imshow(k.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(str(i), fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="weight")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_maps(fmap: torch.Tensor, path: Path, title: str) -> Path:
    """``fmap`` [C, h, w]; each channel on its own scale (activations differ in range between channels)."""
    from fashionkit.plots import save

    fig, axes = _grid(min(len(fmap), MAX_MAPS))
    for i, (ax, m) in enumerate(zip(axes, fmap)):
        ax.imshow(m.numpy(), cmap="viridis")
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)
