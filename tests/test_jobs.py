"""Job files: validation with one-line errors naming the key, the shipped examples, the
Slurm/PBS job scripts and Kubernetes manifests they render, dry runs, flags over a job file,
a local run, and the errors a cluster user meets."""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from job_files import write_job

import vidfeat
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.jobs.jobfile import load_job
from vidfeat.jobs.jobqueue import job_script
from vidfeat.jobs.kubernetes import render

EXAMPLES = Path(vidfeat.__file__).parent / "jobs" / "examples"
MINIMAL = {"sources": ["corpus"], "store": "store", "features": ["resnet152"]}


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def _slurm(**settings: object) -> dict:
    return {**MINIMAL, "cluster": {"slurm": {"walltime": "01:00:00", "cores": 4,
                                             "memory": "16GB", **settings}}}


@pytest.mark.parametrize(("document", "expected"), [
    ({**MINIMAL, "stor": "x"}, "job.yaml: stor: unknown key (expected one of: batch_size,"),
    ({"sources": "corpus", "features": ["c3d"]}, "job.yaml: store: missing required key"),
    (_slurm(walltime=5), 'job.yaml: cluster.slurm.walltime: expected a string like '
                         '"02:00:00", got 5'),
    (_slurm(memory="lots"), 'cluster.slurm.memory: expected a memory size like "16GB", '
                            "got 'lots'"),
    ({**MINIMAL, "cluster": {"slurm": {"walltime": "01:00:00", "cores": 4}}},
     "job.yaml: cluster.slurm.memory: missing required key"),
    (_slurm(cores=0), "cluster.slurm.cores: expected an integer >= 1, got 0"),
    (_slurm(gpus=2), "cluster.slurm.gpus: unknown key (expected one of: account, adaptive,"),
    (_slurm(jobs=2, adaptive={"minimum": 0, "maximum": 4}),
     "cluster.slurm.adaptive: expected either jobs or adaptive, got both"),
    (_slurm(adaptive={"minimum": 0}), "cluster.slurm.adaptive.maximum: missing required key"),
    ({**MINIMAL, "cluster": {"address": "head:8786"}},
     'cluster.address: expected a scheduler address like "tcp://host:8786", got \'head:8786\''),
    ({**MINIMAL, "cluster": {"local": {}, "address": "tcp://h:1"}},
     "job.yaml: cluster: expected one of local, address, slurm, pbs, kubernetes, got local "
     "and address"),
    ({**MINIMAL, "cluster": {"local": {"gpus": "many"}}},
     'cluster.local.gpus: expected an integer >= 0 or "auto", got \'many\''),
    ({**MINIMAL, "cluster": {"kubernetes": {"workers": 2}}},
     "cluster.kubernetes.image: missing required key"),
    ({**MINIMAL, "cluster": {"kubernetes": {"image": "i", "volumes": [
        {"name": "store", "mount_path": "/data"}]}}},
     "cluster.kubernetes.volumes[0]: expected exactly one of claim or host_path"),
    ({**MINIMAL, "cluster": {"kubernetes": {"image": "i"}}},
     "job.yaml: sources[0]: expected an absolute path inside the containers"),
    ({**MINIMAL, "batch_size": "16"}, "job.yaml: batch_size: expected an integer >= 1, "
                                      "got '16'"),
    ({**MINIMAL, "features": []}, "job.yaml: features: must not be empty"),
    ({**MINIMAL, "features": ["resnet"]}, "job.yaml: features.resnet: unknown extractor"),
    ({**MINIMAL, "features": {"c3d": {"layr": "fc7"}}},
     "job.yaml: features.c3d: unknown option 'layr' for extractor c3d; valid options: layer, "
     "stride, mean_file, pca, precision, compile"),
    ({**MINIMAL, "precision": "fp8"}, "job.yaml: precision: expected fp32, bf16 or fp16, "
                                      "got 'fp8'"),
    ({**MINIMAL, "task_timeout": 0}, "job.yaml: task_timeout: expected a number of seconds "
                                     "> 0, got 0"),
    ({**MINIMAL, "wait_lock": -1}, "job.yaml: wait_lock: expected a number of seconds >= 0 "
                                   "(.inf: as long as it takes), got -1"),
    ({**MINIMAL, "retry_failed": "sometimes"}, "job.yaml: retry_failed: expected true or "
                                               "false, got 'sometimes'"),
    ("sources: [a\nstore: b\n", "job.yaml: not valid YAML (line 2"),
    ("- a\n- b\n", "job.yaml: expected a mapping of keys"),
])
def test_bad_job_file_is_exit_2_with_one_line_naming_the_key(
        document: object, expected: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, document)
    assert main(["submit", "--dry-run", str(path)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert error.startswith("vidfeat: error: ") and str(path) in error
    assert expected in error
    assert not (tmp_path / "store").exists()  # rejected before anything was touched


def test_missing_job_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["submit", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read the job file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["local", "address", "slurm", "pbs", "kubernetes", "nightly"])
def test_every_shipped_example_is_a_valid_job(name: str) -> None:
    job = load_job(EXAMPLES / f"{name}.yaml")
    assert job.run["features"] and Path(job.store).is_absolute()
    kind = {"nightly": "local"}.get(name, name)
    assert job.cluster.kind == kind
    if name == "nightly":  # the safeguard README's nightly cron line gives vidfeat extract
        assert job.options().task_timeout == 1800
    if kind in ("slurm", "pbs"):
        assert "dask_worker" in job_script(job.cluster)
    if kind == "kubernetes":
        _check_against_operator_crd(render(job.cluster, job.text)[1])


def test_slurm_job_script_has_the_requested_resources_gpus_and_worker_environment() -> None:
    job = load_job(EXAMPLES / "slurm.yaml")
    script = job_script(job.cluster)
    for directive in ("#SBATCH -p gpu", "#SBATCH -A project123", "#SBATCH -t 04:00:00",
                      "#SBATCH --cpus-per-task=16", "#SBATCH --mem=60G",
                      "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100"):
        assert directive in script.splitlines()
    for line in ("module load ffmpeg", "export MALLOC_TRIM_THRESHOLD_=1073741824",
                 "export MALLOC_MMAP_THRESHOLD_=1073741824", "export VIDFEAT_TORCH_THREADS=8"):
        assert line in script.splitlines()
    worker = script.splitlines()[-1]
    assert "--nworkers 2" in worker and "--nthreads 8" in worker
    assert "--resources GPU=1" in worker and "--preload vidfeat.jobs.gpu_pin" in worker
    assert job.options().model_resources == {"GPU": 1.0}


def test_pbs_job_script_has_queue_walltime_cores_memory_and_gpus() -> None:
    job = load_job(EXAMPLES / "pbs.yaml")
    lines = job_script(job.cluster).splitlines()
    for directive in ("#PBS -q gpuq", "#PBS -A project123", "#PBS -l walltime=02:00:00",
                      # 32GB as dask reads it (10^9) is 30 of PBS's binary GB, rounded up
                      "#PBS -l select=1:ncpus=8:mem=30GB:ngpus=1"):
        assert directive in lines
    assert "module load cuda ffmpeg" in lines and "export OMP_NUM_THREADS=8" in lines
    worker = lines[-1]
    assert "--nthreads 8" in worker and "--resources GPU=1" in worker
    assert "gpu_pin" not in worker  # one GPU per job: the batch system pins it
    assert "--preload vidfeat.pipeline.warmup" in worker


def test_cpu_job_declares_no_gpu_resource(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, _slurm(processes=2)))
    worker = job_script(job.cluster).splitlines()[-1]
    assert "--nworkers 2" in worker and "--nthreads 2" in worker and "GPU" not in worker
    assert job.options().model_resources == {}


def _crd_schema(kind: str) -> dict:
    import dask_kubernetes

    # the Helm chart's CRDs: the operator's schema with Kubernetes' PodSpec resolved in
    crd = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / \
        "dask-kubernetes-operator" / "crds" / f"{kind.lower()}.yaml"
    document = yaml.safe_load(crd.read_text())
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _check_against_operator_crd(manifest: dict) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator(_crd_schema(manifest["kind"])).validate(manifest)


def test_kubernetes_manifests_validate_against_the_operator_crd() -> None:
    from jsonschema import ValidationError

    job = load_job(EXAMPLES / "kubernetes.yaml")
    config_map, dask_job = render(job.cluster, job.text)
    _check_against_operator_crd(dask_job)
    assert yaml.safe_load(config_map["data"]["job.yaml"]) == yaml.safe_load(job.text)
    runner = dask_job["spec"]["job"]["spec"]["containers"][0]
    assert runner["args"] == ["vidfeat", "submit", "/etc/vidfeat/job.yaml", "--scheduler",
                              "$(DASK_SCHEDULER_ADDRESS)"]
    assert {m["mountPath"] for m in runner["volumeMounts"]} == {
        "/data/corpus", "/data/store", "/data/weights", "/etc/vidfeat"}
    worker_group = dask_job["spec"]["cluster"]["spec"]["worker"]
    worker = worker_group["spec"]["containers"][0]
    assert worker_group["replicas"] == 4
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["args"][worker["args"].index("--resources") + 1] == "GPU=1"
    assert {"name": "VIDFEAT_TORCH_THREADS", "value": "4"} in worker["env"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "video-features",
                                                       "readOnly": False}} in \
        worker_group["spec"]["volumes"]
    worker_group["replicas"] = "four"  # the schema check can fail
    with pytest.raises(ValidationError):
        _check_against_operator_crd(dask_job)


