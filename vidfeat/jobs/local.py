"""A LocalCluster of worker processes on this machine: CPU workers, and one worker process per
GPU (``CUDA_VISIBLE_DEVICES`` set to its GPU, Dask resource ``GPU=1``).

The CPU workers are forked from a multiprocessing forkserver that has imported distributed,
torch and vidfeat's extractor contract once for them all (``FORKSERVER_PRELOAD``), and that
starts as soon as a run knows it needs workers (``start_forkserver``), while the driver still
imports distributed and starts the scheduler. Spawned workers imported them each, after the
driver had: a one-video run on a 2-core CPU took 0.45 s more, and 1.8 CPU-seconds. GPU
workers are still spawned (a fresh process for each device), and so are the CPU workers of a
cluster started after this process's environment changed (``start_forkserver``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from vidfeat.host import available_cores
from vidfeat.jobs.worker_env import WARMUP, worker_environment

#: what the forkserver of the CPU workers imports before it forks any
FORKSERVER_PRELOAD = ["distributed", "torch", "vidfeat.extractors.base"]
#: this process's environment when it started its forkserver
_forkserver_environ: dict[str, str] | None = None


@contextmanager
def _environ_restored(keys: list[str]) -> Iterator[None]:
    """Put ``keys`` of ``os.environ`` back as they were. A Nanny writes its workers'
    pre-spawn environment into the process that runs it (ours, for a LocalCluster), and the
    next Nanny prefers ``os.environ`` over the configuration: without this, a second cluster in
    one process would get the first one's thread counts."""
    import os

    before = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def local_client(workers: int, threads_per_worker: int = 1, gpus: int = 0) -> Iterator[Any]:
    """``workers`` CPU worker processes plus ``gpus`` GPU worker processes."""
    import dask
    from distributed import Client, LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.update(worker_environment(_torch_threads(workers, threads_per_worker, gpus)))
    if gpus:
        with _environ_restored(list(environ)), \
                _gpu_cluster(workers, threads_per_worker, gpus, environ) as cluster, \
                Client(cluster) as client:
            yield client
            _quick_shutdown(client)
        return
    method = "forkserver" if start_forkserver(workers, threads_per_worker) else "spawn"
    # the scheduler's HTTP server on a free port: 8787 may be another run's
    with _environ_restored(list(environ)), \
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                             "distributed.worker.multiprocessing-method": method}), \
            LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                         processes=True, dashboard_address=":0",
                         silence_logs=logging.ERROR, preload=[WARMUP]) as cluster, \
            Client(cluster) as client:
        yield client
        _quick_shutdown(client)


def start_forkserver(workers: int, threads_per_worker: int = 1) -> bool:
    """Start this process's forkserver, if it has not been, importing ``FORKSERVER_PRELOAD``
    (in the background: this returns at once), with the environment of the CPU workers of a
    ``local_client(workers, threads_per_worker)``: what a process reads as it starts (the
    malloc tunables) or as torch loads (OpenMP's thread count) its children have from it; what
    a nanny sets later still reaches them (the torch threads a worker sets itself:
    ``WorkerState``). It lives as long as this process. Whether workers forked from it now
    would see this process's environment as spawned ones would: not once a variable changed
    since it started (a notebook or a test session setting one between runs: those clusters
    spawn their workers)."""
    import multiprocessing
    import os
    from multiprocessing import forkserver

    global _forkserver_environ
    if _forkserver_environ is None:
        _forkserver_environ = dict(os.environ)
        environ = worker_environment(_torch_threads(workers, threads_per_worker, 0))
        multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
        with _environ_restored(list(environ)):
            os.environ.update(environ)
            forkserver.ensure_running()
    return dict(os.environ) == _forkserver_environ


def _torch_threads(workers: int, threads_per_worker: int, gpus: int) -> int:
    return max(1, available_cores() // (max(1, workers + gpus) * threads_per_worker))


def _quick_shutdown(client: Any) -> None:
    """End this run's own worker processes at once: a graceful close tears down torch and the
    models in each (about 2 s measured, for nothing). Safe, because every shard is written
    atomically and journalled (a task still writing leaves a temporary file that the next run
    removes) and the results are in. Their logs are muted first: closing a cluster races each
    worker's heartbeat against its own comms, and the loser logs a "Failed to communicate with
    scheduler during heartbeat" traceback on the terminal of a run that went fine. Only for
    clusters vidfeat starts on this machine: a user's workers keep their logs and lives."""
    import os
    import signal

    def mute() -> int:
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        return os.getpid()

    with suppress(Exception):  # a worker already gone has nothing left to say
        for pid in client.run(mute).values():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def _gpu_cluster(workers: int, threads_per_worker: int, gpus: int, environ: dict[str, str]
                 ) -> Iterator[Any]:
    from distributed import Nanny, Scheduler, SpecCluster

    from vidfeat.jobs.gpu_pin import device_for, visible_devices

    def worker(device: str, resources: dict[str, float] | None) -> dict[str, Any]:
        return {"cls": Nanny, "options": {
            "nthreads": threads_per_worker, "host": "127.0.0.1", "dashboard_address": None,
            "resources": resources, "env": {**environ, "CUDA_VISIBLE_DEVICES": device},
            "preload": [WARMUP],
            # SpecCluster's silence_logs reaches only its scheduler; LocalCluster passes it on
            "silence_logs": logging.ERROR}}

    # CPU workers see no GPU, so that nothing they run can take memory on one
    specs = {f"cpu-{i}": worker("", None) for i in range(workers)}
    visible = visible_devices()
    specs |= {f"gpu-{i}": worker(device_for(i, visible), {"GPU": 1}) for i in range(gpus)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    with SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR) as cluster:
        yield cluster
