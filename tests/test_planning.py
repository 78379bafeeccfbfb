"""Planning: tasks that shrink as the work runs out and run largest first, audio planned at a
share of its seconds, and tasks sized by the corpus's real length: a probed video counts as
its duration, so a high-bitrate long video, which its size alone makes look three times
longer than it is, is still split into segments (a real `vidfeat extract` on a LocalCluster,
its tasks observed in the scheduler's task stream)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ffmpeg, make_video
from distributed import Client, LocalCluster

from vidfeat import open_store
from vidfeat.cli import main
from vidfeat.media.probe import MediaInfo
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.plan import (
    AUDIO_WORK_SHARE,
    MIN_TASK_SECONDS,
    TYPICAL_BYTES_PER_SECOND,
    TaskSizes,
    WorkUnit,
    plan_tasks,
    segments,
    task_seconds,
)


def _unit(name: str, seconds: float, kind: str = "visual", weight: float = 1.0) -> WorkUnit:
    info = MediaInfo(name, seconds, 30.0, 640, 360, 0, int(seconds * 30), "h264", 0.0, True,
                     48000, 2, 0.0)
    return WorkUnit(VideoSource(name, name), kind, ("x",), f"{name}.{kind}",  # type: ignore[arg-type]
                    info, weight=weight)


def test_packs_shrink_as_the_work_runs_out_and_run_largest_first() -> None:
    units = [_unit(f"v{i}", 10.0) for i in range(60)]
    largest = task_seconds(600.0, 2)
    tasks = plan_tasks(units, [], TaskSizes(600.0, 2, largest), 1, 0)
    works = [task.work for task in tasks]  # type: ignore[union-attr]
    assert works == sorted(works, reverse=True)
    assert works[0] == largest == 100.0 and works[-1] == MIN_TASK_SECONDS
    assert sum(works) == 600.0 and len(tasks) > 600.0 / largest
    assert sorted(unit.key for task in tasks for unit in task.units) == sorted(  # type: ignore[union-attr]
        unit.key for unit in units)


def test_a_long_videos_last_segments_are_short_and_cover_it_exactly() -> None:
    times = np.arange(600 * 30) / 30
    unit = _unit("long", 600.0)
    tasks = plan_tasks([], [(unit, times)], TaskSizes(600.0, 2, 200.0), 16, 16)
    parts = sorted((task[0].segment for task in tasks), key=lambda s: s.index)  # type: ignore[index]
    assert [p.start_frame for p in parts[1:]] == [p.stop_frame for p in parts[:-1]]
    assert parts[0].start_frame == 0 and parts[-1].stop_frame == len(times)
    assert all(p.start_frame % 16 == 0 for p in parts)
    lengths = [(p.stop_frame - p.start_frame) / 30 for p in parts]
    assert lengths[0] == pytest.approx(150, abs=1)  # a quarter of the work left: 2 slots x 2
    assert lengths[-2] == pytest.approx(MIN_TASK_SECONDS, abs=1)
    assert MIN_TASK_SECONDS / 2 <= lengths[-1] < 1.5 * MIN_TASK_SECONDS + 1
    # --segment-seconds: fixed sizes
    fixed = segments(times, 100.0, 16, 16)
    assert [(p.stop_frame - p.start_frame) / 30 for p in fixed] == [pytest.approx(100, abs=2)] * 6


def test_an_audio_track_is_planned_at_a_share_of_its_seconds() -> None:
    # a long audio track in a run with visual work is cheap: it runs after the visual tasks,
    # where it fills the slot that finishes first, instead of first as the largest task
    units = [_unit("long", 600.0, "audio", AUDIO_WORK_SHARE),
             *(_unit(f"v{i}", 90.0) for i in range(6))]
    tasks = plan_tasks(units, [], TaskSizes(600.0, 2, 100.0), 1, 0)
    assert [task.units[0].kind for task in tasks] == ["visual"] * 6 + ["audio"]  # type: ignore[union-attr]


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


@pytest.mark.slow
def test_a_stitch_runs_on_the_worker_whose_segment_just_finished(tmp_path: Path) -> None:
    """That worker's task slot is the one free: elsewhere the stitch would wait behind a model
    task while this worker idles. Two long videos on two workers, so that when one video's
    last segment ends, the other worker is busy with the other video."""
    videos = [make_video(tmp_path / f"long{i}.mp4", seconds=12, audio=False) for i in (1, 2)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as observer:
        observer.get_task_stream()
        started = time.time()
        assert main(["extract", *map(str, videos), "--store", str(tmp_path / "store"),
                     "--features", "resnet152", "--segment-seconds", "3", "--random-weights",
                     "--no-progress", "--scheduler", cluster.scheduler_address]) == 0
        tasks = observer.get_task_stream(start=started)
    ended = {task["key"]: (max(s["stop"] for s in task["startstops"]), task["worker"])
             for task in tasks}
    for video in ("long1", "long2"):
        segments_ran = [ended[key] for key in ended if key.startswith(f"vidfeat-{video}-")]
        (stitch,) = [ended[key] for key in ended if key.startswith(f"vidfeat-stitch-{video}-")]
        assert len(segments_ran) == 4
        assert stitch[1] == max(segments_ran)[1]


def test_a_stitch_whose_segments_worker_is_unknown_is_placed_by_dask() -> None:
    from vidfeat.pipeline.execute import _where_it_ran

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        segment = client.submit(sum, [1, 2], pure=False)
        assert segment.result() == 3
        assert _where_it_ran(client, segment) == {
            "workers": list(cluster.scheduler.workers), "allow_other_workers": True}
        key = segment.key
        segment.release()  # the scheduler forgets it, as it does a result on a worker now gone
        forgotten = type("Forgotten", (), {"key": key})()
        assert _where_it_ran(client, forgotten) == {}
        assert client.submit(sum, [3, 4], pure=False, **_where_it_ran(client, forgotten)
                             ).result() == 7
