"""Running an extraction on a cluster: prepare (validation, planning: nothing started on bad
input), open the cluster, execute; or, for a dry run, say what would be done."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError, StoreError, WeightsError
from vidfeat.jobs.cluster import ClusterOpener
from vidfeat.jobs.jobfile import Job
from vidfeat.jobs.spec import ClusterSpec
from vidfeat.options import RunOptions
from vidfeat.pipeline.run import RunReport, prepare_run, run_extraction

log = logging.getLogger(__name__)
#: videos listed one by one in a dry run's plan before "... and N more"
PLAN_LISTED = 20


def run_extract(sources: list[str], store: str | Path, options: RunOptions,
                cluster: ClusterSpec | None = None, **run: Any) -> RunReport:
    """Extract ``options.features`` from the videos ``sources`` name into ``store`` on
    ``cluster`` (a local cluster of 2 worker processes when None), as ``vidfeat extract`` does:
    under the store's lock, with a run report, Ctrl-C handling; ``run``: the keywords of
    ``vidfeat.pipeline.run.run_extraction`` (configuration, allowed_failures); wait_lock,
    task_timeout and retry_failed are ``options``'."""
    cluster = cluster or ClusterSpec()
    return run_extraction(sources, store, options, ClusterOpener(cluster), **run)


def run_job(job: Job) -> RunReport:
    """Run a job on its cluster (not kubernetes: see ``submit_to_kubernetes``)."""
    options = job.options()
    job.cluster.check_gpus(options.device)
    return run_extract(job.expanded_sources(), job.store, options, job.cluster,
                       configuration={"job": str(job.origin), "options": vars(options),
                                      "cluster": repr(recorded_cluster(job.cluster))})


def recorded_cluster(cluster: ClusterSpec) -> ClusterSpec:
    """The cluster as a run report records it: the values of a job file's ``env`` that look
    like credentials are replaced (the workers get them, the store never does)."""
    from dataclasses import replace

    from vidfeat.media.remote import redact_env

    env = cluster.settings.get("env")
    return replace(cluster, settings={**cluster.settings, "env": redact_env(env)}) if env \
        else cluster


def submit_to_kubernetes(job: Job) -> list[str]:
    """Create the job's ConfigMap and DaskJob; the resources' kind/name."""
    from vidfeat.jobs.kubernetes import create, render

    return create(render(job.cluster, job.text))


def dry_run(job: Job) -> str:
    """The resolved plan (videos to do, already done) and, for a batch system, the job script
    each worker job runs, for Kubernetes the manifests. Starts nothing; prepares the store
    directory (created when missing) to compare the videos with it. Videos, weights or a store
    this machine lacks (a login node) leave the plan out, with a warning, not the script."""
    cluster = job.cluster.resolved()
    lines = [f"job: {job.origin}", f"cluster: {_describe_cluster(cluster)}",
             f"store: {job.store}"]
    options = job.options()
    for name in options.features:
        settings = options.extractor_options.get(name, {})
        described = ", ".join(f"{key}={value}" for key, value in settings.items())
        lines.append(f"feature: {name}" + (f" ({described})" if described else ""))
    if options.model_resources:
        lines.append("model tasks run only on workers declaring "
                     + ", ".join(f"{k}={v:g}" for k, v in options.model_resources.items()))
    if cluster.kind == "kubernetes":
        lines.append("videos: listed by the job pod inside the cluster (the paths are the "
                     "containers')")
    else:
        try:
            lines += _plan(job, options)
        except (ConfigError, WeightsError, StoreError, OSError) as error:
            # a login node often has neither the videos nor the weights yet: the job script
            # is still worth seeing, and the job checks them where it runs
            log.warning("videos not planned on this machine: %s", error)
            lines.append(f"videos: not planned on this machine ({error})")
    if cluster.kind in ("slurm", "pbs"):
        from vidfeat.jobs.jobqueue import PLACEHOLDER_SCHEDULER, job_script

        lines += ["", f"# job script of each worker job ({PLACEHOLDER_SCHEDULER} stands for "
                      "the scheduler vidfeat submit starts)", job_script(cluster).rstrip()]
    elif cluster.kind == "kubernetes":
        from vidfeat.jobs.kubernetes import dump, render

        lines += ["", "# manifests (kubectl apply -f - creates the same)",
                  dump(render(cluster, job.text)).rstrip()]
    return "\n".join(lines)


def _plan(job: Job, options: RunOptions) -> list[str]:
    run = prepare_run(job.expanded_sources(), job.store, options)
    report = run.report
    failing = sorted(report.failed_videos)
    lines = [f"videos: {report.videos} found, {len(run.todo)} to extract, "
             f"{report.up_to_date} already up to date"
             + (f", {len(failing)} failing before start" if failing else "")]
    for video, names in run.todo[:PLAN_LISTED]:
        lines.append(f"  to do: {video.video_id} {','.join(names)} ({video.path})")
    if len(run.todo) > PLAN_LISTED:
        lines.append(f"  ... and {len(run.todo) - PLAN_LISTED} more")
    lines += [f"  cannot start: {o.video_id} {o.feature}: {o.reason}" for o in report.failed]
    lines.append("tasks: packs of short videos (each probed by the task that decodes it) and "
                 "segments of long ones")
    return lines


def _describe_cluster(spec: ClusterSpec) -> str:
    if spec.kind == "local":
        return (f"local ({spec.workers} CPU worker processes, {spec.gpus} GPU worker processes, "
                f"{spec.threads_per_worker} threads each)")
    if spec.kind == "address":
        return f"the Dask scheduler at {spec.address}"
    return f"{spec.kind} {json.dumps(dict(spec.settings), sort_keys=True)}"
