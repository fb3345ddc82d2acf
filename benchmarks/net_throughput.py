"""Training-step throughput of vgg option sets side by side: how vgg-fast's shape was picked.

    .venv/bin/python benchmarks/net_throughput.py [--isa avx2] [--batches 128,256]

Each net runs `models_bench.py`'s training step (synthetic 28x28 batches, channels_last, SGD with Nesterov
momentum, fp32): 3 warm-up steps, then about 4,096 images timed. --isa avx2 caps torch's kernels at AVX2, as
time_to_accuracy.py does. Prints one line per net and batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

NETS = {  # name: (registry model, options)
    "vgg-small": ("vgg-small", {}),
    "32-64-128 convs 1-2-2": ("vgg", {"channels": [32, 64, 128], "convs": [1, 2, 2], "dropout": 0.1}),
    "32-64-128 convs 1-1-1": ("vgg", {"channels": [32, 64, 128], "convs": 1, "dropout": 0.1}),
    "24-48-96 convs 1-2-2": ("vgg", {"channels": [24, 48, 96], "convs": [1, 2, 2], "dropout": 0.1}),
    "48-96-192 convs 1-1-1": ("vgg", {"channels": [48, 96, 192], "convs": 1, "dropout": 0.1}),
    "vgg-fast": ("vgg-fast", {}),
}
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", choices=("native", "avx2"), default="native")
    p.add_argument("--batches", default="128,256")
    args = p.parse_args()
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})
    import torch
    import torch.nn.functional as F

    from fashionkit.classify.models import count_mflops, create_model

    torch.manual_seed(0)
    for label, (name, options) in NETS.items():
        for batch in (int(b) for b in args.batches.split(",")):
            model = create_model(name, **options).to(memory_format=torch.channels_last)
            x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,))
            opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9,
                                  nesterov=True)

            steps = max(4, 4096 // batch)
            for i in range(3 + steps):
                if i == 3:  # after the warm-up
                    start = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate = steps * batch / (time.perf_counter() - start)
            print(f"{label:24s} batch {batch:4d}  {count_mflops(model):6.1f} MFLOPs  {rate:7.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