def test_job_pod_runs_the_same_file_on_the_operator_scheduler_with_gpu_routing() -> None:
    job = load_job(EXAMPLES / "kubernetes.yaml").with_flags(scheduler="tcp://sched:8786")
    assert job.cluster.kind == "address" and job.cluster.address == "tcp://sched:8786"
    assert job.options().model_resources == {"GPU": 1.0}


def test_flags_override_the_job_file(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, {**MINIMAL, "features": {"resnet152": {"fps": 1},
                                                             "c3d": {"layer": "fc7"}},
                                     "batch_size": 8, "cluster": {"local": {"workers": 3}}}))
    given = job.with_flags(store="/elsewhere", batch_size=None, workers=1,
                           extractor_options={"resnet152": {"fps": 2}}, dtype="float32")
    options = given.options()
    assert given.store == "/elsewhere" and given.sources == [str(tmp_path / "corpus")]
    assert options.batch_size == 8 and options.dtype == "float32"
    assert options.extractor_options == {"resnet152": {"fps": 2}, "c3d": {"layer": "fc7"}}
    assert given.cluster.kind == "local" and given.cluster.workers == 1
    assert job.options().extractor_options["resnet152"] == {"fps": 1}  # the file's unchanged


def test_run_options_of_the_extract_flags_are_job_file_keys_and_flags_override_them(
        tmp_path: Path) -> None:
    from vidfeat.cli import build_parser, extract_job

    path = _write(tmp_path, {**MINIMAL, "task_timeout": 1800, "wait_lock": 30,
                             "retry_failed": True, "extensions": [".dv", ".mxf"]})
    options = load_job(path).options()
    assert (options.task_timeout, options.wait_lock, options.retry_failed) == (1800, 30, True)
    assert options.extensions == [".dv", ".mxf"]

    def extract_options(*flags: str) -> object:
        return extract_job(build_parser().parse_args(["extract", "--config", str(path),
                                                      *flags])).options()

    options = extract_options()  # flags not given leave the file's values
    assert (options.task_timeout, options.wait_lock, options.retry_failed) == (1800, 30, True)
    options = extract_options("--task-timeout", "60", "--wait-lock", "5", "--extensions", "MOD")
    assert (options.task_timeout, options.wait_lock, options.extensions) == (60, 5, ["MOD"])
    assert extract_options("--wait-lock").wait_lock is None  # alone: as long as it takes
    path.write_text(yaml.safe_dump({**MINIMAL, "wait_lock": float("inf")}))  # .inf
    assert load_job(path).options().wait_lock is None


