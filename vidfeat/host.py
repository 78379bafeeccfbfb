"""Facts about the machine a process runs on, for the driver and the workers alike."""

from __future__ import annotations

import os


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
