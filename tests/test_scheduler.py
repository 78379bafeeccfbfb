"""`--scheduler`: a real `dask scheduler` and `dask worker` on 127.0.0.1, as on a cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vidfeat
from vidfeat.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scheduler(tmp_path: Path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    processes = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", ":0", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(2)
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
         "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    yield address
    for process in reversed(processes):
        process.terminate()
        process.wait(timeout=30)


def test_extract_on_an_existing_scheduler(scheduler: str, corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code = main(["extract", str(corpus), "--store", str(store), "--scheduler", scheduler,
                 "--random-weights", "--no-progress", "--features", "resnet152,vggish",
                 "--set", "resnet152.fps=2"])
    assert code == 0
    features = vidfeat.open_store(str(store))
    assert sorted(features.videos()) == ["clip", "silent", "talk"]
    assert len(features.get("talk", "resnet152")) == 5  # 2.5 s at 2 fps
    assert features.attrs("talk", "resnet152")["fps"] == 2
