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
