"""Kubernetes through the dask-kubernetes operator: a ``DaskJob`` whose cluster (a scheduler
and the worker pods) runs the job file, handed to the job's pod in a ``ConfigMap``.

The driver runs inside the cluster (the job pod): the store's index is written by the driver,
so it must mount the store like the workers do. ``vidfeat submit`` renders and creates the
resources; ``--dry-run`` prints them. The job pod runs ``vidfeat submit JOB --scheduler
$(DASK_SCHEDULER_ADDRESS)`` on the same job file: the operator sets that variable.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from vidfeat.errors import ClusterError
from vidfeat.jobs.spec import ClusterSpec
from vidfeat.jobs.worker_env import WARMUP, worker_environment

JOB_DIRECTORY = "/etc/vidfeat"
JOB_FILE_NAME = "job.yaml"
_JOB_VOLUME = "vidfeat-job"


def _volumes(settings: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    volumes, mounts = [], []
    for volume in settings.get("volumes", []):
        read_only = volume.get("read_only", False)
        if "claim" in volume:
            source = {"persistentVolumeClaim": {"claimName": volume["claim"],
                                                "readOnly": read_only}}
        else:
            source = {"hostPath": {"path": volume["host_path"], "type": "Directory"}}
        volumes.append({"name": volume["name"], **source})
        mounts.append({"name": volume["name"], "mountPath": volume["mount_path"],
                       "readOnly": read_only})
    return volumes, mounts


def _container_resources(settings: Mapping[str, Any]) -> dict[str, Any]:
    amounts: dict[str, Any] = {}
    if "cpu" in settings:
        amounts["cpu"] = str(settings["cpu"])
    if "memory" in settings:
        amounts["memory"] = settings["memory"]
    limits = dict(amounts)
    if settings.get("gpus_per_worker"):
        limits["nvidia.com/gpu"] = str(settings["gpus_per_worker"])  # a quantity: a string
    return {"requests": amounts, "limits": limits} if limits else {}


def _torch_threads(settings: Mapping[str, Any]) -> int:
    cpu = str(settings.get("cpu", ""))
    cores = int(cpu[:-1]) // 1000 if cpu.endswith("m") else int(float(cpu or 1))
    return max(1, cores // settings.get("threads_per_worker", 1))


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def render(spec: ClusterSpec, job_text: str) -> list[dict[str, Any]]:
    """The ``ConfigMap`` holding the job file and the ``DaskJob`` running it."""
    from dask_kubernetes.operator.kubecluster.kubecluster import (
        make_scheduler_spec,
        make_worker_spec,
    )

    settings = spec.settings
    name = settings.get("name", "vidfeat")
    namespace = settings.get("namespace", "default")
    image = settings["image"]
    pull_policy = settings.get("image_pull_policy", "IfNotPresent")
    volumes, mounts = _volumes(settings)
    user_env = dict(settings.get("env", {}))

    worker_command = ["dask", "worker", "--nworkers", "1",
                      "--nthreads", str(settings.get("threads_per_worker", 1))]
    if settings.get("gpus_per_worker"):
        # one GPU per worker pod: the device plugin sets its CUDA_VISIBLE_DEVICES
        worker_command += ["--resources", "GPU=1"]
    worker_command += ["--preload", WARMUP]
    worker = make_worker_spec(image=image, n_workers=settings.get("workers", 2),
                              env=_env({**worker_environment(_torch_threads(settings)),
                                        **user_env}),
                              resources=_container_resources(settings),
                              worker_command=worker_command)
    worker_container = worker["spec"]["containers"][0]
    # copies: shared objects would come out of a YAML dump as anchors and aliases
    worker_container.update(imagePullPolicy=pull_policy, volumeMounts=copy.deepcopy(mounts))
    worker["spec"]["volumes"] = copy.deepcopy(volumes)
    _credentials(worker["spec"], worker_container, settings)
    scheduler = make_scheduler_spec(cluster_name=name, env=_env(user_env), image=image)
    scheduler_container = scheduler["spec"]["containers"][0]
    scheduler_container["imagePullPolicy"] = pull_policy
    del scheduler_container["resources"]  # the scheduler is small: the namespace's defaults

    job_pod = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "job", "image": image, "imagePullPolicy": pull_policy,
            "args": ["vidfeat", "submit", f"{JOB_DIRECTORY}/{JOB_FILE_NAME}",
                     "--scheduler", "$(DASK_SCHEDULER_ADDRESS)"],
            "env": _env(user_env),
            "volumeMounts": [*mounts, {"name": _JOB_VOLUME, "mountPath": JOB_DIRECTORY,
                                       "readOnly": True}],
        }],
        "volumes": [*volumes, {"name": _JOB_VOLUME, "configMap": {"name": f"{name}-job"}}],
    }
    _credentials(job_pod, job_pod["containers"][0], settings)
    metadata = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name":
                                                                 "vidfeat"}}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {**metadata, "name": f"{name}-job"},
                  "data": {JOB_FILE_NAME: job_text}}
    dask_job = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob", "metadata": metadata,
                "spec": {"job": {"spec": job_pod},
                         "cluster": {"spec": {"worker": worker, "scheduler": scheduler}}}}
    return [config_map, dask_job]


def _credentials(pod: dict[str, Any], container: dict[str, Any],
                 settings: Mapping[str, Any]) -> None:
    """Where the pods that read videos (the job's and the workers') get a bucket's credentials
    without the job file holding them: a service account (an IAM role bound to it: IRSA,
    Workload Identity) and the keys of Secrets as environment variables."""
    if settings.get("service_account"):
        pod["serviceAccountName"] = settings["service_account"]
    if settings.get("secret_env"):
        container["envFrom"] = [{"secretRef": {"name": secret}}
                                for secret in settings["secret_env"]]


def dump(manifests: list[dict[str, Any]]) -> str:
    """YAML documents for ``kubectl apply -f -``; the job file as a literal block."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False)


def create(manifests: list[dict[str, Any]]) -> list[str]:
    """Create the resources in the cluster kubectl's configuration points at; their names."""
    from kr8s.objects import object_from_spec

    created = []
    for manifest in manifests:
        try:
            resource = object_from_spec(manifest, allow_unknown_type=True)
            resource.create()
        except Exception as error:  # kr8s raises its own, httpx's and kubeconfig errors
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ClusterError(f"cannot create {manifest['kind']} "
                               f"{manifest['metadata']['name']} in Kubernetes: "
                               f"{type(error).__name__}: {reason}") from None
        created.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
    return created
