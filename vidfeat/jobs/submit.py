"""Running an extraction on a cluster: prepare (validation, planning: nothing started on bad
input), open the cluster, execute."""

from __future__ import annotations

from pathlib import Path

from vidfeat.jobs.cluster import ClusterSpec, open_client
from vidfeat.pipeline.run import RunOptions, RunReport, execute, prepare_run


def run_extract(sources: list[str], store: str | Path, options: RunOptions,
                cluster: ClusterSpec | None = None) -> RunReport:
    """Extract ``options.features`` from the videos ``sources`` name into ``store`` on
    ``cluster`` (a local cluster of 2 worker processes when None)."""
    run = prepare_run(sources, store, options)
    with open_client(cluster or ClusterSpec()) as client:
        return execute(run, client)
