"""`cluster: address`: a real `dask scheduler` and two `dask worker` processes on 127.0.0.1,
one of them declaring a "GPU" resource, as on a cluster with GPU nodes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client
from job_files import write_job

import vidfeat
from vidfeat.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(address: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                             "--name", name, "--nworkers", "1", "--nthreads", "1",
                             "--no-dashboard", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def scheduler():
    address = f"tcp://127.0.0.1:{_free_port()}"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(2)
    processes += [_worker(address, "cpu-worker"),
                  _worker(address, "gpu-worker", "--resources", "GPU=1")]
    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for process in reversed(processes):
        process.terminate()
        process.wait(timeout=30)


def test_job_runs_on_the_scheduler_and_model_tasks_only_on_the_gpu_worker(
        scheduler: str, corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    job = write_job(tmp_path / "job.yaml", [str(corpus)], store,
                    {"address": scheduler, "model_resources": {"GPU": 1}},
                    segment_seconds=1.0)  # segments: more model tasks, and stitch tasks
    with Client(scheduler) as observer:
        observer.get_task_stream()  # starts the scheduler's task stream recording
        started = time.time()
        assert main(["submit", str(job)]) == 0
        stream = observer.get_task_stream(start=started)
        workers = {w["name"]: address for address, w in
                   observer.scheduler_info()["workers"].items()}
    features = vidfeat.open_store(str(store))
    assert sorted(features.videos()) == ["clip", "silent", "talk"]
    assert len(features.get("talk", "resnet152")) == 3  # 2.5 s at 1 fps
    assert features.get("talk", "vggish").shape[1] == 128
    model_tasks = [t for t in stream if t["key"].startswith("vidfeat-")
                   and not t["key"].startswith(("vidfeat-stitch-", "vidfeat-describe-"))]
    probes = [t for t in stream if t["key"].startswith("_probe_videos-")]
    assert len(model_tasks) >= 4 and probes
    assert {t["worker"] for t in model_tasks} == {workers["gpu-worker"]}


def test_short_videos_are_probed_in_their_tasks_and_a_rerun_has_nothing_to_do(
        scheduler: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No round of probing before the first model task: a short video is probed by the task
    that decodes it, and its store attributes still hold the probe's facts."""
    store = tmp_path / "store"
    job = write_job(tmp_path / "job.yaml", [str(corpus)], store,
                    {"address": scheduler, "model_resources": {"GPU": 1}})
    with Client(scheduler) as observer:
        observer.get_task_stream()
        started = time.time()
        assert main(["submit", str(job)]) == 0
        stream = observer.get_task_stream(start=started)
    assert not [t for t in stream if not t["key"].startswith("vidfeat-")], stream
    attrs = vidfeat.open_store(str(store)).attrs("talk")
    assert (attrs["fps"], attrs["width"], attrs["has_audio"]) == (8.0, 96, True)
    assert attrs["duration"] == pytest.approx(2.5, abs=0.05)
    assert attrs["fingerprint"].startswith("sha256-3x1MiB:")
    capsys.readouterr()
    assert main(["submit", "--dry-run", str(job)]) == 0
    assert "3 found, 0 to extract, 3 already up to date" in capsys.readouterr().out
    write_job(job, [str(corpus), str(corpus / "talk.mp4"), str(tmp_path / "new.mp4")], store,
              {"address": scheduler})
    from conftest import make_video

    make_video(tmp_path / "new.mp4", seconds=1.0)
    assert main(["submit", "--dry-run", str(job)]) == 0
    plan = capsys.readouterr().out
    assert "4 found, 1 to extract, 3 already up to date" in plan
    assert "to do: new resnet152,vggish" in plan


def test_no_worker_with_the_resource_is_one_line_naming_it(
        scheduler: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = write_job(tmp_path / "job.yaml", [str(corpus)], tmp_path / "store",
                    {"address": scheduler, "connect_timeout": 2,
                     "model_resources": {"TPU": 1}})
    assert main(["submit", str(job)]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("WARNING: --random-weights") and len(lines) == 2
    error = lines[1]
    assert "declares the resource TPU=1" in error and scheduler in error
