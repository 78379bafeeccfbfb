"""Facts about the machine a process runs on, for the driver and the workers alike."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a Slurm or container limit), not
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """GPUs torch sees; 0 without importing torch on a machine with no NVIDIA driver (a CPU
    machine's driver process then never imports torch)."""
    import glob

    if not os.path.exists("/proc/driver/nvidia/version") and not glob.glob("/dev/nvidia[0-9]*"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(requested: str) -> torch.device:
    """The torch device ``auto`` (CUDA when this process sees a GPU), ``cpu``, ``cuda`` or
    ``cuda:N`` names; CUDA without a GPU is a ConfigError, never a silent fall back to the
    CPU. For the extractors' workers and the trainers alike."""
    import torch

    from vidfeat.errors import ConfigError

    check_device(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: no CUDA device visible on this machine")
    return torch.device(requested)


#: the devices vidfeat runs models on
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def check_device(requested: str) -> str:
    """``requested`` if it names a device vidfeat runs on (auto, cpu, cuda, cuda:N), else a
    ConfigError; without torch."""
    import re

    from vidfeat.errors import ConfigError

    if not re.fullmatch(DEVICE_PATTERN, requested):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")
    return requested


#: /proc/cpuinfo flags (x86 "flags", Arm "Features") of instructions that compute each reduced
#: precision natively; without one, PyTorch emulates it in fp32 arithmetic
NATIVE_PRECISION_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"),
                          "fp16": ("avx512_fp16", "amx_fp16", "fphp")}


def emulated_precision(precision: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU lacks instructions for ``precision`` ("bf16", "fp16"), so that
    models in it run slower than in fp32 (ResNet-152 in bf16: 6.7x slower, measured on an AVX2
    CPU). False where unknown (no ``cpuinfo``) and for fp32."""
    wanted = NATIVE_PRECISION_FLAGS.get(precision)
    if not wanted:
        return False
    try:
        with open(cpuinfo) as lines:
            flags = {flag for line in lines if line.startswith(("flags", "Features"))
                     for flag in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags) and not flags.intersection(wanted)
