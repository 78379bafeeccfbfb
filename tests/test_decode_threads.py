"""Several decode threads in one worker (``--decode-threads``): units of one task decoded at
once, their items mixed in the model's batches and split back per video. A damaged, deleted or
replaced video fails alone with the reason one thread gives, segments stitch into the unsplit
rows (or the whole video fails), no decode thread outlives its task (also when the task
breaks), the GPU decode fallback warns once per worker, and Ctrl-C during such a run exits 130
and a rerun completes. Real videos, real stores; the engine in-process (what a worker runs),
and the CLI with a real LocalCluster for Ctrl-C."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests.conftest import ffmpeg, make_video
from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.media import probe
from vidfeat.media.timeline import frame_times
from vidfeat.pipeline.corpus import VideoSource, video_attrs
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit, segments
from vidfeat.pipeline.records import TaskReport
from vidfeat.pipeline.stitch import stitch, stitch_and_write
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.reader import open_store
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.verify import verify

# every test runs the worker engine with real models over real videos
pytestmark = pytest.mark.slow

VISUAL = "resnet152"
AUDIO = "vggish"
#: a worker's torch threads, shared by its decoders (Engine.decoder_threads)
DECODER_THREADS = 3
#: no engine run here takes this long: a deadlocked one fails the test instead of hanging it
ENGINE_DEADLINE_S = 60
#: nor a CLI run
DEADLINE_S = 120


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode-threads")
    videos = {f"good{i}": make_video(root / f"good{i}.mp4", seconds=2, size="160x120",
                                      source=source)
              for i, source in enumerate(["testsrc2", "mandelbrot", "smptebars"])}
    whole = make_video(root / "whole.mp4", seconds=3, size="160x120")
    videos["damaged"] = _cut_short(whole, root / "damaged.mp4")
    # keyframes every 10 frames, so segment starts fall between keyframes; the header first
    # (faststart) so that a copy cut short still probes
    videos["long"] = root / "long.mp4"
    ffmpeg("-f", "lavfi", "-t", "6", "-i", "testsrc2=size=160x120:rate=8", "-c:v", "libx264",
           "-g", "10", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(videos["long"]))
    return videos


def _cut_short(source: Path, path: Path) -> Path:
    """A copy whose header (written first) promises the whole video, with the second half of
    its media data gone: it probes, and its decode stops half way (a download cut short)."""
    ffmpeg("-i", str(source), "-c", "copy", "-movflags", "+faststart", str(path))
    data = path.read_bytes()
    media_data = data.index(b"mdat")
    path.write_bytes(data[:media_data + (len(data) - media_data) // 2])
    return path


@pytest.fixture(scope="module")
def pool() -> ExtractorPool:
    """One pool for the module (a worker's): models load once."""
    return ExtractorPool({VISUAL: ExtractorSpec(VISUAL, {"fps": 1.0}, random_weights=True),
                          AUDIO: ExtractorSpec(AUDIO, {}, random_weights=True)}, "cpu")


def _units(paths: list[Path], kinds: tuple[str, ...] = ("visual",),
           precomputed_attrs: bool = False) -> list[WorkUnit]:
    units = []
    for path in paths:
        info = probe(path)
        attrs = video_attrs(str(path), info) if precomputed_attrs else None
        for kind in kinds:
            units.append(WorkUnit(VideoSource(path.stem, str(path)), kind,  # type: ignore[arg-type]
                                  (VISUAL if kind == "visual" else AUDIO,),
                                  f"xx/{path.stem}.{kind}", info, attrs=attrs))
    return units


def _decode_threads_alive(before: frozenset[threading.Thread] = frozenset()) -> list[str]:
    """The engine's decode threads now alive, except those in ``before`` (a failed test's)."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith("vidfeat-decode") and t.is_alive() and t not in before]


def _no_decode_thread_left(before: frozenset[threading.Thread], grace_s: float = 5.0
                           ) -> list[str]:
    deadline = time.monotonic() + grace_s
    while (alive := _decode_threads_alive(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _within_deadline(call: Callable[[], Any], seconds: float = ENGINE_DEADLINE_S) -> Any:
    """``call()`` in a daemon thread: a deadlock fails the test instead of hanging it."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as error:  # handed to the test
            result["error"] = error

    runner = threading.Thread(target=target, name="test-engine-runner", daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), f"the engine did not return within {seconds} s (deadlock)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _run(pool: ExtractorPool, units: list[WorkUnit], store: Path, threads: int,
         **engine: Any) -> TaskReport:
    create_store(store)
    before = frozenset(threading.enumerate())
    report = _within_deadline(lambda: Engine(
        pool, batch_size=engine.pop("batch_size", 3), dtype="float32",
        decoder_threads=DECODER_THREADS, decode_threads=threads, **engine).run(units, str(store)))
    StoreIndex(store).recover()
    assert not _no_decode_thread_left(before), "decode threads outlived their task"
    return report


