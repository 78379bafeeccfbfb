"""The driver under nightly conditions, with real `vidfeat extract` processes: two runs on one
store, a FIFO and an audio-only file, exit codes of broken runs, a disk that fills mid-run (a
small tmpfs), Ctrl-C to the driver and to its process group, the run report, --retry-failed,
a decode that hangs (its worker stopped with SIGSTOP) and a video that kills its worker."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ffmpeg, make_video
from vidfeat.storage.index import StoreIndex

# every test runs real `vidfeat extract` processes, most of them twice
pytestmark = pytest.mark.slow

#: VGGish alone where a test needs no visual feature: its model loads in a moment
AUDIO = ("--features", "vggish")
VISUAL = ("--features", "resnet152", "--set", "resnet152.fps=1")
BOTH = ("--features", "resnet152,vggish", "--set", "resnet152.fps=1")
COMMON = ("--random-weights", "--no-progress", "--workers", "1")


def _command(store: Path, *sources: Path | str, extra: tuple[str, ...] = (),
             features: tuple[str, ...] = AUDIO) -> list[str]:
    return [sys.executable, "-m", "vidfeat", "extract", *map(str, sources), "--store",
            str(store), *features, *COMMON, *extra]


def _extract(store: Path, *sources: Path | str, extra: tuple[str, ...] = (),
             features: tuple[str, ...] = AUDIO) -> subprocess.CompletedProcess:
    return subprocess.run(_command(store, *sources, extra=extra, features=features),
                          capture_output=True, text=True, timeout=300)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidfeat", *args], capture_output=True,
                          text=True, timeout=120)


def _verified(store: Path) -> None:
    # `vidfeat verify`'s own function, in this process: a new interpreter per check cost a
    # second or two each and checked nothing more
    from vidfeat.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["verify", str(store)])
    assert code == 0, printed.getvalue()


def _statuses(store: Path) -> dict[tuple[str, str], str]:
    return {(e.video_id, e.feature): e.status for e in StoreIndex(store, readonly=True).entries()}


def _error_lines(stderr: str) -> list[str]:
    """stderr without the random-weights warning every test run prints."""
    return [line for line in stderr.splitlines()
            if line.strip() and "random" not in line.lower() and "float16" not in line]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("driver-videos")
    for name in ("a", "b", "c"):
        make_video(root / f"{name}.mp4", seconds=1.5)
    return root


def test_a_second_run_on_a_locked_store_refuses_naming_the_holder(videos: Path, tmp_path: Path):
    store = tmp_path / "store"
    first = subprocess.Popen(_command(store, videos), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (store / "run.lock").exists():
            assert time.monotonic() < deadline and first.poll() is None, "no lock was taken"
            time.sleep(0.05)
        second = _extract(store, videos)
    finally:
        out, err = first.communicate(timeout=180)
    assert second.returncode == 3, second.stderr
    lines = _error_lines(second.stderr)
    assert len(lines) == 1, second.stderr
    assert f"pid {first.pid}" in lines[0] and "locked" in lines[0], lines
    assert first.returncode == 0, err
    assert _error_lines(err) == [], err  # no dashboard port clash, no distributed noise
    assert not (store / "run.lock").exists()
    # the next run waits for nothing and finds everything up to date
    _verified(store)


def test_fifo_and_audio_only_files_with_run_report_and_retry_failed(videos: Path,
                                                                      tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_video(corpus / "good.mp4", seconds=1.5)
    os.mkfifo(corpus / "pipe.mp4")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100:duration=2.5",
           "-c:a", "aac", str(corpus / "voice.mp4"))
    (corpus / "broken.mp4").write_text("not a video at all\n")
    store = tmp_path / "store"
    result = _extract(store, corpus, features=BOTH)
    assert result.returncode == 1, result.stdout + result.stderr  # finished, failures listed
    assert "FAILED pipe resnet152: not a regular file: a FIFO (named pipe)" in result.stdout
    statuses = _statuses(store)
    assert statuses[("voice", "vggish")] == "ok"
    assert statuses[("voice", "resnet152")] == "skipped"
    assert statuses[("good", "resnet152")] == statuses[("good", "vggish")] == "ok"
    assert statuses[("broken", "resnet152")] == statuses[("pipe", "vggish")] == "failed"
    reports = sorted((store / "runs").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["exit_code"] == 1 and not report["interrupted"]
    assert report["videos"] == {"total": 4, "done": 2, "up_to_date": 0, "skipped": 0,
                                "failed": 2, "not_started": 0}
    failed = {(f["video_id"], f["feature"]) for f in report["failures"]}
    assert failed == {("pipe", "resnet152"), ("pipe", "vggish"), ("broken", "resnet152"),
                      ("broken", "vggish")}
    assert {(s["video_id"], s["reason"]) for s in report["skips"]} == {
        ("voice", "no video stream")}
    listed = _cli("inspect", str(store), "--failures").stdout
    assert "broken\tresnet152\t" in listed and "pipe\tvggish\t" in listed
    _verified(store)

    # the broken file is replaced by a good one; a new video appears beside it
    make_video(corpus / "broken.mp4", seconds=1.5)
    make_video(corpus / "newcomer.mp4", seconds=1.5)
    retried = _extract(store, corpus, extra=("--retry-failed",), features=BOTH)
    assert retried.returncode == 1, retried.stderr  # the FIFO is still no video
    assert "dropped" not in retried.stderr and "rewritten" not in retried.stderr
    statuses = _statuses(store)
    assert statuses[("broken", "resnet152")] == statuses[("broken", "vggish")] == "ok"
    assert ("newcomer", "resnet152") not in statuses  # only the listed failures
    runs = _cli("inspect", str(store), "--runs").stdout.splitlines()
    assert len(runs) == 2 and all("exit 1" in line for line in runs), runs
    _verified(store)


def test_broken_runs_exit_3_in_one_line_and_usage_errors_create_no_store(videos: Path,
                                                                         tmp_path: Path):
    unreachable = _extract(tmp_path / "s1", videos, extra=("--scheduler", "not-an-address"))
    assert unreachable.returncode == 3, unreachable.stderr
    lines = _error_lines(unreachable.stderr)
    assert len(lines) == 1 and "not-an-address" in lines[0], unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    for flags in (("--task-timeout", "0"), ("--batch-size", "0"), ("--features", ",")):
        store = tmp_path / f"usage{flags[0]}"
        usage = subprocess.run([*_command(store, videos), *flags], capture_output=True,
                               text=True, timeout=60)
        assert usage.returncode == 2, (flags, usage.stderr)
        assert not store.exists(), flags


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mounted: list[Path] = []
    yield mounted
    gc.collect()
    for mountpoint in reversed(mounted):
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _mount(mounts: list[Path], mountpoint: Path, *args: str) -> None:
    mountpoint.mkdir(exist_ok=True)
    result = subprocess.run(["mount", *args, str(mountpoint)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    mounts.append(mountpoint)


def test_a_read_only_store_is_exit_3_in_one_line(videos: Path, tmp_path: Path,
                                                  mounts: list[Path]):
    store = tmp_path / "store"
    assert _extract(store, videos / "a.mp4").returncode == 0
    readonly = tmp_path / "readonly"
    _mount(mounts, readonly, "--bind", str(store))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
    make_video(tmp_path / "d.mp4", seconds=1.5)
    result = _extract(readonly, tmp_path / "d.mp4")
    assert result.returncode == 3, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "read-only" in lines[0].lower(), lines


def test_a_disk_filling_mid_run_stops_in_one_line_then_the_rerun_completes(
        tmp_path: Path, mounts: list[Path]):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(6):
        make_video(corpus / f"v{k}.mp4", seconds=1.5, source="mandelbrot" if k % 2 else
                   "testsrc2")
    disk = tmp_path / "disk"
    _mount(mounts, disk, "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    store = disk / "store"
    ballast = disk / "ballast"
    # leave room for the store's index and a few shards (each ~20 KB), not for all six
    ballast.write_bytes(b"\xff" * (1024 * 1024 - 180 * 1024))
    full = _extract(store, corpus, features=BOTH)
    assert full.returncode == 3, full.stdout + full.stderr
    lines = _error_lines(full.stderr)
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert lines[0].startswith(f"vidfeat: error: store {store}: disk full"), lines
    assert not [p for p in store.rglob("*.tmp")]
    _verified(store)
    ballast.unlink()
    rerun = _extract(store, corpus, features=BOTH)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    statuses = _statuses(store)
    assert all(statuses[(f"v{k}", f)] == "ok" for k in range(6) for f in ("resnet152", "vggish"))
    _verified(store)


def _stopped_output(process: subprocess.Popen) -> tuple[str, str]:
    """What a run printed, stopping it first: communicate() alone would wait for a hung one."""
    if process.poll() is None:
        try:  # with its workers, where it leads a process group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            process.kill()
    return process.communicate(timeout=30)


def _interrupt_after_first_shard(store: Path, sources: Path, *, group: bool, twice: bool,
                                 signum: int = signal.SIGINT) -> subprocess.CompletedProcess:
    # one video per task: most of them are still to do when the first shard appears
    command = _command(store, sources, extra=("--segment-seconds", "1.6"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (store / "shards").exists() or not list((store / "shards").rglob("*.h5")):
        assert time.monotonic() < deadline and process.poll() is None, _stopped_output(process)
        time.sleep(0.05)
    send = (lambda: os.killpg(process.pid, signum)) if group else (
        lambda: process.send_signal(signum))
    send()
    if twice:
        time.sleep(0.3)
        send()
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for k in range(6):
        make_video(root / f"m{k}.mp4", seconds=1.5)
    return root


@pytest.mark.parametrize("group", [False, True], ids=["driver", "process-group"])
def test_ctrl_c_finishes_what_is_in_flight_and_says_how_to_resume(
        many_videos: Path, tmp_path: Path, group: bool):
    store = tmp_path / "store"
    result = _interrupt_after_first_shard(store, many_videos, group=group, twice=False)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert "rerun the same command to resume" in result.stdout
    assert "videos:" in result.stdout or "extracted" in result.stdout
    _verified(store)
    report = json.loads(next((store / "runs").glob("*.json")).read_text())
    assert report["interrupted"] and report["exit_code"] == 130
    statuses = _statuses(store)
    done = {video for (video, _), status in statuses.items() if status == "ok"}
    assert 0 < len(done) < 6
    # the run had 6 videos, whether or not they started
    assert report["videos"]["total"] == 6
    assert report["videos"]["not_started"] == 6 - len({video for video, _ in statuses})
    assert f"{report['videos']['not_started']} videos not started" in result.stdout
    if group:
        resumed = _extract(store, many_videos)
        assert resumed.returncode == 0, resumed.stderr
        assert f"{len(done)} already up to date" in resumed.stdout
        _verified(store)


def test_a_second_ctrl_c_stops_at_once_and_the_store_verifies(many_videos: Path,
                                                               tmp_path: Path):
    store = tmp_path / "store"
    result = _interrupt_after_first_shard(store, many_videos, group=True, twice=True)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "rerun the same command to resume" in result.stderr
    _verified(store)
    assert not (store / "run.lock").exists()


def test_sigterm_stops_at_once_and_records_the_run(many_videos: Path, tmp_path: Path):
    # what systemd's stop, Slurm's time limit or a pod deletion sends, to the driver alone
    store = tmp_path / "store"
    started = time.monotonic()
    result = _interrupt_after_first_shard(store, many_videos, group=False, twice=False,
                                          signum=signal.SIGTERM)
    assert result.returncode == 130, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr
    assert "terminated: stopping at once" in result.stderr
    report = json.loads(next((store / "runs").glob("*.json")).read_text())
    assert report["interrupted"] and report["exit_code"] == 130  # not "running?" forever
    _verified(store)
    assert not (store / "run.lock").exists()
    done = {video for (video, _), status in _statuses(store).items() if status == "ok"}
    resumed = _extract(store, many_videos)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} already up to date" in resumed.stdout


def test_a_signal_that_lands_in_a_finalizer_still_stops_the_driver(capfd):
    # the garbage collector runs distributed's Future.__del__ anywhere; an exception raised
    # there is printed ("Exception ignored in") and dropped, and the driver went on
    import threading

    from vidfeat.pipeline.run import _first_interrupt_stops

    class SlowFinalizer:
        def __del__(self) -> None:
            time.sleep(0.5)  # the signal arrives meanwhile: its handler runs in this frame

    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt), _first_interrupt_stops(stop):
        # sent once the handler is in place (the default one would end pytest)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        SlowFinalizer()  # dropped at once: __del__ runs here
        time.sleep(5)  # where the redelivered signal stops it
        pytest.fail("SIGTERM was lost in a finalizer")
    assert stop.is_set()
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err
    assert err.count("terminated: stopping at once") == 1


def _long_audio(path: Path) -> Path:
    """Twenty minutes of audio: VGGish streams it, so its worker keeps the file open for
    seconds (a visual decode of a tiny video is done before a test could see it; on a fast
    machine five minutes took under a second)."""
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=1200",
           "-c:a", "aac", "-b:a", "32k", str(path))
    return path


def _worker_reading(driver: psutil.Process, path: Path, *, for_s: float) -> psutil.Process:
    """The worker process that has had ``path`` open for ``for_s`` seconds (a probe opens
    it only for a moment; the decode keeps it open)."""
    since: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # an ended driver not yet reaped by the test is a zombie, which psutil calls running
        assert driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE, \
            "the run ended before the video was decoded"
        for child in driver.children(recursive=True):
            try:
                reading = any(f.path == str(path) for f in child.open_files())
            except psutil.Error:
                continue
            if not reading:
                since.pop(child.pid, None)
            elif time.monotonic() - since.setdefault(child.pid, time.monotonic()) >= for_s:
                return child
        time.sleep(0.05)
    raise AssertionError(f"no worker kept {path} open")


def test_a_hung_decode_is_abandoned_after_the_task_timeout(tmp_path: Path):
    """The hang is real: the worker process decoding the long video is stopped with SIGSTOP
    (as a decode blocked on a stalled network file system would be: no Python code of ours
    runs in it any more). The driver must give up on it, restart the worker and finish. The
    timeout leaves room for a worker's first task, which loads the models."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    long_video = _long_audio(corpus / "long.mp4")
    make_video(corpus / "short.mp4", seconds=1.5)
    store = tmp_path / "store"
    process = subprocess.Popen(_command(store, long_video, corpus / "short.mp4",
                                        extra=("--task-timeout", "20", "--workers", "2")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = _worker_reading(psutil.Process(process.pid), long_video, for_s=1.0)
        worker.suspend()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, out + err
    assert "FAILED long vggish: timed out after 20 s" in out, out
    statuses = _statuses(store)
    assert statuses[("short", "vggish")] == "ok"
    assert statuses[("long", "vggish")] == "failed"
    _verified(store)


@pytest.mark.slow  # three worker restarts, each loading torch and the model again
def test_a_video_that_kills_its_worker_is_recorded_as_failed(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    deadly = _long_audio(corpus / "deadly.mp4")
    make_video(corpus / "fine.mp4", seconds=1.5)
    store = tmp_path / "store"
    process = subprocess.Popen(_command(store, deadly, corpus / "fine.mp4"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(process.pid)
    kills = 0
    try:
        while process.poll() is None and kills < 5:
            try:
                _worker_reading(driver, deadly, for_s=1.0).kill()  # as the OOM killer would
                kills += 1
            except AssertionError:
                break  # the run ended: the video was given up
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, out + err
    assert "FAILED deadly vggish: task died: KilledWorker" in out, out
    assert kills == 3  # allowed-failures 2: the third death gives the video up
    assert _statuses(store)[("fine", "vggish")] == "ok"
    _verified(store)


def _chaos_corpus(root: Path) -> dict[str, str]:
    """~30 tiny videos and the bad ones among them: {bad video id: how it is bad}."""
    root.mkdir()
    for k in range(28):
        make_video(root / f"ok{k:02d}.mp4", seconds=1.0, fps=6,
                   source=("testsrc2", "mandelbrot", "smptebars")[k % 3])
    good = (root / "ok00.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    damaged = make_video(root / "damaged.mp4", seconds=4.0)
    noise = root / "noise.bin"
    noise.write_bytes(os.urandom(20_000))
    subprocess.run(["dd", f"if={noise}", f"of={damaged}", "bs=1",
                    f"seek={damaged.stat().st_size // 2 - 10_000}", "conv=notrunc",
                    "status=none"], check=True)
    noise.unlink()
    return {"truncated": "truncated", "empty": "zero bytes", "text": "text named .mp4",
            "damaged": "random bytes in the middle"}


def _contents(store: Path) -> dict[tuple[str, str], tuple[str, str, object]]:
    from vidfeat.storage.reader import FeatureStore

    with FeatureStore(store) as features:
        return {(e.video_id, e.feature): (e.status, e.reason, features.get(e.video_id, e.feature)
                                          if e.status == "ok" else None)
                for e in features.entries()}


def _workers(driver: psutil.Process) -> list[psutil.Process]:
    """The worker processes: spawned ones, and those forked by the driver's forkserver (not
    the forkserver itself, the driver's own child)."""
    workers = []
    for child in driver.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if "spawn_main" in command or ("forkserver" in command
                                           and child.ppid() != driver.pid):
                workers.append(child)
        except psutil.Error:
            continue
    return workers


@pytest.mark.slow
def test_chaos_killed_workers_and_driver_then_a_rerun_equal_a_clean_run(tmp_path: Path):
    import random

    import numpy as np

    corpus = tmp_path / "corpus"
    bad = _chaos_corpus(corpus)
    flags = ("--workers", "2", "--segment-seconds", "2.5")
    clean_store, store = tmp_path / "clean", tmp_path / "chaos"
    clean = _extract(clean_store, corpus, extra=flags, features=VISUAL)
    assert clean.returncode == 1, clean.stdout + clean.stderr
    clean_contents = _contents(clean_store)
    assert {v for (v, _), (status, _, _) in clean_contents.items() if status == "failed"} \
        == set(bad)

    chaos = random.Random(8)
    process = subprocess.Popen(_command(store, corpus, extra=flags, features=VISUAL),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(process.pid)
    started, worker_kills, last_kill = time.monotonic(), 0, 0.0
    while process.poll() is None:
        time.sleep(0.2)  # the whole run takes a few seconds: watch it closely
        workers = _workers(driver)
        shards = list((store / "shards").rglob("*.h5")) if (store / "shards").exists() else []
        if worker_kills and (len(shards) >= 3 or time.monotonic() - started > 90):
            driver.kill()  # once, mid-run: the driver is gone without a word
            break
        # once the run extracts (a worker killed while the cluster starts fails its start,
        # exit 3), a worker every 3 s: a restarted one needs about that to load its model
        if shards and workers and time.monotonic() - last_kill > 3.0:
            with contextlib.suppress(psutil.Error):
                chaos.choice(workers).kill()
                worker_kills += 1
                last_kill = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL and worker_kills >= 1, out + err

    rerun = _extract(store, corpus, extra=flags, features=VISUAL)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    for video in bad:  # every bad video listed once, with its reason
        assert rerun.stdout.count(f"FAILED {video} resnet152: ") == 1, rerun.stdout
    contents = _contents(store)
    assert contents.keys() == clean_contents.keys()
    for key, (status, reason, rows) in clean_contents.items():
        assert contents[key][:2] == (status, reason), key
        if rows is not None:
            assert np.allclose(contents[key][2], rows, atol=1e-2), key
    _verified(store)


def _media_cut_off(path: Path) -> Path:
    """An MP4 whose header (moov, written first) promises six seconds of video but whose media
    data is gone: it probes, yet not one packet can be read (a copy cut short)."""
    whole = make_video(path.with_suffix(".whole.mp4"), seconds=6, audio=False)
    ffmpeg("-i", str(whole), "-c", "copy", "-movflags", "+faststart", str(path))
    whole.unlink()
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"mdat") + 4])
    return path


def test_a_long_video_whose_packets_cannot_be_read_fails_alone(tmp_path: Path):
    """Splitting a long video reads its packet times first; a file with none (cut off after its
    header) once broke the whole run (exit 3). It is decoded unsplit and fails with its
    reason; the other videos run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _media_cut_off(corpus / "cut.mp4")
    make_video(corpus / "fine.mp4", seconds=1.5)
    store = tmp_path / "store"
    result = _extract(store, corpus, features=VISUAL, extra=("--segment-seconds", "1"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED cut resnet152: " in result.stdout and "decode" in result.stdout, result.stdout
    assert _statuses(store) == {("cut", "resnet152"): "failed", ("fine", "resnet152"): "ok"}
    _verified(store)


