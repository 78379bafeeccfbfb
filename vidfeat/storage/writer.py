"""Creating a store and writing shards into it.

A shard is built in memory, written under a temporary name in its final directory, fsynced, and
renamed into place, so a reader or the index never sees half a shard, and many processes (or
hosts sharing the directory) can write at once: each temporary name is unique, each shard name
belongs to one task. Building it in memory keeps libhdf5 away from the disk: a full disk is an
OSError from a plain ``write`` (StoreFullError, the temporary file removed), never a crash
inside the library. Data goes into contiguous, uncompressed datasets: README.md ("Chunking and
compression") has the measurements behind that choice.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import numbers
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat import __version__
from vidfeat.errors import StoreError, StoreFullError
from vidfeat.storage.schema import (
    MERGED_FORMAT,
    SCHEMA_VERSION,
    SHARD_DIR,
    SHARD_FORMAT,
    STORE_FORMAT,
    STORE_MARKER,
    VIDEOS_GROUP,
    VideoRecord,
)

log = logging.getLogger(__name__)

DATA_DTYPES = ("float16", "float32")
TEMP_SUFFIX = ".tmp"
# libver v108: compact "new style" groups and attributes of any size; HDF5 1.8+ reads them
HDF5_LIBVER = "v108"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def file_not_store(path: Path, needs: str) -> StoreError:
    """The error for a store path that is a file: a merged store (``vidfeat merge``) is one,
    and "Not a directory: 'm.h5/vidfeat-store.json'" would not tell its user why."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            merged = python_value(h5.attrs.get("format")) == MERGED_FORMAT
    except OSError:
        merged = False  # not HDF5: a plain file
    if merged:
        return StoreError(f"{path}: is a merged single-file store (vidfeat merge), not a store "
                          f"directory; {needs} (a merged store is read-only: inspect, export "
                          "and open_store read it)")
    return StoreError(f"{path}: is a file, not a store directory; {needs}")


def read_marker(directory: str | Path) -> dict[str, Any]:
    """The store's marker (``vidfeat-store.json``); StoreError if the directory is no store."""
    if Path(directory).is_file():
        raise file_not_store(Path(directory), "this needs a store directory")
    marker = Path(directory) / STORE_MARKER
    try:
        content = json.loads(marker.read_text())
    except FileNotFoundError:
        raise StoreError(f"{directory}: not a vidfeat store (no {STORE_MARKER})") from None
    except (OSError, ValueError) as error:
        raise StoreError(f"{marker}: unreadable store marker: {error}") from error
    if content.get("format") != STORE_FORMAT or not isinstance(content.get("schema_version"), int):
        raise StoreError(f"{marker}: not a vidfeat store marker")
    return content


def check_schema_version(found: int, where: str | Path) -> None:
    """StoreError unless ``found`` is this vidfeat's schema; the message says what to do."""
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: created by a newer vidfeat (schema {found}); upgrade vidfeat"
        )
    if found < SCHEMA_VERSION:
        raise StoreError(
            f"{where}: schema {found} is older than this vidfeat's schema {SCHEMA_VERSION}; "
            f"run `vidfeat migrate {where}`"
        )


def require_store(directory: str | Path) -> Path:
    """The store directory, after checking that its schema is the one this vidfeat reads."""
    directory = Path(directory)
    check_schema_version(read_marker(directory)["schema_version"], directory)
    return directory


def write_marker(directory: Path, schema_version: int) -> None:
    marker = {
        "format": STORE_FORMAT,
        "schema_version": schema_version,
        "created_by": __version__,
    }
    _replace_atomically(directory / STORE_MARKER, json.dumps(marker, indent=2).encode() + b"\n")


def require_writable(directory: Path, needs: str) -> None:
    """StoreError in one line when the store directory cannot be written (a read-only mount,
    no permission), before anything tries to, rather than the first write's errno."""
    for place in (directory, directory / SHARD_DIR):
        if place.is_dir() and not os.access(place, os.W_OK):
            raise StoreError(f"{directory}: read-only (a read-only mount or no write "
                             f"permission on {place.name}/); {needs} writes to it. Reading "
                             f"it works: inspect, verify, export, open_store")


