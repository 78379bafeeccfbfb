"""One entry point, ``open_client``, for every kind of cluster a run can use."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.host import visible_gpus

ClusterKind = Literal["local", "address", "slurm", "pbs", "kubernetes"]
#: the Dask worker resource GPU workers declare, one per worker process
GPU_RESOURCE = {"GPU": 1.0}


class ClusterError(VidfeatError, ConnectionError):
    """The cluster cannot be reached or started, or lacks the workers a run needs."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where a run's workers come from. ``settings``: the backend's section of the job file
    (slurm, pbs, kubernetes), validated by ``vidfeat.jobs.schema``. ``model_resources``: the
    Dask resources model tasks need (``{"GPU": 1}`` where the backend starts GPU workers)."""

    kind: ClusterKind = "local"
    workers: int | None = 2
    threads_per_worker: int = 1
    address: str | None = None
    connect_timeout: float = 30.0
    #: local: GPU worker processes (one per GPU); "auto": as many as torch sees
    gpus: int | Literal["auto"] = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    model_resources: Mapping[str, float] = field(default_factory=dict)

    def resolved(self) -> ClusterSpec:
        """GPU counts decided (``gpus: auto`` counts this machine's GPUs) and the model tasks'
        resources set where the backend starts GPU workers and the job file named none."""
        spec = self
        if spec.kind == "local" and spec.gpus == "auto":
            spec = replace(spec, gpus=visible_gpus())
        if spec.kind == "local" and spec.workers is None:
            spec = replace(spec, workers=0 if spec.gpus else 2)
        if not spec.model_resources and spec.gpu_workers:
            spec = replace(spec, model_resources=dict(GPU_RESOURCE))
        return spec

    def check_gpus(self, device: str) -> None:
        """Raise ConfigError when a local cluster asks for more GPU workers than torch sees
        (they would share GPUs, or run their models on the CPU unnoticed), unless the models
        are meant for the CPU (``device`` "cpu")."""
        if self.kind != "local" or self.gpus in (0, "auto") or device == "cpu":
            return
        visible = visible_gpus()
        if int(self.gpus) > visible:
            raise ConfigError(f"--gpus {self.gpus}: torch sees {visible} GPU(s) on this "
                              f"machine; use --gpus auto (or --device cpu for GPU worker "
                              f"processes whose models run on the CPU)")

    @property
    def gpu_workers(self) -> bool:
        if self.kind == "local":
            return bool(self.gpus) and self.gpus != "auto"
        if self.kind in ("slurm", "pbs"):
            return bool(self.settings.get("gpus_per_job"))
        if self.kind == "kubernetes":
            return bool(self.settings.get("gpus_per_worker"))
        return False


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


def quiet_distributed() -> None:
    """distributed logs every worker start/stop at INFO: noise next to the progress bar (unless
    -v asked for debug messages). Again after importing a library that resets it."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.ERROR)


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
