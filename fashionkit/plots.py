"""Plot helpers shared by the stages. matplotlib is imported lazily with the headless Agg backend."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save atomically (temp file + rename) and close the figure."""
    from fashionkit.runs import atomic_save

    path = Path(path)
    atomic_save(lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:] or "png"), path)
    pyplot().close(fig)
    return path


def image_grid(images, path: str | Path, col_titles=None, row_labels=None, title: str | None = None,
               cell: float = 1.1, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None) -> Path:
    """``images``: array/tensor ``[rows, cols, (1,) H, W]`` of grey images. Without ``vmin``/``vmax`` each
    image is stretched to its own range; pass them to show all on one scale (e.g. 0 and 1)."""
    plt = pyplot()
    rows, cols = images.shape[0], images.shape[1]
    size = (cols * cell + (1.2 if row_labels else 0), rows * cell + 0.4)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = images[r, c]
            img = img.squeeze(0) if img.ndim == 3 else img
            ax = axes[r][c]
            ax.imshow(img.detach().cpu().float().numpy() if hasattr(img, "detach") else img, cmap=cmap,
                      vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)
