"""glibc's malloc, tuned for a process that allocates a batch's tensors over and over.

glibc's malloc returns every large block to the system with ``munmap`` once any
``MALLOC_TRIM_THRESHOLD_`` is set, which distributed's nanny does for its workers (65 536):
every activation tensor of every batch is then a fresh ``mmap`` with its pages faulted in again.
That made the same task 1.6x slower in a LocalCluster worker than in the driver. ``mallopt``
puts both thresholds back above any tensor we allocate, at run time, so it also fixes workers
whose environment vidfeat did not choose. Elsewhere than glibc both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this stay in malloc's heap and are reused: above any batch's activations
MALLOC_THRESHOLD_BYTES = 1 << 30


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError):  # not glibc
        return None


def tune_malloc() -> bool:
    """Raise glibc's trim and mmap thresholds; False where this is not glibc."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD_BYTES)
                and libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system: loading a model frees its initial
    weights and the copies made for channels-last, which malloc would otherwise keep for the
    life of the worker (the raised trim threshold keeps it from doing so on its own)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
