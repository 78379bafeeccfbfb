"""One entry point, ``open_client``, for every kind of cluster a run can use."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from vidfeat.errors import ConfigError, VidfeatError

ClusterKind = Literal["local", "address"]


class ClusterError(VidfeatError, ConnectionError):
    """The cluster cannot be reached or started."""


@dataclass(frozen=True)
class ClusterSpec:
    kind: ClusterKind = "local"
    workers: int = 2
    threads_per_worker: int = 1
    address: str | None = None
    connect_timeout: float = 30.0


@contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the cluster ``spec`` describes; the cluster (when
    we started it) is closed on exit."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # distributed logs every worker start/stop at INFO: noise next to the progress bar
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if spec.kind == "address":
        from vidfeat.jobs.address import connect

        with connect(spec.address or "", spec.connect_timeout) as client:
            yield client
    elif spec.kind == "local":
        from vidfeat.jobs.local import local_client

        with local_client(spec.workers, spec.threads_per_worker) as client:
            yield client
    else:
        raise ConfigError(f"unknown cluster kind {spec.kind!r}")
