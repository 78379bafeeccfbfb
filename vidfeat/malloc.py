"""glibc's malloc, tuned for a process that allocates a batch's tensors over and over.

glibc's malloc returns every large block to the system with ``munmap`` once any
``MALLOC_TRIM_THRESHOLD_`` is set, which distributed's nanny does for its workers (65 536):
every activation tensor of every batch is then a fresh ``mmap`` with its pages faulted in again.
That made the same task 1.6x slower in a LocalCluster worker than in the driver. ``mallopt``
puts both thresholds back above any tensor we allocate, at run time, so it also fixes workers
whose environment vidfeat did not choose. Elsewhere than glibc both calls do nothing.

The thresholds only govern the main arena. Tasks run in the worker's executor threads, and a
thread other than the main one gets its own arena, whose heaps are at most 64 MiB: a larger
block there (a ResNet-152 batch of 32 has 100 MB activations) is always a fresh ``mmap``,
whatever the thresholds. One arena for the process (``M_ARENA_MAX`` 1) keeps them in the main
heap: ResNet-152's batches ran 1.17x faster in a thread (as fast as in the main thread), and a
1-worker extraction's model time fell from 52.6 s to 42.8 s (system time 18.1 -> 2.9 s).
``MALLOC_ARENA_MAX=1`` in the environment does it from the start; ``mallopt`` covers threads
created after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
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
    """Raise glibc's trim and mmap thresholds and keep one arena; False where this is not
    glibc."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD_BYTES)
                and libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD_BYTES)
                and libc.mallopt(_M_ARENA_MAX, 1))


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system: loading a model frees its initial
    weights and the copies made for channels-last, which malloc would otherwise keep for the
    life of the worker (the raised trim threshold keeps it from doing so on its own)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
