"""One entry point, ``open_client``, for every kind of cluster a run can use."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from typing import Any

from vidfeat.errors import ClusterError, ConfigError
from vidfeat.jobs.spec import ClusterSpec, quiet_distributed


class ClusterOpener:
    """How a run opens the cluster ``spec`` describes: calling it gives ``open_client(spec)``;
    ``start_early()``, which the run calls once it knows it needs workers, before anything
    else, starts what can start before the cluster (a local cluster's forkserver). The spec
    is resolved once, when first needed (a no-op rerun never counts the GPUs)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec

    @cached_property
    def _resolved(self) -> ClusterSpec:
        return self.spec.resolved()

    def __call__(self) -> AbstractContextManager[Any]:
        return open_client(self._resolved)  # resolving a resolved spec changes nothing

    def start_early(self) -> None:
        spec = self._resolved
        if spec.kind == "local" and not spec.gpus and spec.workers:
            from vidfeat.jobs.local import start_forkserver

            start_forkserver(spec.workers, spec.threads_per_worker)


@contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the cluster ``spec`` describes, with its workers
    checked for ``spec.model_resources``; the cluster (when we started it) is closed on exit."""
    quiet_distributed()
    spec = spec.resolved()
    with _backend_client(spec) as client:
        if spec.kind == "address":
            require_workers(client, spec.model_resources, spec.connect_timeout, spec.address)
        yield client


@contextmanager
def _backend_client(spec: ClusterSpec) -> Iterator[Any]:
    if spec.kind == "address":
        from vidfeat.jobs.address import connect

        with connect(spec.address or "", spec.connect_timeout) as client:
            yield client
    elif spec.kind == "local":
        from vidfeat.jobs.local import local_client

        with local_client(spec.workers or 0, spec.threads_per_worker,
                          int(spec.gpus or 0)) as client:
            yield client
    elif spec.kind in ("slurm", "pbs"):
        from vidfeat.jobs.jobqueue import jobqueue_client

        with jobqueue_client(spec) as client:
            yield client
    elif spec.kind == "kubernetes":
        raise ConfigError("a kubernetes job runs inside the cluster: `vidfeat submit JOB` "
                          "creates it (see README, Running on a cluster)")
    else:
        raise ConfigError(f"unknown cluster kind {spec.kind!r}")


def require_workers(client: Any, resources: Mapping[str, float], timeout: float,
                    where: str | None) -> None:
    """Wait up to ``timeout`` s for a worker, and for one declaring ``resources`` when some are
    needed; ClusterError naming what is missing otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
        if workers and (not resources or any(_has(w.get("resources", {}), resources)
                                             for w in workers)):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    scheduler = f"the scheduler at {where}" if where else "the scheduler"
    if not workers:
        raise ClusterError(f"no worker connected to {scheduler} within {timeout:g} s")
    wanted = ",".join(f"{name}={amount:g}" for name, amount in resources.items())
    raise ClusterError(f"no worker of {scheduler} declares the resource {wanted} that model "
                       f"tasks need ({len(workers)} workers, none started with "
                       f"--resources {wanted})")


def _has(declared: Mapping[str, float], needed: Mapping[str, float]) -> bool:
    return all(declared.get(name, 0) >= amount for name, amount in needed.items())
