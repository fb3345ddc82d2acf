"""Would scaled-down views add to `--tta`? Scores classify runs on their validation items and the test split with the
six TTA views (`classify/predict.py`: image and mirror image, each also shifted a pixel both ways), with each scaled
view alone, and with the six plus one scaled view (weight 1/4 or 1/2).

    .venv/bin/python benchmarks/tta_views.py RUN [RUN ...] [--sizes 26,24,22] [--out benchmarks/results/x.json]

The default recipe trains its first epochs on images scaled down to 16-27 px (progressive resizing, bilinear with
antialiasing, fed at that size: the net ends in a global max pool), so a view scaled down the same way is one the
net has seen in training; the question is whether it adds to the six. Choose on validation, then look at test.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="classify run directories")
    p.add_argument("--sizes", default="26,24,22", help="sizes (px) of the scaled views")
    p.add_argument("--out", default=None, help="JSON path for the results")
    args = p.parse_args()
    import torch
    import torch.nn.functional as F

    from fashionkit.classify.checkpoint import load_run_model
    from fashionkit.classify.evaluate import split_items
    from fashionkit.classify.predict import tta_probs
    from fashionkit.data.loader import normalize, to_float

    torch.set_grad_enabled(False)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for run in args.runs:
        model, _, cfg, _ = load_run_model(run, torch.device("cpu"), "best")
        model.eval()
        scores: dict[str, dict[str, float]] = {}
        for split in ("val", "test"):
            images, labels, _ = split_items(cfg, split)  # val: the items the run validated on
            six, scaled = [], {z: [] for z in sizes}
            for start in range(0, len(images), 1000):
                x = normalize(to_float(images[start:start + 1000])).contiguous(memory_format=torch.channels_last)
                n = len(x)
                six.append(tta_probs(model, x))
                for z in sizes:
                    small = F.interpolate(torch.cat([x, x.flip(-1)]), size=(z, z), mode="bilinear", antialias=True,
                                          align_corners=False)
                    probs = model(small.contiguous(memory_format=torch.channels_last)).softmax(1)
                    scaled[z].append((probs[:n] + probs[n:]) / 2)
            y = torch.as_tensor(labels)

            def accuracy(probs: torch.Tensor, y: torch.Tensor = y) -> float:
                return round(100 * float((probs.argmax(1) == y).float().mean()), 2)

            six_p = torch.cat(six)
            scores.setdefault("six views", {})[split] = accuracy(six_p)
            for z in sizes:
                s = torch.cat(scaled[z])
                scores.setdefault(f"{z} px and its mirror alone", {})[split] = accuracy(s)
                scores.setdefault(f"six + {z} px, weight 1/4", {})[split] = accuracy(six_p * 3 / 4 + s / 4)
                scores.setdefault(f"six + {z} px, weight 1/2", {})[split] = accuracy((six_p + s) / 2)
        results.append({"run": str(run), "model": cfg["model"], "model_opts": cfg.get("model_opts"),
                        "seed": cfg["seed"], "accuracy": scores})
        print(f"{run} (seed {cfg['seed']}):", flush=True)
        for name, by_split in scores.items():
            print(f"  {name:28s} val {by_split['val']:6.2f}%  test {by_split['test']:6.2f}%", flush=True)
    if args.out:
        from fashionkit.runs import atomic_write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out), {"sizes": sizes, "results": results})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
