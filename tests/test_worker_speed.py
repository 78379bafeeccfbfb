"""A task's model time in a LocalCluster worker process is within 15 % of the same task run
in-process (distributed's nanny environment once made it 1.6x slower: see
vidfeat/pipeline/worker.py). A comparison in one run, not a timed test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_video

from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.jobs.local import local_client
from vidfeat.media import probe
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit
from vidfeat.pipeline.worker import available_cores, extractor_plugin, worker_state
from vidfeat.storage.writer import create_store

SPECS = {"resnet152": ExtractorSpec("resnet152", {"fps": 2.0}, random_weights=True)}
REPEATS = 3


def _model_seconds(pool: ExtractorPool, path: str, store: str) -> float:
    """The best of a few runs of one task: the model's share of each."""
    unit = WorkUnit(VideoSource("speed", path), "visual", ("resnet152",), "xx/speed",
                    probe(path))
    engine = Engine(pool, batch_size=8, dtype="float32")
    return min(sum(o.seconds for o in engine.run([unit], store).outcomes)
               for _ in range(REPEATS))


def _on_worker(path: str, store: str) -> tuple[float, int]:
    state = worker_state("speed-test")
    return _model_seconds(state.pool, path, store), torch.get_num_threads()


@pytest.mark.slow
def test_worker_process_runs_the_model_as_fast_as_the_driver(tmp_path: Path) -> None:
    path = str(make_video(tmp_path / "speed.mp4", seconds=4, audio=False))
    store = str(create_store(tmp_path / "store"))
    threads = available_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        in_process = _model_seconds(ExtractorPool(SPECS, "cpu"), path, store)
    finally:
        torch.set_num_threads(previous)
    with local_client(workers=1) as client:
        client.register_plugin(extractor_plugin("speed-test", SPECS, "cpu", {}))
        on_worker, worker_threads = client.submit(_on_worker, path, store, pure=False).result()
    assert worker_threads == threads
    assert on_worker <= 1.15 * in_process, (on_worker, in_process)
