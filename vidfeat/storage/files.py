"""Writing files so that no reader ever sees half of one: a temporary name in the same
directory, fsync, rename, fsync of the directory; and a full disk as one StoreFullError."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidfeat.errors import StoreFullError

TEMP_SUFFIX = ".tmp"


@contextmanager
def disk_full_as_store_error(directory: str | Path, doing: str) -> Iterator[None]:
    """Turns ENOSPC/EDQUOT raised in the block into StoreFullError: one line naming the store,
    what was being done and the cause."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"store {directory}: disk full {doing} ({error.strerror}); "
                                 "free space and rerun") from error
        raise


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before its rename (a name no other writer uses)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def replace_atomically(path: str | Path, content: bytes, store: str | Path) -> None:
    """Write ``content`` as ``path`` (temporary file, fsync, rename); StoreFullError when the
    disk of ``store`` is full, and no temporary file left behind."""
    path = Path(path)
    with disk_full_as_store_error(store, f"writing {path.name}"):
        write_durably(temporary_name(path), content, path)


def write_durably(temp: Path, content: bytes, path: Path) -> None:
    """``content`` into ``temp``, fsynced, renamed to ``path``; ``temp`` removed on any error."""
    try:
        with open(temp, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    # makes a rename itself durable; some filesystems refuse to open a directory: not fatal
    fsync_path(directory)


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path; one that cannot be opened (absent) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