@pytest.mark.parametrize("flags", [("--wait-lock", "-1"), ("--task-timeout", "0"),
                                   ("--task-timeout", "nan")])
def test_a_bad_run_option_flag_is_one_line_and_creates_no_store(
        flags: tuple[str, str], corpus: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store), *flags,
                 "--random-weights"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"vidfeat: error: {flags[0]} must be ") and error.count("\n") == 1
    assert not store.exists()


def test_submit_waits_for_the_lock_as_long_as_the_job_file_says(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vidfeat.storage.lock import StoreLock
    from vidfeat.storage.store_dir import create_store

    store = create_store(tmp_path / "store")
    job = write_job(tmp_path / "job.yaml", [str(corpus / "talk.mp4")], store,
                    {"local": {"workers": 1, "gpus": 0}}, wait_lock=1.5)
    with StoreLock(store):  # another run holds the store all along: no worker ever starts
        started = time.monotonic()
        assert main(["submit", str(job)]) == 3
        waited = time.monotonic() - started
    assert 1.5 <= waited < 30
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("vidfeat: error: ")]
    assert len(errors) == 1 and f"store {store} is locked by host" in errors[0]


def test_a_dry_run_of_a_retry_failed_job_plans_only_failures(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = write_job(tmp_path / "job.yaml", [str(corpus)], tmp_path / "store",
                    {"local": {"workers": 1, "gpus": 0}}, retry_failed=True)
    assert main(["submit", "--dry-run", str(job)]) == 0
    # a new store lists no failure: a retry of failures has nothing to do
    assert "videos: 0 found, 0 to extract, 0 already up to date" in capsys.readouterr().out


def _command_line_cluster(*flags: str) -> object:
    from vidfeat.cli import build_parser, extract_job

    args = build_parser().parse_args(["extract", "v.mp4", "--store", "s", *flags])
    return extract_job(args).cluster.resolved()


def test_gpu_worker_flags_shape_the_local_cluster() -> None:
    # this machine has no GPU: auto finds none, and the CPU workers are what they always were
    for flags in ((), ("--device", "cpu"), ("--device", "cuda")):
        cluster = _command_line_cluster(*flags)
        assert (cluster.kind, cluster.workers, cluster.gpus) == ("local", 2, 0), flags
        assert not cluster.model_resources
    cluster = _command_line_cluster("--gpus", "2")
    assert (cluster.workers, cluster.gpus, dict(cluster.model_resources)) == (0, 2, {"GPU": 1})
    cluster = _command_line_cluster("--gpus", "1", "--workers", "3")
    assert (cluster.workers, cluster.gpus) == (3, 1)
    assert _command_line_cluster("--workers", "1").workers == 1


def test_a_bad_gpu_count_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["extract", "v.mp4", "--store", "s", "--gpus", "many"])
    assert exit_code.value.code == 2
    assert "--gpus: expected a number >= 0 or auto, got 'many'" in capsys.readouterr().err


