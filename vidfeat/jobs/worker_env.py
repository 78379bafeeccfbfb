"""The environment vidfeat gives the worker processes it starts (every backend applies it;
README "Worker environment" gives the same for workers started by hand).

distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers, which turns off
glibc's dynamic mmap threshold and makes every large tensor an ``mmap``/``munmap`` pair (1.6x
slower tasks, 10x the page faults). Both thresholds go above any batch's tensors instead; the
worker also calls ``mallopt`` itself (``vidfeat.malloc.tune_malloc``), so a worker
started without this environment is fixed too once vidfeat's plugin runs.
"""

from __future__ import annotations

MALLOC_THRESHOLD = str(1 << 30)
#: a preload for every worker vidfeat starts: it imports the models while the driver prepares
#: (vidfeat.pipeline.warmup)
WARMUP = "vidfeat.pipeline.warmup"


def worker_environment(torch_threads: int | None = None) -> dict[str, str]:
    env = {
        "MALLOC_TRIM_THRESHOLD_": MALLOC_THRESHOLD,
        "MALLOC_MMAP_THRESHOLD_": MALLOC_THRESHOLD,
        # tasks run in threads; another thread's arena mmaps every block over 64 MiB
        "MALLOC_ARENA_MAX": "1",
    }
    if torch_threads:
        threads = str(torch_threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   VIDFEAT_TORCH_THREADS=threads)
    return env
