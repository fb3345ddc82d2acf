"""``metric lookup``: the k nearest reference items of one image, as a table (or JSON) and a PNG strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashionkit.errors import UserError


def query_image(image: str | None, test_index: int | None, train_index: int | None, data_dir=None
                ) -> tuple[torch.Tensor, dict]:
    """The query as uint8 ``[28, 28]`` and what it is: an image file, or an item of the test/training split."""
    given = [name for name, value in (("IMAGE", image), ("--test-index", test_index), ("--train-index", train_index))
             if value is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one query: IMAGE, --test-index N or --train-index N (got "
                        f"{' and '.join(given) if given else 'none'})")
    if image is not None:
        from fashionkit.data.images import read_item_image  # inverts, crops and resizes like a dataset item

        path = Path(image)
        return read_item_image(path), {"kind": "image", "path": str(path), "label": None, "name": path.stem}
    from fashionkit.data import load_split

    split, index = ("test", test_index) if test_index is not None else ("train", train_index)
    images, labels = load_split(split, data_dir)
    if not 0 <= index < len(labels):
        raise UserError(f"--{split}-index {index} is out of range: the {split} split has {len(labels)} items "
                        f"(0 to {len(labels) - 1})")
    return images[index], {"kind": split, "dataset_index": index, "label": int(labels[index]),
                           "name": f"{split}-{index}"}


def lookup(run: str | Path, opts: dict, image: str | None = None) -> dict:
    from fashionkit.data import CLASSES
    from fashionkit.device import select_device
    from fashionkit.metric.data import embed
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder
    from fashionkit.runs import open_run

    run = open_run(run, "metric")
    device = select_device(opts["device"])
    net, ckpt = load_embedder(run, device)
    index = open_run_index(run, ckpt["model_hash"], device)
    k = opts["k"]
    index.check_k(k)
    img, query = query_image(image, opts["test_index"], opts["train_index"], opts["data_dir"])
    z = embed(net, img.unsqueeze(0), device).numpy()
    dist, rows = index.search(z, k)
    neighbours = []
    for rank, (d, row) in enumerate(zip(dist[0], rows[0]), 1):
        if row < 0:
            continue  # an approximate index (ivf with few probes) can return fewer than k
        label = int(index.labels[row])  # -1: an image added with `metric index --add`, of no known class
        neighbours.append({"rank": rank, "class": label, "class_name": CLASSES[label] if label >= 0 else "(added)",
                           "distance": float(d), "dataset_index": int(index.source[row]),
                           "split": str(index.split[row]),
                           **({"path": str(index.paths[row])} if index.source[row] < 0 else {})})
    if query["label"] is not None:
        query["class_name"] = CLASSES[query["label"]]
    if query["kind"] == "train":  # a reference item when its class is indexed: its own copy comes first
        query["in_index"] = bool(np.isin(query["dataset_index"], index.source))
    from fashionkit.bundled import output_home

    out = Path(opts["out"]) if opts["out"] else output_home(run, "metric") / "lookups" / f"{query['name']}.png"
    write_strip(img, query, neighbours, out, opts["data_dir"])
    return {"run": str(run), "query": query, "k": k, "index": index.meta["kind"], "neighbours": neighbours,
            "png": str(out)}


def write_strip(query_img: torch.Tensor, query: dict, neighbours: list[dict], path: Path, data_dir=None) -> Path:
    """One row: the query, then its neighbours nearest first, each titled with class and distance."""
    from fashionkit.data import load_split
    from fashionkit.data.images import read_item_image
    from fashionkit.plots import image_grid
    from fashionkit.runs import ensure_dir

    ensure_dir(path.parent)
    train_images, _ = load_split("train", data_dir)
    tiles = [query_img] + [train_images[n["dataset_index"]] if n["dataset_index"] >= 0 else read_item_image(n["path"])
                           for n in neighbours]
    titles = ["query" + (f"\n{query['class_name']}" if query.get("class_name") else "")]
    titles += [f"#{n['rank']} {n['class_name']}\nd={n['distance']:.3f}" for n in neighbours]
    return image_grid(torch.stack(tiles).unsqueeze(0), path, col_titles=titles, cell=1.3, vmin=0, vmax=255)


def format_table(result: dict) -> str:
    q = result["query"]
    what = q["path"] if q["kind"] == "image" else f"{q['kind']} item {q['dataset_index']} ({q['class_name']})"
    if q.get("in_index") is False:
        what += ", not in the index: its class is not one the run was trained on"
    lines = [f"query: {what}; {len(result['neighbours'])} nearest of the {result['index']} index", "",
             f"{'rank':>4}  {'class':<12} {'distance':>8}  {'dataset index':>13}  split"]
    for n in result["neighbours"]:
        where = f"{n['dataset_index']:>13}  {n['split']}" if "path" not in n else f"{'':>13}  {n['path']}"
        lines.append(f"{n['rank']:>4}  {n['class_name']:<12} {n['distance']:>8.4f}  {where}")
    lines += ["", f"strip: {result['png']}"]
    return "\n".join(lines)
