"""A task's model time in a LocalCluster worker process is within 15 % of the same task run
in-process, in the main thread of a process tuned as the workers are (distributed's nanny
environment once made it 1.6x slower, then the worker threads' own malloc arenas 1.25x: see
vidfeat/malloc.py). Batches of 32 frames, whose activations outgrow a thread arena's 64 MiB
heaps. A comparison in one run, not a timed test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_video

from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.host import available_cores
from vidfeat.jobs.local import local_client
from vidfeat.malloc import tune_malloc
from vidfeat.media import probe
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit
from vidfeat.pipeline.worker import extractor_plugin, plugin_name, worker_state
from vidfeat.storage.store_dir import create_store

SPECS = {"resnet152": ExtractorSpec("resnet152", {"fps": 8.0}, random_weights=True)}
REPEATS = 3


def _model_seconds(pool: ExtractorPool, path: str, store: str) -> float:
    """One task's model time (the engine's share of each batch)."""
    unit = WorkUnit(VideoSource("speed", path), "visual", ("resnet152",), "xx/speed",
                    probe(path))
    engine = Engine(pool, batch_size=32, dtype="float32")
    return sum(engine.run([unit], store).model_seconds.values())


def _on_worker(path: str, store: str) -> tuple[float, int]:
    state = worker_state(plugin_name(SPECS))
    return _model_seconds(state.pool, path, store), torch.get_num_threads()


@pytest.mark.slow
def test_worker_process_runs_the_model_as_fast_as_the_driver(tmp_path: Path) -> None:
    path = str(make_video(tmp_path / "speed.mp4", seconds=4, audio=False))
    store = str(create_store(tmp_path / "store"))
    threads = available_cores()
    tune_malloc()  # the best the driver can do is the bar
    previous = torch.get_num_threads()
    pool = ExtractorPool(SPECS, "cpu")
    in_process, on_worker = [], []
    with local_client(workers=1) as client:
        client.register_plugin(extractor_plugin(SPECS, "cpu", {}))
        # alternated, so that whatever else the machine does weighs on both alike
        for _ in range(REPEATS):
            torch.set_num_threads(threads)
            try:
                in_process.append(_model_seconds(pool, path, store))
            finally:
                torch.set_num_threads(previous)
            seconds, worker_threads = client.submit(_on_worker, path, store,
                                                    pure=False).result()
            on_worker.append(seconds)
    assert worker_threads == threads
    assert min(on_worker) <= 1.15 * min(in_process), (on_worker, in_process)


def _torch_used_by_a_task() -> int:
    torch.ones(1 << 20).sum()  # a parallel operation: the thread fixes its OpenMP threads
    return torch.get_num_threads()


def _threads_in_a_run_task() -> int:
    worker_state(plugin_name(SPECS))
    return torch.get_num_threads()


@pytest.mark.skipif(available_cores() < 2, reason="needs two torch threads to choose from")
def test_a_task_thread_that_used_torch_before_the_run_gets_the_runs_threads() -> None:
    """A worker's task thread keeps the torch (OpenMP) thread count it had at its first torch
    operation. On a plain Dask worker, as a user starts one, that is one thread (Dask sets
    OMP_NUM_THREADS=1); a run with one task slot on the host asks for one per core, and gets
    them in a thread that ran a task before (describing the extractors, say) all the same."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        before = client.submit(_torch_used_by_a_task, pure=False).result()
        client.register_plugin(extractor_plugin(SPECS, "cpu", {"127.0.0.1": 1}))
        during = client.submit(_threads_in_a_run_task, pure=False).result()
    assert before == 1
    assert during == available_cores()