def create_store(directory: str | Path) -> Path:
    """Create a store at ``directory`` (or accept an existing one of this schema)."""
    directory = Path(directory)
    if directory.is_file():
        raise file_not_store(directory, "give a directory (created if missing) for the store")
    require_writable(directory, "extracting")
    if (directory / STORE_MARKER).exists():
        require_store(directory)
    with disk_full_as_store_error(directory, "creating the store"):
        if not (directory / STORE_MARKER).exists():
            (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            write_marker(directory, SCHEMA_VERSION)
        (directory / SHARD_DIR).mkdir(exist_ok=True)
    return directory


def write_shard(
    directory: str | Path,
    shard_name: str,
    videos: list[VideoRecord],
    *,
    dtype: str = "float16",
) -> str:
    """Write ``videos`` as ``shards/<shard_name>.h5``; return that path relative to the store.

    Writing the same name again replaces the shard (the newer one wins in the index).
    Features whose values exceed float16's range are kept in float32 (with a warning) rather
    than stored as infinities.
    """
    if dtype not in DATA_DTYPES:
        raise ValueError(f"dtype must be one of {DATA_DTYPES}, got {dtype!r}")
    relpath = _shard_relpath(shard_name)
    _check_unique_names(videos)
    directory = require_store(directory)
    image = _shard_image(videos, np.dtype(dtype))
    path = directory / relpath
    with disk_full_as_store_error(directory, f"writing {relpath}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(
            f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        )
        _write_durably(temp, image, path)
    return relpath


def _shard_image(videos: list[VideoRecord], dtype: np.dtype) -> bytes:
    """The shard as the bytes of an HDF5 file, built in memory."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=HDF5_LIBVER, locking=False) as h5:
        h5.attrs.update(
            {
                "format": SHARD_FORMAT,
                "schema_version": SCHEMA_VERSION,
                "vidfeat_version": __version__,
                "written_at": time.time_ns(),
            }
        )
        videos_group = h5.create_group(VIDEOS_GROUP)
        for video in videos:
            _write_video(videos_group, video, dtype)
    return buffer.getvalue()


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


def _write_video(videos_group: h5py.Group, video: VideoRecord, dtype: np.dtype) -> None:
    group = videos_group.create_group(video.video_id)
    set_attrs(group, video.attrs, f"video {video.video_id!r}")
    for record in video.features:
        feature = group.create_group(record.feature)
        set_attrs(feature, record.attrs, f"{video.video_id!r}/{record.feature}")
        feature.attrs.update({"status": record.status, "reason": record.reason,
                              "feature": record.feature})
        if record.status != "ok":
            continue
        data = np.asarray(record.data)
        stored_dtype = dtype
        if dtype == np.float16 and _largest_finite(data) > FLOAT16_MAX:
            log.warning("%s/%s: values beyond float16's range; stored as float32",
                        video.video_id, record.feature)
            stored_dtype = np.dtype(np.float32)
        feature.create_dataset("data", data=data.astype(stored_dtype))
        feature.create_dataset("times", data=np.asarray(record.times, dtype=np.float64))


def _largest_finite(data: np.ndarray) -> float:
    magnitudes = np.abs(data[np.isfinite(data)])
    return float(magnitudes.max()) if magnitudes.size else 0.0


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any], owner: str) -> None:
    """Store ``attrs`` on ``obj``: None becomes an empty attribute (read back as None),
    dicts and mixed lists become JSON strings, numbers and strings stay as they are."""
    for key, value in attrs.items():
        obj.attrs[key] = hdf5_attr_value(value, f"attribute {key!r} of {owner}")


def hdf5_attr_value(value: Any, what: str) -> Any:
    if value is None:
        return h5py.Empty("f4")
    if isinstance(value, (str, bool, np.bool_)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=_json_default)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value) if len(value) else None
        if array is not None and array.ndim == 1 and array.dtype.kind in "biuf":
            return array
        if array is not None and array.ndim == 1 and array.dtype.kind == "U":
            return array.astype(h5py.string_dtype())
        return json.dumps(list(value), default=_json_default)
    raise TypeError(f"{what}: cannot store a {type(value).__name__}; "
                    "use a number, string, list or dict")


def python_value(value: Any) -> Any:
    """An attribute as read by h5py, back as a plain Python value (inverse of the above)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {key: python_value(value) for key, value in obj.attrs.items()}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _shard_relpath(shard_name: str) -> str:
    parts = shard_name.split("/")
    if (
        len(parts) > 2
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
        or "\\" in shard_name
    ):
        raise ValueError(
            f"shard name {shard_name!r}: want NAME or DIR/NAME, without leading dots"
        )
    return f"{SHARD_DIR}/{shard_name}.h5"


def _check_unique_names(videos: list[VideoRecord]) -> None:
    seen: set[str] = set()
    for video in videos:
        if not video.video_id or "/" in video.video_id or video.video_id in (".", ".."):
            raise ValueError(f"video id {video.video_id!r} cannot name an HDF5 group")
        if video.video_id in seen:
            raise ValueError(f"video {video.video_id!r} appears twice in one shard")
        seen.add(video.video_id)
        features = [record.feature for record in video.features]
        if len(set(features)) != len(features):
            raise ValueError(f"video {video.video_id!r} lists a feature twice: {features}")


def _replace_atomically(path: Path, content: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    _write_durably(temp, content, path)


def replace_atomically(path: str | Path, content: bytes, store: str | Path) -> None:
    """Write ``content`` as ``path`` (temporary file, fsync, rename); StoreFullError when the
    disk of ``store`` is full, and no temporary file left behind."""
    path = Path(path)
    with disk_full_as_store_error(store, f"writing {path.name}"):
        _replace_atomically(path, content)


def _write_durably(temp: Path, content: bytes, path: Path) -> None:
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
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable; some filesystems refuse to open a directory: not fatal
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
