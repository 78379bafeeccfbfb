"""Pins each worker process of a multi-GPU batch job to one GPU: ``dask worker --nworkers G
--preload vidfeat.jobs.gpu_pin`` (what the Slurm/PBS backends run for ``gpus_per_job: G``).

The batch system gives the whole job ``CUDA_VISIBLE_DEVICES=a,b,...``; worker process ``i``
(its name ends in ``-i``, as ``dask worker --name X --nworkers G`` names them) keeps only the
i-th device. This runs in the worker before any task, so before CUDA is initialised.
"""

from __future__ import annotations

import os


def visible_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The devices ``CUDA_VISIBLE_DEVICES`` lists; empty when it is unset."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES", "")
    return [device.strip() for device in value.split(",") if device.strip()]


def device_for(index: int, visible: list[str]) -> str:
    """The device worker ``index`` of a job keeps: the index-th visible one (the index itself
    where the batch system set no CUDA_VISIBLE_DEVICES)."""
    if not visible:
        return str(index)
    return visible[index % len(visible)]


def worker_index(name: object) -> int:
    text = str(name)
    suffix = text.rsplit("-", 1)[-1]
    return int(suffix) if "-" in text and suffix.isdigit() else 0


def dask_setup(worker: object) -> None:
    index = worker_index(getattr(worker, "name", ""))
    os.environ["CUDA_VISIBLE_DEVICES"] = device_for(index, visible_devices())
