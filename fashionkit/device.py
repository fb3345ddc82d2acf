"""Device and precision choices, in one place for every stage (torch imported lazily: --help stays fast)."""

from __future__ import annotations

import contextlib
import os

from fashionkit.errors import UserError

DEVICE_HELP = "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def select_device(name: str = "auto"):
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' asked for but Apple MPS is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use {DEVICE_HELP}")
    return device


# glibc malloc hands a block over its (adaptive) mmap threshold back to the kernel when it is freed and trims the
# heap's free top, so a CPU run asking for the same activation-sized blocks every step page-faults them in again:
# 14 million faults in one default `classify train` on a Zen 3, and the six-view TTA test of 10,000 items, 256
# images a pass, took 22.4 s where it takes 12.7 s with freed blocks kept. Blocks up to 32 MiB (glibc's most) come
# from the heap, and its free top is kept up to 256 MiB. classify's training and scoring and metric train keep them;
# `detect video` (ultralytics, ONNX Runtime, OpenCV) ran 3-20% slower with them kept in 4 of 5 comparisons on the
# same CPU, so it keeps glibc's way (BENCHMARKS.md, "Freed memory kept for the next step").
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed blocks for reuse instead of returning them to the kernel (see above);
    True where it did. Not on other C libraries, nor with FASHIONKIT_KEEP_FREED_MEMORY=0 (glibc's defaults)."""
    if os.environ.get("FASHIONKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError, TypeError):  # none with mallopt (macOS, Windows): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold,
                                                                                    MALLOC_TRIM_THRESHOLD))


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_amx() -> bool:
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... from /proc/cpuinfo; ``""`` where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_prefers_bf16() -> bool:
    """Whether bf16 autocast trains faster than fp32 on this CPU (BENCHMARKS.md, "Kinds of CPU").

    Native bf16 is not enough: on an AMD Zen 4 (AVX-512 bf16) bf16 trained every registry model 1.2-3.9x faster
    than fp32, but on an Intel Xeon with AVX-512 bf16 and no AMX (family 6 model 207, AMX not exposed by its VM),
    whose full-width AVX-512 makes fp32 fast, it trained vgg-fast at 0.75x and most models at 0.7-0.9x. AMX's
    bf16 tiles are what Intel's bf16 speed comes from.
    """
    return cpu_has_bf16() and (cpu_has_amx() or cpu_vendor() == "AuthenticAMD")


def amp_dtype(device, amp: str = "auto"):
    """The autocast dtype to train/infer with, or None for fp32.

    auto: bf16 on CPUs where it pays (`cpu_prefers_bf16`: AMX, or AMD's AVX-512 bf16) and on GPUs that support
    it, fp16 on older GPUs, fp32 otherwise.
    """
    if amp not in AMP_CHOICES:
        raise UserError(f"unknown precision {amp!r}; use one of {', '.join(AMP_CHOICES)}")
    import torch

    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_prefers_bf16():
        return torch.bfloat16
    return None


def autocast(device, dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype) -> str:
    """``None`` / bf16 / fp16 autocast dtype -> ``fp32`` / ``bf16`` / ``fp16`` for logs and summaries."""
    return {None: "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[None if dtype is None else str(dtype)]
