"""The run lock: one extraction run per store at a time, also across hosts on a shared file system.

``DIR/run.lock`` holds the holder's host, pid, start time, command and a random token. It is
created complete and atomically: written under a unique temporary name, then hard-linked to
``run.lock``, which fails if the file exists (link is atomic on local file systems and on NFS,
where O_EXCL was not before NFSv3). The holder touches the file every ``heartbeat_s`` seconds
from a thread. A lock is stale when its holder is on this host and its process is gone, or
when it has not been touched for ``stale_after_s`` seconds (a holder on another host, or a pid
reused by another process). A stale lock is taken over by renaming it to a unique name and
re-reading the token from the renamed file: of several takers at most one renames the stale
file; one that renamed a live lock by mistake (it was replaced between its read and its
rename) puts it back. Then the lock is created as at first, where again only one can succeed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from vidfeat.errors import StoreError, StoreLockedError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
POLL_S = 0.5


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's run lock."""

    host: str
    pid: int
    started: float  # time.time() when it was taken
    token: str
    command: str = ""

    @property
    def since(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))


def read_holder(directory: str | Path) -> LockHolder | None:
    """The current holder of the store's lock, or None when nobody holds it."""
    return _read(Path(directory) / LOCK_FILE)


class StoreLock:
    """The run lock of the store at ``directory``; a context manager.

    ``wait``: seconds to wait for a live holder to finish (0: refuse at once; None: forever).
    StoreLockedError names the holder. While held, ``check()`` raises StoreLockedError if the
    lock was lost (taken over after this process stopped refreshing it for ``stale_after_s``).
    """

    def __init__(self, directory: str | Path, *, wait: float | None = 0.0,
                 heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 command: str | None = None) -> None:
        if heartbeat_s <= 0 or stale_after_s <= heartbeat_s:
            raise ValueError("want 0 < heartbeat_s < stale_after_s")
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.wait = wait
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.command = " ".join(sys.argv) if command is None else command
        self.holder: LockHolder | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> LockHolder:
        """Take the lock, taking over a stale one; wait for a live one as ``wait`` says."""
        if self.holder is not None:
            raise StoreError(f"{self.path}: this StoreLock is already held")
        deadline = None if self.wait is None else time.monotonic() + self.wait
        mine = LockHolder(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex,
                          self.command)
        while True:
            if self._create(mine):
                break
            current = _read(self.path)
            if current is None:
                continue  # released between our attempt and our read: try again
            if self._is_stale(current):
                self._take_over(current)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"store {self.directory} is locked by host {current.host} pid "
                    f"{current.pid} since {current.since} (another vidfeat run?); "
                    "use --wait-lock to wait")
            time.sleep(POLL_S)
        self.holder, self._lost = mine, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="vidfeat-store-lock",
                                        daemon=True)
        self._thread.start()
        return mine

    def release(self) -> None:
        """Give the lock back (only if it is still ours)."""
        if self.holder is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = _read(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder, self._thread = None, None

    def check(self) -> None:
        """StoreLockedError if the lock was lost while held."""
        if self._lost:
            raise StoreLockedError(self._lost)

    def _create(self, mine: LockHolder) -> bool:
        temp = self.directory / f".{LOCK_FILE}.{mine.host}.{mine.pid}.{mine.token}.tmp"
        temp.write_text(json.dumps(asdict(mine)) + "\n")
        try:
            os.link(temp, self.path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        current = _read(self.path)
        return current is not None and current.token == mine.token

    def _is_stale(self, holder: LockHolder) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # gone already: the next attempt creates it
        if age > self.stale_after_s:
            return True
        return holder.host == socket.gethostname() and not _alive(holder.pid)

    def _take_over(self, stale: LockHolder) -> None:
        aside = self.directory / f".{LOCK_FILE}.stale.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker moved it first
        moved = _read(aside)
        if moved is not None and moved.token != stale.token:
            # the stale lock was replaced by a live one between our read and our rename
            os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)
        log.warning("store %s: took over the lock of host %s pid %d (since %s), which is no "
                    "longer running", self.directory, stale.host, stale.pid, stale.since)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = _read(self.path)
            holder = self.holder
            if holder is None or current is None or current.token != holder.token:
                taker = (f"host {current.host} pid {current.pid}" if current is not None
                         else "nobody")
                self._lost = (f"store {self.directory}: this run lost its lock (now held by "
                              f"{taker}); it was not refreshed for {self.stale_after_s:.0f} s")
                log.error("%s", self._lost)
                return
            try:
                os.utime(self.path)
            except OSError as error:  # a full or flaky disk: the next beat tries again
                log.warning("store %s: cannot refresh the run lock: %s", self.directory, error)


def _read(path: Path) -> LockHolder | None:
    try:
        content = json.loads(path.read_text())
        return LockHolder(**content)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        # a lock of unknown form: held by nobody we can name, stale once it is old enough
        try:
            return LockHolder("?", -1, path.stat().st_mtime, "?")
        except OSError:
            return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie has exited; its parent just has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
