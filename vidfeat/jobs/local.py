"""A LocalCluster of worker processes on this machine."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vidfeat.jobs.worker_env import worker_environment


def _available_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def local_client(workers: int, threads_per_worker: int = 1) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    torch_threads = max(1, _available_cores() // (workers * threads_per_worker))
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.update(worker_environment(torch_threads))
    # no dashboard: nobody watches it in a batch run, and a second run's port clash warns
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                         processes=True, dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client