def test_more_gpus_than_torch_sees_is_a_usage_error(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import torch

    wanted = torch.cuda.device_count() + 1  # whatever the machine: one more than it has
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store), "--features",
                 "resnet152", "--gpus", str(wanted), "--random-weights", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"--gpus {wanted}: torch sees {wanted - 1} GPU(s)" in error
    assert not store.exists()  # refused before anything was made


@pytest.mark.slow  # a whole extraction on a cluster of worker processes
def test_a_run_with_gpu_worker_processes_completes(corpus: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture) -> None:
    # --gpus starts the GPU-worker cluster (a SpecCluster of Nannies, one declaring GPU=1
    # beside a CPU worker); model tasks need GPU=1, so only that worker can have run them
    # (routing by resource is checked in test_cluster_address.py). On this machine it finds no
    # GPU, so its models run on the CPU (--device cpu says that is meant). Its workers' logs
    # stay off the terminal, as a LocalCluster's do.
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), str(corpus / "silent.mp4"), "--store",
                 str(store), "--features", "resnet152", "--gpus", "1", "--workers", "1",
                 "--device", "cpu", "--random-weights", "--no-progress"]) == 0
    assert "distributed.worker - INFO" not in capfd.readouterr().err
    features = vidfeat.open_store(str(store))
    assert sorted(features.videos()) == ["silent", "talk"]
    report = yaml.safe_load(next((store / "runs").glob("*.json")).read_text())
    assert "gpus=1" in report["configuration"]["cluster"]


