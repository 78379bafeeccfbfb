"""docker/: the compose files validated by Debian's `docker-compose config` (no Docker daemon
runs here), the jobs they mount, and the Dockerfile's pins against the Makefile/pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from vidfeat.jobs.jobfile import load_job

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


@pytest.fixture(scope="session")
def docker_compose() -> str:
    # installed by `make install` as root (scripts/install_system_packages.sh), never here
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed: `make install` as root installs the "
                    "Debian package, or `apt-get install docker-compose`")
    return found


def _config(docker_compose: str, *files: Path) -> dict:
    command = [docker_compose]
    for file in files:
        command += ["-f", str(file)]
    result = subprocess.run([*command, "config"], capture_output=True, text=True, timeout=120,
                            cwd=DOCKER)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_runs_a_scheduler_two_workers_and_the_job(docker_compose: str) -> None:
    services = _config(docker_compose, DOCKER / "compose.yaml")["services"]
    assert set(services) == {"scheduler", "worker-1", "worker-2", "job"}
    assert services["scheduler"]["command"][:4] == ["dask", "scheduler", "--port", "8786"]
    for name in ("worker-1", "worker-2"):
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", "tcp://scheduler:8786"]
        assert command[command.index("--nworkers") + 1] == "1"
    job = services["job"]
    assert job["command"] == ["vidfeat", "submit", "/job/job.yaml"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in job["volumes"]}
    assert set(mounts) == {"/data/corpus", "/data/store", "/data/weights", "/job/job.yaml"}
    mounted = load_job(mounts["/job/job.yaml"])
    assert mounted.cluster.address == "tcp://scheduler:8786"
    assert mounted.store == "/data/store" and mounted.sources == ["/data/corpus"]
    assert mounted.run["weights_dir"] == "/data/weights"


def test_gpu_override_gives_each_worker_one_gpu_and_routes_model_tasks(
        docker_compose: str) -> None:
    services = _config(docker_compose, DOCKER / "compose.yaml",
                       DOCKER / "compose.gpu.yaml")["services"]
    devices = []
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"][-2:] == ["--resources", "GPU=1"]
        reserved = services[name]["deploy"]["resources"]["reservations"]["devices"]
        devices += [device for entry in reserved for device in entry["device_ids"]]
    assert sorted(devices) == ["0", "1"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["job"]["volumes"]}
    assert load_job(mounts["/job/job.yaml"]).options().model_resources == {"GPU": 1.0}


def test_a_broken_compose_file_fails_the_check(docker_compose: str, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text((DOCKER / "compose.yaml").read_text().replace(
        "    command: [vidfeat, submit", "    comand: [vidfeat, submit"))
    result = subprocess.run([docker_compose, "-f", str(broken), "config"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "comand" in result.stderr


def _makefile_pin(package: str) -> str:
    return re.search(rf"\b{package}==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)


def _dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (DOCKER / "Dockerfile").read_text(),
                     re.MULTILINE).group(1)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_torch_pins_are_the_makefiles_and_fit_pyproject() -> None:
    dependencies = {Requirement(r).name: Requirement(r)
                    for r in _pyproject()["project"]["dependencies"]}
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = _dockerfile_arg(arg)
        assert pinned == _makefile_pin(package)
        assert dependencies[package].specifier.contains(pinned)


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    project = _pyproject()["project"]
    constraints = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            constraints[name.lower()] = version
    required = [Requirement(r) for r in project["dependencies"]]
    required += [Requirement(r) for r in project["optional-dependencies"]["cluster"]]
    for requirement in required:
        if requirement.name in ("torch", "torchvision"):
            continue  # from the PyTorch index, pinned by build arguments
        name = requirement.name.lower()
        assert name in constraints, f"docker/constraints.txt does not pin {name}"
        assert requirement.specifier.contains(constraints[name]), (name, constraints[name])
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "--constraint /src/docker/constraints.txt" in dockerfile
    assert '"/src[cluster]"' in dockerfile
    assert "!docker/constraints.txt" in (DOCKER / "Dockerfile.dockerignore").read_text()


def test_weights_are_fetched_only_when_a_build_argument_asks() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert _dockerfile_arg("FETCH_WEIGHTS") == '""'
    fetches = [line for line in dockerfile.splitlines() if "weights fetch" in line]
    assert fetches == ['RUN if [ -n "$FETCH_WEIGHTS" ]; then vidfeat weights fetch '
                       '$FETCH_WEIGHTS; fi']
