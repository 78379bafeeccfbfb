"""Tasks sized by the corpus's real length: a probed video counts as its duration, so a
high-bitrate long video, which its size alone makes look three times longer than it is, is
still split into segments (a real `vidfeat extract` on a LocalCluster, its tasks observed in
the scheduler's task stream)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ffmpeg
from distributed import Client, LocalCluster

from vidfeat import open_store
from vidfeat.cli import main
from vidfeat.pipeline.plan import TYPICAL_BYTES_PER_SECOND, media_seconds, task_seconds


def test_media_seconds_takes_durations_where_probed_and_sizes_elsewhere() -> None:
    sizes = [4 * TYPICAL_BYTES_PER_SECOND, 10 * TYPICAL_BYTES_PER_SECOND]
    assert media_seconds(sizes, [None, None]) == 14.0
    assert media_seconds(sizes, [None, 2.5]) == 6.5


@pytest.mark.slow
def test_a_high_bitrate_long_video_is_split(tmp_path: Path) -> None:
    video = tmp_path / "noisy.mp4"
    ffmpeg("-f", "lavfi", "-t", "30", "-i", "testsrc2=size=320x240:rate=25", "-vf",
           "noise=alls=60:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
           "-pix_fmt", "yuv420p", "-b:v", "3M", "-maxrate", "3M", "-bufsize", "1M", str(video))
    guessed = video.stat().st_size / TYPICAL_BYTES_PER_SECOND
    # one task slot: by its size the video would be planned in tasks too long to split it
    assert 30 <= 1.5 * task_seconds(guessed, 1)
    store = tmp_path / "store"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as observer:
        observer.get_task_stream()  # starts the scheduler's record of tasks
        started = time.time()
        assert main(["extract", str(video), "--store", str(store), "--features", "resnet152",
                     "--set", "resnet152.fps=0.25", "--random-weights", "--no-progress",
                     "--scheduler", cluster.scheduler_address]) == 0
        keys = [task["key"] for task in observer.get_task_stream(start=started)]
    model_tasks = [key for key in keys if key.startswith("vidfeat-")
                   and not key.startswith(("vidfeat-stitch-", "vidfeat-describe-"))]
    assert len(model_tasks) == 3, keys  # 10 s segments: 30 s / (3 tasks x 1 slot)
    assert any(key.startswith("vidfeat-stitch-") for key in keys)
    with open_store(store) as features:
        assert features.times("noisy", "resnet152")[:, 0].tolist() == [
            pytest.approx(t) for t in range(0, 30, 4)]