def test_globs_and_list_files_relative_to_the_job_file(corpus: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "videos").symlink_to(corpus)
    (tmp_path / "list.txt").write_text("videos/talk.mp4\n")
    job = _write(tmp_path, {"sources": ["videos/web/*.webm", "@list.txt"], "store": "store",
                            "features": ["resnet152"], "random_weights": True})
    assert main(["submit", "--dry-run", str(job)]) == 0
    plan = capsys.readouterr().out
    assert "2 found, 2 to extract, 0 already up to date" in plan
    assert "to do: clip resnet152" in plan and "to do: talk resnet152" in plan
    job.write_text(yaml.safe_dump({"sources": ["videos/*.avi"], "store": "store",
                                   "features": ["resnet152"], "random_weights": True}))
    assert main(["submit", str(job)]) == 2
    assert "job.yaml: sources[0]: " in capsys.readouterr().err
    assert main(["submit", "--dry-run", str(job)]) == 0  # planned where the job runs
    assert "videos: not planned on this machine (" in capsys.readouterr().out


def test_dry_run_prints_plan_and_job_script_and_starts_nothing(
        corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    job = write_job(tmp_path / "job.yaml", [str(corpus)], tmp_path / "store", {"slurm": {
        "walltime": "00:30:00", "cores": 2, "memory": "4GB", "jobs": 3}})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: a dry run submits nothing
    assert main(["submit", "--dry-run", str(job)]) == 0
    out = capsys.readouterr().out
    assert "videos: 3 found, 3 to extract, 0 already up to date" in out
    assert "to do: talk resnet152,vggish" in out and "#SBATCH -t 00:30:00" in out
    # a login node with neither the videos nor the weights: the script, and a warning
    job = write_job(tmp_path / "later.yaml", [str(tmp_path / "not-yet")], tmp_path / "store2",
                    {"slurm": {"walltime": "00:30:00", "cores": 2, "memory": "4GB"}},
                    random_weights=False)
    assert main(["submit", "--dry-run", str(job)]) == 0
    captured = capsys.readouterr()
    assert "#SBATCH -t 00:30:00" in captured.out
    assert "videos: not planned on this machine (" in captured.out
    assert "not-yet: no such file or directory" in caplog.text  # a warning, on stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_exit_3_within_the_timeout_naming_it(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    job = write_job(tmp_path / "job.yaml", [str(corpus)], tmp_path / "store",
                    {"address": address, "connect_timeout": 2})
    started = time.monotonic()
    assert main(["submit", str(job)]) == 3
    assert time.monotonic() - started < 20  # 2 s to connect; the rest is planning
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("vidfeat: error: cannot reach the Dask scheduler at " + address)
    assert "within 2 s" in error


def test_slurm_without_sbatch_is_one_line(corpus: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    job = write_job(tmp_path / "job.yaml", [str(corpus)], tmp_path / "store", {"slurm": {
        "walltime": "00:30:00", "cores": 2, "memory": "4GB"}})
    assert main(["submit", str(job)]) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vidfeat: error: sbatch not found: run `vidfeat submit` where Slurm jobs can be "
        "submitted (a login node)")


