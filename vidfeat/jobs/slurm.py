"""Slurm: worker jobs submitted with ``sbatch`` by dask-jobqueue's ``SLURMCluster``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAME = "Slurm"
SUBMIT_COMMAND = "sbatch"


def cluster_class() -> type:
    from dask_jobqueue import SLURMCluster

    return SLURMCluster


def job_class() -> type:
    from dask_jobqueue.slurm import SLURMJob

    return SLURMJob


def add_directives(options: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """GPUs as a generic resource; Slurm sets the job's CUDA_VISIBLE_DEVICES."""
    gpus = settings.get("gpus_per_job", 0)
    if gpus:
        options["job_extra_directives"].append(f"--gres=gpu:{gpus}")
    return options
