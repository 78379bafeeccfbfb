"""Workers as batch jobs through dask-jobqueue (Slurm and PBS share everything but their
directives: ``vidfeat.jobs.slurm``, ``vidfeat.jobs.pbs``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from vidfeat.errors import ClusterError
from vidfeat.jobs.spec import ClusterSpec, quiet_distributed
from vidfeat.jobs.worker_env import WARMUP, worker_environment

#: the address a rendered job script shows; the real one is the driver's scheduler
PLACEHOLDER_SCHEDULER = "tcp://SCHEDULER:8786"


def _backend(kind: str) -> Any:
    if kind == "slurm":
        from vidfeat.jobs import slurm

        return slurm
    from vidfeat.jobs import pbs

    return pbs


def worker_processes(settings: Mapping[str, Any]) -> int:
    """One worker process per GPU of a GPU job; ``processes`` (default 1) otherwise."""
    return settings.get("gpus_per_job") or settings.get("processes", 1)


def job_options(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """dask-jobqueue keyword arguments for one job of ``settings`` (a validated section)."""
    processes = worker_processes(settings)
    cores = settings["cores"]
    torch_threads = max(1, cores // processes)
    exports = [f"export {name}={value}"
               for name, value in worker_environment(torch_threads).items()]
    worker_args: list[str] = []
    gpus = settings.get("gpus_per_job", 0)
    if gpus:
        worker_args += ["--resources", "GPU=1"]
        if gpus > 1:  # the job's GPUs, one per worker process
            worker_args += ["--preload", "vidfeat.jobs.gpu_pin"]
    worker_args += ["--preload", WARMUP]  # after gpu_pin, which must run before torch loads
    options: dict[str, Any] = {
        "cores": cores, "memory": settings["memory"], "processes": processes,
        "walltime": settings["walltime"], "job_name": settings.get("job_name", "vidfeat-worker"),
        "job_script_prologue": [*settings.get("job_script_prologue", []), *exports],
        "job_extra_directives": list(settings.get("job_extra_directives", [])),
        "worker_extra_args": worker_args,
    }
    for key in ("queue", "account", "python", "log_directory", "local_directory",
                "interface"):
        if key in settings:
            options[key] = settings[key]
    return _backend(kind).add_directives(options, settings)


def job_script(spec: ClusterSpec) -> str:
    """The batch script each worker job runs, rendered by dask-jobqueue."""
    job_class = _backend(spec.kind).job_class()
    options = job_options(spec.kind, spec.settings)
    return job_class(scheduler=PLACEHOLDER_SCHEDULER, name="vidfeat-worker",
                     **options).job_script()


@contextmanager
def jobqueue_client(spec: ClusterSpec) -> Iterator[Any]:
    """Submit the worker jobs, wait for the first worker (``start_timeout``), yield a client;
    the jobs are cancelled on exit."""
    from distributed import Client

    backend = _backend(spec.kind)
    if shutil.which(backend.SUBMIT_COMMAND) is None:
        raise ClusterError(f"{backend.SUBMIT_COMMAND} not found: run `vidfeat submit` where "
                           f"{backend.NAME} jobs can be submitted (a login node)")
    settings = spec.settings
    cluster_class = backend.cluster_class()
    quiet_distributed()  # importing dask_jobqueue set distributed's logger back to INFO
    # the scheduler's HTTP server on a free port: 8787 may be another run's
    with cluster_class(**job_options(spec.kind, settings),
                       scheduler_options={"dashboard_address": ":0"}) as cluster:
        adaptive = settings.get("adaptive")
        if adaptive:
            cluster.adapt(minimum_jobs=adaptive["minimum"], maximum_jobs=adaptive["maximum"])
        else:
            cluster.scale(jobs=settings.get("jobs", 1))
        with Client(cluster) as client:
            if not adaptive or adaptive["minimum"] > 0:
                _wait_for_a_worker(client, backend.NAME, settings.get("start_timeout"))
            yield client


def _wait_for_a_worker(client: Any, name: str, timeout: float | None) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(f"no {name} job's worker connected within {timeout:g} s "
                           f"(cluster.*.start_timeout): see the queue and the jobs' logs "
                           f"(log_directory)") from None