def test_kubernetes_submit_without_a_cluster_is_one_line(capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["submit", str(EXAMPLES / "kubernetes.yaml")]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("vidfeat: error: cannot create ConfigMap vidfeat-nightly-job in "
                            "Kubernetes: ") and len(error.splitlines()) == 1


@pytest.mark.slow  # starts dask worker processes
def test_gpu_pin_gives_each_worker_process_of_a_job_one_gpu(tmp_path: Path) -> None:
    """`dask worker --nworkers 2 --preload vidfeat.jobs.gpu_pin` in a job granted GPUs 3,7:
    worker 0 sees 3, worker 1 sees 7 (real worker processes; no GPU needed to check)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--name", "job-12", "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
             "--resources", "GPU=1", "--preload", "vidfeat.jobs.gpu_pin"],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "3,7"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            seen = client.run(lambda dask_worker: (dask_worker.name,
                                                   os.environ["CUDA_VISIBLE_DEVICES"]))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert sorted(seen.values()) == [("job-12-0", "3"), ("job-12-1", "7")]


@pytest.mark.slow
def test_extract_config_runs_the_job_locally_with_flags_over_it(
        corpus: Path, tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", [str(corpus / "talk.mp4")], tmp_path / "store",
                    {"local": {"workers": 1, "gpus": 0}})
    other = tmp_path / "other"
    assert main(["extract", "--config", str(job), "--store", str(other), "--features",
                 "resnet152", "--set", "resnet152.fps=2"]) == 0
    features = vidfeat.open_store(str(other))
    assert features.videos() == ["talk"] and not (tmp_path / "store").exists()
    assert len(features.get("talk", "resnet152")) == 5  # 2.5 s at 2 fps: the flag won
    assert features.attrs("talk", "resnet152")["weights_sha256"] == "random"  # the file's


def test_nightly_schedules_run_vidfeat_submit_on_the_nightly_job() -> None:
    nightly = EXAMPLES / "nightly"
    cron = [line for line in (nightly / "vidfeat-nightly.cron").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert len(cron) == 1
    fields = cron[0].split(None, 6)
    assert fields[:5] == ["15", "2", "*", "*", "*"]  # /etc/cron.d: then the user, then the command
    assert " submit " in fields[6] and fields[6].split()[2].endswith("examples/nightly.yaml")
    units = {}
    for name in ("vidfeat-nightly.service", "vidfeat-nightly.timer"):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string((nightly / name).read_text())
        units[name] = parser
    service, timer = units["vidfeat-nightly.service"], units["vidfeat-nightly.timer"]
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].split()[1:] == [
        "submit", "/srv/vidfeat/vidfeat/jobs/examples/nightly.yaml"]
    assert timer["Timer"]["OnCalendar"] == "*-*-* 02:15:00"
    sbatch = nightly / "nightly.sbatch"
    subprocess.run(["bash", "-n", str(sbatch)], check=True)
    text = sbatch.read_text()
    assert "#SBATCH --dependency=singleton" in text and "examples/slurm.yaml" in text
    assert (EXAMPLES / "slurm.yaml").is_file() and (EXAMPLES / "nightly.yaml").is_file()


def test_job_error_in_a_feature_option_names_the_feature(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"job\.yaml: features\.resnet152: "):
        load_job(_write(tmp_path, {**MINIMAL, "features": {"resnet152": {"fsp": 1}}}))


def _worker_threads() -> tuple[str | None, int]:
    from vidfeat.pipeline.worker import torch_threads_for

    return os.environ.get("VIDFEAT_TORCH_THREADS"), torch_threads_for(1)


@pytest.mark.slow  # starts two local clusters of worker processes
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell 1 from 2")
def test_a_second_local_cluster_in_one_process_gets_its_own_thread_counts() -> None:
    """A Nanny writes its workers' environment into the driver, and the next Nanny prefers the
    driver's environment over the configuration: a second run in one process (a notebook, a
    test session) once got the first run's torch threads."""
    from vidfeat.jobs.local import local_client

    cores = len(os.sched_getaffinity(0))
    keys = ("VIDFEAT_TORCH_THREADS", "OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    before = {key: os.environ.get(key) for key in keys}
    with local_client(workers=cores) as client:
        seen = set(client.run(_worker_threads).values())
    assert seen == {("1", 1)}
    assert {key: os.environ.get(key) for key in keys} == before
    with local_client(workers=1) as client:
        seen = set(client.run(_worker_threads).values())
    assert seen == {(str(cores), cores)}


def _maps_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch_cpu" in maps.read()


@pytest.mark.slow  # a whole run in a fresh driver process
def test_local_workers_are_forked_from_one_process_that_imported_torch_for_them(
        corpus: Path, tmp_path: Path) -> None:
    """`vidfeat extract` on a local CPU cluster: the driver never loads torch; its one
    forkserver has torch loaded when it forks the workers, which are its children."""
    import psutil

    process = subprocess.Popen(
        [sys.executable, "-m", "vidfeat", "extract", str(corpus / "talk.mp4"), "--store",
         str(tmp_path / "store"), "--features", "vggish", "--random-weights", "--no-progress",
         "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(process.pid)
    seen: dict[int, tuple[int, str, bool]] = {}
    driver_loaded_torch = False
    while process.poll() is None:
        try:
            driver_loaded_torch |= _maps_torch(driver.pid)
            for child in driver.children(recursive=True):
                seen[child.pid] = (child.ppid(), " ".join(child.cmdline()),
                                   _maps_torch(child.pid))
        except (psutil.Error, OSError):  # a process that ended between two reads
            pass
        time.sleep(0.05)
    out, err = process.communicate()
    assert process.returncode == 0, out + err
    assert not driver_loaded_torch
    forkservers = [pid for pid, (parent, command, _) in seen.items()
                   if parent == driver.pid and "forkserver" in command]
    assert len(forkservers) == 1, seen
    assert seen[forkservers[0]][2], "the forkserver never loaded torch"
    workers = [pid for pid, (parent, _, _) in seen.items() if parent == forkservers[0]]
    assert len(workers) == 2, seen


def _parent_and_mark() -> tuple[int, str | None]:
    return os.getppid(), os.environ.get("VIDFEAT_TEST_MARK")


@pytest.mark.slow  # starts a local cluster of worker processes
def test_workers_see_a_variable_set_after_the_forkserver_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A forkserver's children have its environment, from when it started: a process that
    sets a variable later (a notebook, a test giving the workers VIDFEAT_HOME) gets spawned
    workers, which see it, as they always did."""
    from vidfeat.jobs.local import local_client, start_forkserver

    start_forkserver(1)
    monkeypatch.setenv("VIDFEAT_TEST_MARK", "set after the forkserver started")
    with local_client(workers=1) as client:
        seen = list(client.run(_parent_and_mark).values())
    assert seen == [(os.getpid(), "set after the forkserver started")]


def test_a_kubernetes_job_reads_a_bucket_with_pod_credentials(tmp_path: Path) -> None:
    """Videos from a bucket: no volume for them; the pods that read videos get the bucket's
    credentials from a service account and a Secret, and the job file holds none."""
    from vidfeat.jobs.jobfile import job_from_document

    document = {"sources": ["s3://videos/incoming/", "s3://videos/shards/{00000..00009}.tar"],
                "store": "/data/store", "features": ["vggish"],
                "cluster": {"kubernetes": {
                    "image": "registry.example.org/vidfeat:0.1.0",
                    "service_account": "video-reader", "secret_env": ["minio-credentials"],
                    "volumes": [{"name": "store", "claim": "video-features",
                                 "mount_path": "/data/store"}]}}}
    job = job_from_document(document, "job.yaml", tmp_path, yaml.safe_dump(document))
    assert job.sources == document["sources"]  # URLs stay URLs, not paths in the pod
    config_map, dask_job = render(job.cluster, job.text)
    _check_against_operator_crd(dask_job)
    job_pod = dask_job["spec"]["job"]["spec"]
    worker_pod = dask_job["spec"]["cluster"]["spec"]["worker"]["spec"]
    for pod in (job_pod, worker_pod):
        assert pod["serviceAccountName"] == "video-reader"
        assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "minio-credentials"}}]
    assert "SECRET" not in config_map["data"]["job.yaml"]
    with pytest.raises(ConfigError, match="secret_env: expected a list of Secret names"):
        job_from_document({**document, "cluster": {"kubernetes": {
            **document["cluster"]["kubernetes"], "secret_env": "minio-credentials"}}},
            "job.yaml", tmp_path)
