"""``fashionkit data ...``: look at the dataset, the augmentation presets and the outliers."""

from __future__ import annotations

from pathlib import Path

from fashionkit.config import Opt, add_options, resolve

PREVIEW_OPTIONS = {
    "preset": Opt("flip-perspective-erase", "augmentation preset to preview (see `fashionkit data presets`)"),
    "out": Opt("preview.png", "PNG file to write"),
    "samples": Opt(8, "number of training images (rows)"),
    "variants": Opt(7, "augmented versions of each image (columns after the original)"),
    "seed": Opt(0, "random seed"),
    "data_dir": Opt(None, "directory holding the Fashion-MNIST idx files", type=str),
}


def cmd_presets(args) -> int:
    from fashionkit.data.augment import PRESETS

    width = max(map(len, PRESETS))
    for name, (description, transforms) in PRESETS.items():
        print(f"{name:<{width}}  {description}")
        for t in transforms:
            print(f"{'':<{width}}    {t!r}")
    return 0


def cmd_preview(args) -> int:
    import torch
    from fashionkit.data.augment import build_augment
    from fashionkit.data.fashion_mnist import CLASSES, load_split
    from fashionkit.data.loader import to_float

    from fashionkit.plots import image_grid
    from fashionkit.runs import ensure_dir

    cfg = resolve(PREVIEW_OPTIONS, args)
    augment = build_augment(cfg["preset"])
    out = Path(cfg["out"])
    ensure_dir(out.parent)
    images, labels = load_split("train", cfg["data_dir"])
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg["seed"]))[: cfg["samples"]]
    originals = to_float(images[pick])
    g = torch.Generator().manual_seed(cfg["seed"])
    columns = [originals] + [augment(originals, g) if augment else originals for _ in range(cfg["variants"])]
    grid = torch.stack(columns, 1)  # [rows, cols, 1, H, W]
    titles = ["original"] + [f"#{i + 1}" for i in range(cfg["variants"])]
    row_labels = [CLASSES[int(labels[i])] for i in pick]
    image_grid(grid, out, col_titles=titles, row_labels=row_labels, title=f"preset: {cfg['preset']}")
    print(f"wrote {out}")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("presets", help="list the augmentation presets", formatter_class=formatter)
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("preview", help="save a PNG grid of augmented samples of a preset", formatter_class=formatter)
    add_options(p, PREVIEW_OPTIONS)
    p.set_defaults(func=cmd_preview)
