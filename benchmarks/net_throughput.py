"""Training-step throughput of vgg option sets side by side: how vgg-fast's shape was picked.

    .venv/bin/python benchmarks/net_throughput.py [--isa avx2] [--batches 128,256]

Each net runs `models_bench.py`'s `throughput()` training step (synthetic 28x28 batches, channels_last, SGD with
momentum, fp32, 2 warm-up steps, 8 timed), the step whose vgg-small figure on the Zen 3 BENCHMARKS.md compares
against. --isa avx2 caps torch's kernels at AVX2, as time_to_accuracy.py does. One line per net and batch size.
"""

from __future__ import annotations

import argparse

NETS = {  # name: (registry model, options)
    "vgg-small": ("vgg-small", {}),
    "32-64-128 convs 1-2-2": ("vgg", {"channels": [32, 64, 128], "convs": [1, 2, 2], "dropout": 0.1}),
    "32-64-128 convs 1-1-1": ("vgg", {"channels": [32, 64, 128], "convs": 1, "dropout": 0.1}),
    "24-48-96 convs 1-2-2": ("vgg", {"channels": [24, 48, 96], "convs": [1, 2, 2], "dropout": 0.1}),
    "48-96-192 convs 1-1-1": ("vgg", {"channels": [48, 96, 192], "convs": 1, "dropout": 0.1}),
    "vgg-fast": ("vgg-fast", {}),
    # airbench's order: each stage's max-pool before its last BN + activation (BENCHMARKS.md step 32)
    "vgg-fast pool-early": ("vgg-fast", {"pool_early": True}),
    # candidates for the 60-minute recipe (BENCHMARKS.md, "Best CPU recipe within 60 minutes")
    "40-80-160 convs 1-2-2": ("vgg", {"channels": [40, 80, 160], "convs": [1, 2, 2], "dropout": 0.1}),
    "48-96-192 convs 1-2-2": ("vgg", {"channels": [48, 96, 192], "convs": [1, 2, 2], "dropout": 0.1}),
    "vgg": ("vgg", {}),
    "vgg-fast-wide": ("vgg-fast-wide", {}),
    "vgg-fast-wide pool-early": ("vgg-fast-wide", {"pool_early": True}),
}

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", choices=("native", "avx2"), default="native")
    p.add_argument("--batches", default="128,256")
    p.add_argument("--nets", default="", help="comma-separated names from NETS (default: all)")
    args = p.parse_args()
    from time_to_accuracy import cap_isa

    cap_isa(args.isa)
    import torch
    from models_bench import throughput

    from fashionkit.classify.models import count_mflops, create_model

    torch.manual_seed(0)
    chosen = args.nets.split(",") if args.nets else list(NETS)
    unknown = [n for n in chosen if n not in NETS]
    if unknown:
        raise SystemExit(f"net_throughput: unknown net {unknown[0]!r}; choose from: {', '.join(NETS)}")
    for label in chosen:
        name, options = NETS[label]
        mflops = count_mflops(create_model(name, **options))
        for batch in (int(b) for b in args.batches.split(",")):
            rate = throughput(name, torch.device("cpu"), None, True, batch, **options)
            print(f"{label:24s} batch {batch:4d}  {mflops:6.1f} MFLOPs  {rate:7.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
