"""``fashionkit data ...``: look at the dataset, the augmentation presets and the outliers."""

from __future__ import annotations

from pathlib import Path

from fashionkit.config import DATA_DIR_HELP, Opt, add_options, resolve

PREVIEW_OPTIONS = {
    "preset": Opt("flip-perspective-erase", "augmentation preset to preview (see `fashionkit data presets`)"),
    "out": Opt("preview.png", "PNG file to write"),
    "samples": Opt(8, "number of training images (rows)"),
    "variants": Opt(7, "augmented versions of each image (columns after the original)"),
    "seed": Opt(0, "random seed"),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}

EDA_OPTIONS = {
    "out": Opt("eda", "directory for the plots and stats.json"),
    "samples": Opt(10, "random training images per class in samples.png"),
    "seed": Opt(0, "random seed for picking the samples"),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}

OUTLIERS_OPTIONS = {
    "epochs": Opt(15, "training epochs of the autoencoder (about 4 s each on the full split, 2 CPU cores)",
                  least=1),
    "batch_size": Opt(128, "training batch size", least=1),
    "lr": Opt(1e-3, "Adam learning rate"),
    "subset": Opt(None, "train on and rank a stratified subset of this many training images", type=int,
                  least=1),
    "top": Opt(16, "highest-error images listed per class", least=1),
    "seed": Opt(0, "random seed for initialisation and shuffling"),
    "device": Opt("auto", "where to train; auto picks cuda when available", choices=("auto", "cpu", "cuda")),
    "name": Opt(None, "run name under <runs-dir>/data/; none means outliers, numbered if taken", type=str),
    "runs_dir": Opt(None, "root of the run directories; none means $FASHIONKIT_RUNS or ./runs", type=str),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
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


def cmd_eda(args) -> int:
    from fashionkit.data.eda import run_eda

    cfg = resolve(EDA_OPTIONS, args)
    written = run_eda(cfg["out"], cfg["data_dir"], samples=cfg["samples"], seed=cfg["seed"])
    for path in written.values():
        print(f"wrote {path}")
    return 0


def cmd_outliers(args) -> int:
    from fashionkit.data.outliers import run_outliers

    run_outliers(resolve(OUTLIERS_OPTIONS, args))
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("presets", help="list the augmentation presets", formatter_class=formatter)
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("preview", help="save a PNG grid of augmented samples of a preset", formatter_class=formatter)
    add_options(p, PREVIEW_OPTIONS)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("eda", help="plots and pixel statistics of the dataset (class balance, means, samples)",
                       formatter_class=formatter)
    add_options(p, EDA_OPTIONS)
    p.set_defaults(func=cmd_eda)

    p = sub.add_parser("outliers", help="rank training images by autoencoder reconstruction error",
                       formatter_class=formatter)
    add_options(p, OUTLIERS_OPTIONS)
    p.set_defaults(func=cmd_outliers)