def _stored(store: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Every ok feature's rows and times."""
    keys = _ok_keys(store)
    with open_store(store) as opened:
        return {(video, feature): (opened.get(video, feature), opened.times(video, feature))
                for video, feature in keys}


def _ok_keys(store: Path) -> set[tuple[str, str]]:
    return {(e.video_id, e.feature) for e in StoreIndex(store, readonly=True).entries()
            if e.status == "ok"}


def _assert_same_rows(got: tuple[np.ndarray, np.ndarray],
                      expected: tuple[np.ndarray, np.ndarray], key: object) -> None:
    (data, times), (expected_data, expected_times) = got, expected
    np.testing.assert_array_equal(times, expected_times, err_msg=str(key))
    assert data.shape == expected_data.shape, key
    np.testing.assert_allclose(data, expected_data, rtol=1e-4,
                               atol=1e-4 * np.abs(expected_data).max(), err_msg=str(key))


def _outcomes(report: TaskReport) -> dict[tuple[str, str], tuple[str, str]]:
    keys = [(o.video_id, o.feature) for o in report.outcomes]
    assert len(keys) == len(set(keys)), f"more than one outcome for a video: {sorted(keys)}"
    return {(o.video_id, o.feature): (o.status, o.reason) for o in report.outcomes}


# ---- 1. a damaged video among good ones, in one task ------------------------------------------
def test_a_damaged_video_fails_alone_and_the_others_get_the_rows_of_one_thread(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path) -> None:
    paths = [media["good0"], media["good1"], media["damaged"], media["good2"]]
    units = _units(paths, kinds=("visual", "audio"))
    one = _run(pool, units, tmp_path / "one", threads=1)
    started = time.perf_counter()
    three = _run(pool, units, tmp_path / "three", threads=3)
    wall = time.perf_counter() - started
    by_one, by_three = _outcomes(one), _outcomes(three)
    assert set(by_three) == {(p.stem, f) for p in paths for f in (VISUAL, AUDIO)}
    assert three.rows == one.rows
    for key, (status, reason) in by_one.items():
        assert by_three[key][0] == status, (key, by_three[key], by_one[key])
        assert (status == "failed") == (key[0] == "damaged"), (key, reason)
    for feature in (VISUAL, AUDIO):
        reason, reason_one = by_three[("damaged", feature)][1], by_one[("damaged", feature)][1]
        assert "\n" not in reason and reason.startswith(f"{media['damaged']}: "), reason
        # what vidfeat says is the same; after a video decode's "are missing:" comes FFmpeg's
        # own clause, which depends on its thread count (split among the decode threads)
        assert reason.split(" are missing: ")[0] == reason_one.split(" are missing: ")[0], (
            reason, reason_one)
    assert "decode stopped after" in by_three[("damaged", VISUAL)][1]
    assert by_three[("damaged", AUDIO)][1] == by_one[("damaged", AUDIO)][1]
    # the store: the damaged video's failure and reason, and the others' rows, as one thread's
    with open_store(tmp_path / "three") as store:
        failures = {(v, f): (s, r) for v, f, s, r in store.failures()}
    assert set(failures) == {("damaged", VISUAL), ("damaged", AUDIO)}
    assert all(r == by_three[key][1] for key, (_, r) in failures.items())
    rows_one, rows_three = _stored(tmp_path / "one"), _stored(tmp_path / "three")
    assert set(rows_three) == set(rows_one) == {(p.stem, f) for p in paths if p.stem != "damaged"
                                                for f in (VISUAL, AUDIO)}
    for key, rows in rows_one.items():
        _assert_same_rows(rows_three[key], rows, key)
    # model time: each feature's rows carry their share of their batches, no more than the task
    assert set(three.model_seconds) == {VISUAL, AUDIO}
    assert all(seconds > 0 for seconds in three.model_seconds.values()), three.model_seconds
    assert sum(three.model_seconds.values()) <= wall


# ---- 2. segments decoded by several threads ---------------------------------------------------
def _segment_units(path: Path, seconds: float = 1.5) -> list[WorkUnit]:
    info = probe(path)
    parts = segments(frame_times(path), seconds, 1, 0)
    assert len(parts) >= 3
    attrs = video_attrs(str(path), info)
    return [WorkUnit(VideoSource(path.stem, str(path)), "visual", (VISUAL,),
                     f"xx/{path.stem}.visual", info, segment, attrs) for segment in parts]


def test_segments_decoded_by_several_threads_stitch_into_the_unsplit_rows(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path) -> None:
    path = media["long"]
    whole = _run(pool, _units([path]), tmp_path / "whole", threads=1)
    assert _outcomes(whole)[("long", VISUAL)][0] == "ok"
    (expected,) = _stored(tmp_path / "whole").values()
    units = _segment_units(path)
    split = _run(pool, units, tmp_path / "split", threads=3, batch_size=2)
    assert not split.shards and not split.outcomes
    assert sorted(p.unit.segment.index for p in split.parts) == list(range(len(units)))
    (record,) = stitch(split.parts, {VISUAL: "frames"}).features
    assert record.status == "ok", record.reason
    _assert_same_rows((record.data, record.times), expected, "long")
    written = stitch_and_write(split.parts, {VISUAL: "frames"}, str(tmp_path / "split"),
                               "float32")
    assert [outcome.status for outcome in written.outcomes] == ["ok"]
    assert written.rows == {VISUAL: len(expected[0])}
    assert written.model_seconds[VISUAL] == pytest.approx(
        sum(p.model_seconds[VISUAL] for p in split.parts))


def test_a_segment_that_fails_to_decode_fails_the_whole_video(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    shutil.copy(media["long"], path)
    units = _segment_units(path)  # planned on the whole file
    _cut_short(media["long"], tmp_path / "cut.mp4").replace(path)  # then cut short
    store = tmp_path / "store"
    split = _run(pool, units, store, threads=3, batch_size=2)
    statuses = {p.unit.segment.index: p.records[0].status for p in split.parts}
    assert sorted(statuses) == list(range(len(units)))
    assert statuses[0] == "ok" and "failed" in statuses.values(), statuses
    first_failed = min(i for i, s in statuses.items() if s == "failed")
    report = stitch_and_write(split.parts, {VISUAL: "frames"}, str(store), "float32")
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and report.rows == {}, (outcome, report.rows)
    assert outcome.reason.startswith(f"segment {first_failed + 1}/{len(units)}: {path}: "
                                     f"decode stopped"), outcome.reason
    StoreIndex(store).recover()
    with open_store(store) as opened:
        assert [(v, f, s) for v, f, s, _ in opened.failures()] == [("long", VISUAL, "failed")]
    assert not _ok_keys(store)  # no rows with a hole
    with h5py.File(store / report.shards[0].relpath, "r") as shard:
        assert f"videos/long/{VISUAL}/data" not in shard


# ---- 3. files gone or replaced between planning and decode ------------------------------------
def test_files_deleted_or_replaced_after_planning_fail_alone_without_deadlock(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("good0", "good1", "good2", "long"):
        shutil.copy(media[name], corpus / f"{name}.mp4")
    paths = sorted(corpus.iterdir())
    # as the driver plans them: probed and fingerprinted first (deleted: attrs from the engine)
    units = _units(paths[:1], ("visual", "audio")) + _units(paths[1:], ("visual", "audio"),
                                                            precomputed_attrs=True)
    (corpus / "good0.mp4").unlink()
    (corpus / "good1.mp4").write_bytes(os.urandom(20_000))
    report = _run(pool, units, tmp_path / "store", threads=3, queue_items=2)
    outcomes = _outcomes(report)
    assert set(outcomes) == {(p.stem, f) for p in paths for f in (VISUAL, AUDIO)}
    for (video, feature), (status, reason) in outcomes.items():
        if video in ("good0", "good1"):
            assert status == "failed", (video, feature, status, reason)
            assert f"{video}.mp4" in reason and "\n" not in reason, reason
        elif (video, feature) == ("long", AUDIO):
            assert (status, reason) == ("skipped", "no audio stream")
        else:
            assert status == "ok", (video, feature, reason)
    assert _ok_keys(tmp_path / "store") == {("good2", VISUAL), ("good2", AUDIO),
                                            ("long", VISUAL)}


def test_a_task_whose_shard_cannot_be_written_leaves_no_decode_thread_behind(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path) -> None:
    """A task that breaks on the model side (its store unwritable, or full: StoreFullError,
    which the worker survives) must not leave its decode threads blocked on the queue for the
    rest of the worker's life, each holding an open decoder."""
    store = create_store(tmp_path / "store")
    (store / "journal").write_text("a file where the journal's directory goes")
    units = _units([media["good0"], media["long"], media["good1"], media["good2"]])
    before = frozenset(threading.enumerate())
    with pytest.raises(OSError, match="journal"):  # pack_bytes=1: each video written at once
        _within_deadline(lambda: Engine(pool, batch_size=2, dtype="float32",
                                        decoder_threads=DECODER_THREADS, decode_threads=3,
                                        queue_items=1, pack_bytes=1).run(units, str(store)))
    assert not _no_decode_thread_left(before), (
        "decode threads blocked for good after the task broke")


# ---- 4. more decode threads than units, and no units ------------------------------------------
def test_more_decode_threads_than_units_and_none(media: dict[str, Path], pool: ExtractorPool,
                                                 tmp_path: Path) -> None:
    paths = [media["good0"], media["good1"]]
    # a queue of one item: each decoder waits for the model after every item, so the two
    # units' items interleave (tiny videos would otherwise decode within one GIL slice)
    five = _run(pool, _units(paths), tmp_path / "five", threads=5, queue_items=1)
    assert {k: v[0] for k, v in _outcomes(five).items()} == {
        (p.stem, VISUAL): "ok" for p in paths}
    assert five.rows == {VISUAL: 2 * len(paths)}
    one = _run(pool, _units(paths), tmp_path / "one", threads=1)
    assert len(one.shards) == 1  # the task's videos in one pack
    rows_one = _stored(tmp_path / "one")
    rows_five = _stored(tmp_path / "five")
    assert set(rows_five) == set(rows_one)
    for key, rows in rows_one.items():
        _assert_same_rows(rows_five[key], rows, key)
    empty = _run(pool, [], tmp_path / "empty", threads=5)
    assert (empty.outcomes, empty.shards, empty.parts, empty.frames) == ([], [], [], 0)


# ---- 6. the GPU decode fallback, from several decode threads ----------------------------------
class _PoolDecodingOnAGpu(ExtractorPool):
    """Models on the CPU (the module's, already loaded) but frames asked of the GPU, as on a GPU
    worker with --decoder torchcodec: torchcodec really refuses to open them on cuda here."""

    def __init__(self, models: ExtractorPool) -> None:
        super().__init__(models.specs, "cpu")
        self.models = models

    def get(self, name: str) -> Any:
        return self.models.get(name)

    def decode_device(self, decoder: str) -> str:
        return "cpu" if self._gpu_decode_failed else "cuda"


def test_the_gpu_decode_fallback_warns_once_per_worker_with_several_decode_threads(
        media: dict[str, Path], pool: ExtractorPool, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torchcodec")
    paths = [media["good0"], media["good1"], media["good2"]]
    with caplog.at_level(logging.WARNING, logger="vidfeat.extractors.pool"):
        report = _run(_PoolDecodingOnAGpu(pool), _units(paths), tmp_path / "gpu", threads=3,
                      decoder="torchcodec")
    assert {o.status for o in report.outcomes} == {"ok"}, report.outcomes
    warnings = [r.getMessage() for r in caplog.records
                if "decoding on the CPU" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per worker, not once per decode thread
    with open_store(tmp_path / "gpu") as store:
        assert {store.attrs(p.stem, VISUAL)["decode_device"] for p in paths} == {"cpu"}


# ---- 5. Ctrl-C during a multi-thread decode run (the CLI, a real LocalCluster) -------------
def _command(store: Path, corpus: Path) -> list[str]:
    # 1.5 s videos, 3.2 s tasks: two videos per task, both decoded at once
    return [sys.executable, "-m", "vidfeat", "extract", str(corpus), "--store", str(store),
            "--features", VISUAL, "--set", f"{VISUAL}.fps=1", "--random-weights",
            "--no-progress", "--workers", "1", "--decode-threads", "3", "--dtype", "float32",
            "--segment-seconds", "3.2"]


@pytest.mark.slow  # a real driver process, Ctrl-C, and a rerun
def test_ctrl_c_during_a_multi_thread_decode_exits_130_and_the_rerun_completes(
        pool: ExtractorPool, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(6):
        make_video(corpus / f"m{k}.mp4", seconds=1.5, size="160x120",
                   source="mandelbrot" if k % 2 else "testsrc2", audio=False)
    store = tmp_path / "store"
    process = subprocess.Popen(_command(store, corpus), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not list(store.glob("shards/**/*.h5")):
            # the message must not wait for the process: a hung run would hang the test
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no shard written: the run hangs"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        interrupted = time.monotonic()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, out + err
    assert time.monotonic() - interrupted < 30
    assert "Traceback" not in err and "rerun the same command to resume" in out, out + err
    done = {e.video_id for e in StoreIndex(store, readonly=True).entries() if e.status == "ok"}
    assert 0 < len(done) < 6, done
    rerun = subprocess.run(_command(store, corpus), capture_output=True, text=True,
                           timeout=DEADLINE_S)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done)} already up to date" in rerun.stdout, rerun.stdout
    # the rows equal a clean run's (one decode thread, in-process)
    paths = sorted(corpus.iterdir())
    _run(pool, _units(paths), tmp_path / "clean", threads=1)
    clean = _stored(tmp_path / "clean")
    resumed = _stored(store)
    assert set(resumed) == set(clean) == {(p.stem, VISUAL) for p in paths}
    for key, rows in clean.items():
        _assert_same_rows(resumed[key], rows, key)
    assert verify(store) == []  # what `vidfeat verify` runs
