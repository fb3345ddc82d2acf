"""Data-parallel training across processes (torch DistributedDataParallel), started by ``torchrun``.

    torchrun --standalone --nproc_per_node 4 -m fashionkit classify train ...          # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m fashionkit classify train ...

A process started without torchrun (no ``WORLD_SIZE`` in its environment, or ``WORLD_SIZE=1``) is a world of one:
every helper here is then a no-op, so the single-process path stays exactly what it was. Under torchrun, rank 0
owns the run directory (makes it, writes every file) and the others follow: they get its path and its
validation figures from rank 0, so all ranks take the same decisions (best epoch, early stop) and stay in lock
step. GPUs use NCCL, CPUs gloo.
"""

from __future__ import annotations

import os
from typing import Any

from fashionkit.errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device) -> Any:
    """Join the process group torchrun set up (once) and return this rank's device: ``cuda`` becomes
    ``cuda:LOCAL_RANK``. A no-op returning ``device`` for a single process."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1:
        return device
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    if device.type == "mps":
        raise UserError("distributed training needs CUDA GPUs or CPUs, not mps; use --device cpu or cuda")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                            f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def share(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object); ``obj`` itself for a single process."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact)."""
    import torch
    import torch.distributed as dist

    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_true(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is true on any (one rank's NaN loss stops all of them together)."""
    if not active():
        return flag
    return all_sum([float(flag)], device)[0] > 0


def wrap(model, device, **ddp_options):
    """``model`` under DistributedDataParallel when several processes train it; ``model`` otherwise.
    ``ddp_options`` go to DistributedDataParallel (e.g. ``find_unused_parameters``)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **ddp_options)


def finish() -> None:
    """Leave the process group (after the last collective call)."""
    import torch.distributed as dist

    if active():
        dist.barrier()
        dist.destroy_process_group()
