"""What a cluster is: ``ClusterSpec``, from a job file or the flags, shared by every backend and
``cluster.open_client`` (which picks the backend)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vidfeat.errors import ConfigError
from vidfeat.host import visible_gpus

ClusterKind = Literal["local", "address", "slurm", "pbs", "kubernetes"]
#: the Dask worker resource GPU workers declare, one per worker process
GPU_RESOURCE = {"GPU": 1.0}


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


def quiet_distributed() -> None:
    """distributed logs every worker start/stop at INFO: noise next to the progress bar (unless
    -v asked for debug messages). Again after importing a library that resets it."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.ERROR)
