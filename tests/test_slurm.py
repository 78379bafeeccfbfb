"""`cluster: slurm` on a real single-node Slurm (slurmctld + slurmd + munged on this machine,
started by scripts/start_slurm.sh; root only, as on CI): the workers are Slurm jobs submitted
by dask-jobqueue, and the store is right."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from job_files import write_job

import vidfeat
from vidfeat.cli import main

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("a single-node Slurm needs root (slurmd runs jobs as their users)")
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh"), str(directory)],
                             capture_output=True, text=True, timeout=300)
    try:
        if started.returncode != 0:
            pytest.skip(f"Slurm did not start: {started.stderr.strip() or started.stdout}")
        yield {"SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh"), str(directory)], timeout=60)


def _slurm(env: dict[str, str], *command: str) -> str:
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def test_job_file_runs_with_workers_as_slurm_jobs(slurm: dict[str, str], corpus: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    name = f"vidfeat-test-{os.getpid()}"
    logs = tmp_path / "logs"
    store = tmp_path / "store"
    job = write_job(tmp_path / "job.yaml", [str(corpus)], store, {"slurm": {
        "walltime": "00:10:00", "cores": 1, "memory": "2GB", "jobs": 2, "job_name": name,
        "log_directory": str(logs), "start_timeout": 120}})

    running: set[str] = set()
    done = threading.Event()

    def watch_queue() -> None:
        while not done.wait(0.5):
            for line in _slurm(slurm, "squeue", "-h", "-n", name, "-o", "%i %T").splitlines():
                job_id, state = line.split()
                if state == "RUNNING":
                    running.add(job_id)

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    try:
        assert main(["submit", str(job)]) == 0
    finally:
        done.set()
        watcher.join()

    features = vidfeat.open_store(str(store))
    assert sorted(features.videos()) == ["clip", "silent", "talk"]
    assert len(features.get("talk", "resnet152")) == 3  # 2.5 s at 1 fps
    assert features.get("talk", "vggish").shape[1] == 128
    # squeue showed the worker jobs running; the job completion log has them, ended by
    # dask-jobqueue when the run closed its cluster
    assert running, "no worker job was seen running in squeue"
    for _ in range(60):  # cancelled jobs are COMPLETING for a moment, then leave the queue
        if not _slurm(slurm, "squeue", "-h", "-n", name).strip():
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"worker jobs still queued after the run: {_slurm(slurm, 'squeue')}")
    finished = _slurm(slurm, "sacct", "--completion", "-n", "-P", "-o", "JobID,JobName,State")
    ours = {line.split("|")[0]: line.split("|")[2] for line in finished.splitlines()
            if line.split("|")[1] == name}
    assert running <= set(ours) and len(ours) == 2
    # the log of each job that ran is its dask worker's log: it connected and loaded this
    # run's models (a job the run no longer needed may be cancelled before it starts)
    for job_id in running:
        log = (logs / f"{name}-{job_id}.err").read_text()
        assert "Registered to" in log and "Starting Worker plugin vidfeat-" in log
