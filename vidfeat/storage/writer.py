"""Writing shards (packs of videos) into a store (creating and checking the store directory:
``store_dir.py``).

A pack is built in memory, written under a temporary name in its final directory, fsynced, and
renamed into place, so a reader or the index never sees half a shard, and many processes (or
hosts sharing the directory) can write at once. Before that, its path is appended to the
writing process's journal (``DIR/journal/``): a run whose driver died before indexing finds
the shards it wrote there, without walking the store. Building it in memory keeps libhdf5 away
from the disk: a full disk is an OSError from a plain ``write`` (StoreFullError, the temporary
file removed), never a crash inside the library. Data goes into contiguous, uncompressed
datasets (docs/store.md, "Chunking and compression").

A pack's name is random hex, never derived from a video id, so any id the HDF5 group can hold
(255-byte, UTF-8, spaces, newlines) makes a valid file name.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat import __version__
from vidfeat.storage.attrs import plain_attrs
from vidfeat.storage.files import (
    disk_full_as_store_error,
    fsync_directory,
    temporary_name,
    write_durably,
)
from vidfeat.storage.layout import (
    ENTRY_KEYS,
    HDF5_LIBVER,
    contents_from_index,
    shared_attrs,
    write_index,
)
from vidfeat.storage.schema import (
    JOURNAL_DIR,
    SCHEMA_VERSION,
    SHARD_DIR,
    SHARD_FORMAT,
    VIDEOS_GROUP,
    ShardContents,
    Status,
    VideoRecord,
)
from vidfeat.storage.store_dir import require_store

log = logging.getLogger(__name__)

DATA_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def write_shard(
    directory: str | Path,
    shard_name: str | None,
    videos: list[VideoRecord],
    *,
    dtype: str | None = "float16",
) -> ShardContents:
    """Write ``videos`` as one shard; return its index rows (``relpath`` relative to the
    store), for ``StoreIndex.add`` without opening the file again.

    ``shard_name`` None: a new random name (a pack); a name given again replaces that shard.
    ``dtype`` None keeps each array's own (float16 or float32). Features whose values exceed
    float16's range are kept in float32 (with a warning) rather than stored as infinities.
    """
    return write_into(require_store(directory), shard_name, videos, dtype=dtype)


def write_into(directory: Path, shard_name: str | None, videos: list[VideoRecord], *,
               dtype: str | None) -> ShardContents:
    """``write_shard`` without the store's schema check: for ``migrate``, which writes
    current shards into a store whose marker still names the old schema."""
    if dtype is not None and dtype not in DATA_DTYPES:
        raise ValueError(f"dtype must be one of {DATA_DTYPES}, got {dtype!r}")
    if shard_name is None:
        name = uuid.uuid4().hex
        shard_name = f"{name[:2]}/{name}"
    relpath = _shard_relpath(shard_name)
    _check_unique_names(videos)
    written_at = time.time_ns()
    image, payload = _shard_image(videos, None if dtype is None else np.dtype(dtype),
                                  written_at)
    path = directory / relpath
    with disk_full_as_store_error(directory, f"writing {relpath}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        journal(directory, relpath)
        write_durably(temporary_name(path), image, path)
    return contents_from_index(payload, relpath)


def journal(directory: Path, relpath: str) -> None:
    """Append ``relpath`` to this process's journal, before the shard exists: whoever
    recovers after a crash finds either the shard or nothing (and its temporary file)."""
    journal_dir = directory / JOURNAL_DIR
    path = journal_dir / f"{socket.gethostname()}.{os.getpid()}.log"
    try:
        file = open(path, "a", encoding="utf-8")
    except FileNotFoundError:
        journal_dir.mkdir(exist_ok=True)
        fsync_directory(directory)
        file = open(path, "a", encoding="utf-8")
    with file:
        file.write(json.dumps(relpath) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _shard_image(videos: list[VideoRecord], dtype: np.dtype | None, written_at: int
                 ) -> tuple[bytes, dict[str, Any]]:
    """The shard as the bytes of an HDF5 file, built in memory, and its own index."""
    payload = _index_payload(videos, written_at)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=HDF5_LIBVER, locking=False) as h5:
        h5.attrs.update({"format": SHARD_FORMAT, "schema_version": SCHEMA_VERSION,
                         "vidfeat_version": __version__, "written_at": written_at})
        videos_group = h5.create_group(VIDEOS_GROUP)
        rows = iter(payload["entries"])
        for video in videos:
            group = videos_group.create_group(video.video_id)
            for record in video.features:
                row = next(rows)
                if record.status == Status.OK:
                    row["dtype"] = _write_feature(group.create_group(record.feature),
                                                  video.video_id, record.data, record.times,
                                                  record.feature, dtype)
        write_index(h5, payload)
    return buffer.getvalue(), payload


def _index_payload(videos: list[VideoRecord], written_at: int) -> dict[str, Any]:
    """The shard's index rows; attributes every video of a feature shares are kept once."""
    attrs_by_feature: dict[str, list[dict[str, Any]]] = {}
    own: list[dict[str, Any]] = []
    for video in videos:
        for record in video.features:
            attrs = plain_attrs(record.attrs, f"{video.video_id!r}/{record.feature}")
            attrs = {k: v for k, v in attrs.items() if k not in ENTRY_KEYS}
            attrs_by_feature.setdefault(record.feature, []).append(attrs)
            own.append(attrs)
    shared = {feature: shared_attrs(records) for feature, records in attrs_by_feature.items()}
    entries = []
    rows = iter(own)
    for video in videos:
        for record in video.features:
            attrs = next(rows)
            common = shared[record.feature]
            data = record.data
            entries.append({
                "video_id": video.video_id, "feature": record.feature,
                "status": record.status, "reason": record.reason,
                "rows": int(data.shape[0]) if data is not None else 0,
                "dim": int(data.shape[1]) if data is not None else 0, "dtype": "",
                "attrs": {k: v for k, v in attrs.items() if k not in common},
            })
    return {"written_at": written_at, "vidfeat_version": __version__,
            "videos": {video.video_id: plain_attrs(video.attrs, f"video {video.video_id!r}")
                       for video in videos},
            "shared": shared, "entries": entries}


def _write_feature(group: h5py.Group, video_id: str, data: Any, times: Any, feature: str,
                   dtype: np.dtype | None) -> str:
    data = np.asarray(data)
    stored_dtype = data.dtype if dtype is None else dtype
    if stored_dtype.name not in DATA_DTYPES:
        raise ValueError(f"{video_id}/{feature}: data of dtype {stored_dtype} (want "
                         f"{' or '.join(DATA_DTYPES)})")
    if dtype == np.float16 and _largest_finite(data) > FLOAT16_MAX:
        log.warning("%s/%s: values beyond float16's range; stored as float32",
                    video_id, feature)
        stored_dtype = np.dtype(np.float32)
    group.create_dataset("data", data=data.astype(stored_dtype), track_times=False)
    group.create_dataset("times", data=np.asarray(times, dtype=np.float64), track_times=False)
    return stored_dtype.name


def _largest_finite(data: np.ndarray) -> float:
    magnitudes = np.abs(data[np.isfinite(data)])
    return float(magnitudes.max()) if magnitudes.size else 0.0


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
