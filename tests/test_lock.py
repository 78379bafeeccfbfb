"""The store's run lock with real processes: refusal naming the holder, waiting, stale locks
of dead processes and silent hosts taken over, exactly one winner among racing takers."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vidfeat.errors import StoreLockedError
from vidfeat.storage.lock import LOCK_FILE, StoreLock, read_holder
from vidfeat.storage.store_dir import create_store

HOLDER = """
import sys
from vidfeat.storage.lock import StoreLock
lock = StoreLock(sys.argv[1], heartbeat_s=0.2, stale_after_s=5, command="vidfeat extract test")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes our stdin
lock.release()
"""


def _holder(store: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == "locked"
    return process


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return create_store(tmp_path / "store")


def test_a_second_run_is_refused_with_the_holder_named(store: Path):
    process = _holder(store)
    try:
        with pytest.raises(StoreLockedError) as caught:
            StoreLock(store).acquire()
        message = str(caught.value)
        assert message.startswith(f"store {store} is locked by host {socket.gethostname()} "
                                  f"pid {process.pid} since ")
        assert message.endswith("(another vidfeat run?); use --wait-lock to wait")
        holder = read_holder(store)
        assert holder.pid == process.pid and holder.command == "vidfeat extract test"
    finally:
        process.stdin.close()
        process.wait(10)
    assert read_holder(store) is None  # released
    with StoreLock(store):
        assert read_holder(store).pid == os.getpid()
    assert not list(store.glob(".run.lock*"))


@pytest.mark.parametrize("ending", ["finishes", "is killed"])
def test_wait_lock_waits_for_the_holder(store: Path, ending: str):
    process = _holder(store)
    end = process.stdin.close if ending == "finishes" else process.kill
    threading.Timer(1.0, end).start()  # a zombie until reaped: dead all the same
    started = time.monotonic()
    with pytest.raises(StoreLockedError):
        StoreLock(store, wait=0.3).acquire()
    with StoreLock(store, wait=30):
        assert 0.9 < time.monotonic() - started < 10
    process.wait(10)


def test_the_lock_of_a_killed_run_is_taken_over(store: Path, caplog):
    process = _holder(store)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert read_holder(store).pid == process.pid  # left behind
    with StoreLock(store) as lock:
        assert read_holder(store).token == lock.holder.token
    assert "took over the lock of host" in caplog.text


def test_the_holder_refreshes_its_lock(store: Path):
    process = _holder(store)
    try:
        lock_file = store / LOCK_FILE
        os.utime(lock_file, (time.time() - 100, time.time() - 100))
        time.sleep(0.6)
        assert time.time() - lock_file.stat().st_mtime < 1
    finally:
        process.stdin.close()
        process.wait(10)


def _foreign_lock(store: Path, age: float) -> None:
    lock_file = store / LOCK_FILE
    lock_file.write_text(json.dumps({"host": "other-host", "pid": 4242, "started": 0.0,
                                     "token": "theirs", "command": ""}))
    os.utime(lock_file, (time.time() - age, time.time() - age))


def test_another_hosts_lock_is_stale_only_after_its_heartbeat_stops(store: Path):
    _foreign_lock(store, age=10)
    with pytest.raises(StoreLockedError, match="by host other-host pid 4242"):
        StoreLock(store, stale_after_s=60).acquire()
    _foreign_lock(store, age=120)
    with StoreLock(store, stale_after_s=60):
        assert read_holder(store).host == socket.gethostname()


def _race(store: str, start: multiprocessing.Event, wins: multiprocessing.Queue) -> None:
    lock = StoreLock(store)
    start.wait()
    try:
        lock.acquire()
    except StoreLockedError:
        wins.put(0)
        return
    wins.put(1)
    time.sleep(0.5)  # hold while the others try
    lock.release()


@pytest.mark.parametrize("left_by", ["dead process", "silent host"])
def test_of_racing_takers_exactly_one_wins(store: Path, left_by: str):
    context = multiprocessing.get_context("fork")
    for _ in range(3):
        if left_by == "dead process":
            dead = subprocess.Popen(["true"])
            dead.wait()
            (store / LOCK_FILE).write_text(json.dumps({
                "host": socket.gethostname(), "pid": dead.pid, "started": time.time(),
                "token": "dead", "command": ""}))
        else:
            _foreign_lock(store, age=1000)
        start, wins = context.Event(), context.Queue()
        racers = [context.Process(target=_race, args=(str(store), start, wins))
                  for _ in range(6)]
        for racer in racers:
            racer.start()
        start.set()
        results = [wins.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join(30)
        assert sum(results) == 1, results
        assert read_holder(store) is None
