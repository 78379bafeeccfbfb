"""PBS (PBS Pro, OpenPBS): worker jobs submitted with ``qsub`` by dask-jobqueue's
``PBSCluster``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAME = "PBS"
SUBMIT_COMMAND = "qsub"


def cluster_class() -> type:
    from dask_jobqueue import PBSCluster

    return PBSCluster


def job_class() -> type:
    from dask_jobqueue.pbs import PBSJob

    return PBSJob


def add_directives(options: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """One chunk with the job's cores, memory and GPUs (``-l select=1:ncpus=..:ngpus=..``)."""
    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    chunk = f"select=1:ncpus={settings['cores']}"
    chunk += f":mem={pbs_format_bytes_ceil(parse_bytes(settings['memory']))}"
    gpus = settings.get("gpus_per_job", 0)
    if gpus:
        chunk += f":ngpus={gpus}"
    options["resource_spec"] = chunk
    return options
