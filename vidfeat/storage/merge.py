"""Merging a store into self-contained HDF5 files: one, or ``parts`` of them.

A merged file has the shards' ``/videos/<id>/<feature>/{data,times}`` layout, holding for each
(video, feature) the copy the index names (the newest), and its index as sorted tables
(``merged.py``). Groups are copied with ``H5Ocopy``: data moves as raw bytes, without
decoding, shard after shard, so each shard is opened once. Memory stays flat: the rows of the
index tables go through a scratch SQLite file beside the output, which sorts them by key.
A video's part is ``video_key(id) % parts``: the same video always lands in the same part.

A virtual-dataset master file (no copy, pointing at the shards) was measured too and
rejected: docs/store.md ("Merge") has the numbers and the reasons.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from vidfeat import __version__
from vidfeat.storage.attrs import json_default, read_attrs
from vidfeat.storage.files import fsync_directory, temporary_name
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.layout import ENTRY_KEYS, HDF5_LIBVER, read_index
from vidfeat.storage.merged import ENTRY_ROW, VIDEO_ROW, TableWriter
from vidfeat.storage.schema import (
    INDEX_NODE,
    MERGED_FORMAT,
    SCHEMA_VERSION,
    SHARD_DIR,
    VIDEOS_GROUP,
    FeatureEntry,
    Status,
    video_key,
)
from vidfeat.storage.store_dir import readable_store

SCRATCH = """
CREATE TABLE entries (key INTEGER, part INTEGER, video_id TEXT, feature TEXT, status TEXT,
    reason TEXT, config_hash TEXT, rows INTEGER, dim INTEGER, dtype TEXT,
    random_weights INTEGER, weights_sha256 TEXT, shared INTEGER, attrs TEXT);
CREATE TABLE videos (key INTEGER, part INTEGER, video_id TEXT, attrs TEXT);
"""


def part_paths(out_h5: str | Path, parts: int) -> list[Path]:
    """The files ``merge(..., parts=K)`` writes: OUT itself for one part, else
    ``OUT-00000-of-0000K.h5``..."""
    out_h5 = Path(out_h5)
    if parts == 1:
        return [out_h5]
    return [out_h5.with_name(f"{out_h5.stem}-{k:05d}-of-{parts:05d}{out_h5.suffix or '.h5'}")
            for k in range(parts)]


def merge(directory: str | Path, out_h5: str | Path, *, parts: int = 1) -> Path:
    """Write the store at ``directory`` as the single file ``out_h5``, or as ``parts``
    self-contained files (``part_paths``), each renamed into place when complete. Returns
    ``out_h5`` (one part) or the folder of the parts."""
    directory, _ = readable_store(directory)
    out_h5 = Path(out_h5)
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if out_h5.resolve().is_relative_to((directory / SHARD_DIR).resolve()):
        raise ValueError(f"{out_h5}: write the merged file outside {directory / SHARD_DIR}")
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    finals = part_paths(out_h5, parts)
    temps = [temporary_name(path) for path in finals]
    scratch_path = temporary_name(out_h5.with_suffix(".sqlite"))
    index = StoreIndex(directory, readonly=True)
    try:
        with ExitStack() as stack:
            files = [stack.enter_context(h5py.File(temp, "w", libver=HDF5_LIBVER,
                                                   locking=False)) for temp in temps]
            for merged in files:
                _small_metadata_cache(merged)
            scratch = sqlite3.connect(scratch_path, isolation_level=None)
            stack.callback(scratch.close)
            scratch.executescript(SCRATCH)
            scratch.execute("BEGIN")
            for number, merged in enumerate(files):
                merged.attrs.update({"format": MERGED_FORMAT, "schema_version": SCHEMA_VERSION,
                                     "vidfeat_version": __version__,
                                     "written_at": time.time_ns(),
                                     "merged_from": str(directory.resolve()),
                                     "part": number, "parts": parts})
                merged.create_group(VIDEOS_GROUP)
            shared = _copy_groups(directory, index, files, scratch)
            scratch.executemany(
                "INSERT INTO videos VALUES (?, ?, ?, ?)",
                ((key, key % parts, video_id, json.dumps(attrs, default=json_default))
                 for video_id, attrs in index.iter_videos() for key in [video_key(video_id)]))
            scratch.execute("COMMIT")
            scratch.execute("CREATE INDEX ok_videos ON entries (video_id) WHERE status = 'ok'")
            for number, merged in enumerate(files):
                _write_tables(merged, scratch, number, shared)
        for temp, final in zip(temps, finals, strict=True):
            with open(temp, "rb") as file:
                os.fsync(file.fileno())
            os.replace(temp, final)
        fsync_directory(out_h5.parent)
    finally:
        index.close()
        for temp in temps:
            temp.unlink(missing_ok=True)
        scratch_path.unlink(missing_ok=True)
    return out_h5 if parts == 1 else out_h5.parent


def _small_metadata_cache(h5: h5py.File, limit: int = 4 << 20) -> None:
    """HDF5 lets a file's metadata cache grow to 32 MB; a merge writes one file per part and
    gains nothing from more than a few."""
    config = h5.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = 1 << 20
    config.max_size = limit
    h5.id.set_mdc_config(config)


def _copy_groups(directory: Path, index: StoreIndex, files: list[h5py.File],
                 scratch: sqlite3.Connection) -> list[str]:
    """Copy every ok feature's group, shard by shard, into its part; every entry's row goes
    into the scratch table. Returns the shared attribute sets, as JSON."""
    shared: dict[str, int] = {}
    source: h5py.File | None = None
    payload: tuple[dict, dict] | None = None
    current = None
    rows = []
    parts = len(files)
    try:
        for entry in index.iter_entries(order="shard, video_id, feature"):
            if entry.shard != current:
                if source is not None:
                    source.close()
                current = entry.shard
                source = h5py.File(directory / entry.shard, "r", locking=False)
                node = source.get(INDEX_NODE)
                payload = _own_attrs(read_index(source)) if isinstance(node, h5py.Dataset) \
                    else None
            key = video_key(entry.video_id)
            part = files[key % parts]
            common, own = _attrs(source, payload, entry)
            if common not in shared:
                shared[common] = len(shared)
            if entry.status == Status.OK:
                videos = part[VIDEOS_GROUP]
                group = videos.get(entry.video_id) or videos.create_group(entry.video_id)
                source.copy(source[f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}"], group,
                            name=entry.feature, without_attrs=True)
            rows.append(_scratch_row(key, parts, entry, shared[common], own))
            if len(rows) >= 10000:
                scratch.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * 14)})", rows)
                rows = []
        scratch.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * 14)})", rows)
    finally:
        if source is not None:
            source.close()
    return list(shared)


def _own_attrs(payload: dict) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """A shard index's shared attribute sets by feature and each entry's own, as JSON."""
    shared = {feature: json.dumps(attrs, sort_keys=True, default=json_default)
              for feature, attrs in payload.get("shared", {}).items()}
    own = {(row["video_id"], row["feature"]): json.dumps(row.get("attrs", {}),
                                                         default=json_default)
           for row in payload["entries"]}
    return shared, own


def _attrs(source: h5py.File, payload: tuple[dict, dict] | None, entry: FeatureEntry
           ) -> tuple[str, str]:
    """An entry's attributes as (shared JSON, own JSON): from the shard's index (schema 2),
    or its group's HDF5 attributes (schema 1, all its own)."""
    if payload is None:
        attrs = read_attrs(source[f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}"])
        attrs = {k: v for k, v in attrs.items() if k not in ENTRY_KEYS}
        return "{}", json.dumps(attrs, default=json_default)
    shared, own = payload
    return shared.get(entry.feature, "{}"), own[entry.video_id, entry.feature]


def _scratch_row(key: int, parts: int, entry: FeatureEntry, shared: int, attrs: str) -> tuple:
    return (key, key % parts, entry.video_id, entry.feature, entry.status, entry.reason,
            entry.config_hash, entry.rows, entry.dim, entry.dtype, int(entry.random_weights),
            entry.weights_sha256, shared, attrs)


def _write_tables(merged: h5py.File, scratch: sqlite3.Connection, part: int,
                  shared: list[str]) -> None:
    group = merged.create_group(INDEX_NODE)
    group.create_dataset("shared", data=np.array(shared, dtype=object),
                         dtype=h5py.string_dtype())
    videos = TableWriter(group, "videos", VIDEO_ROW, "video_keys")
    for key, video_id, attrs, ok in scratch.execute(
            "SELECT key, video_id, attrs, EXISTS (SELECT 1 FROM entries e WHERE e.video_id ="
            " v.video_id AND e.status = 'ok') FROM videos v WHERE part = ?"
            " ORDER BY key, video_id", (part,)):
        videos.append(key, (video_id, attrs, ok))
    videos.flush()
    entries = TableWriter(group, "entries", ENTRY_ROW, "entry_keys")
    for row in scratch.execute(
            "SELECT key, video_id, feature, status, reason, config_hash, rows, dim, dtype,"
            " random_weights, weights_sha256, shared, attrs FROM entries WHERE part = ?"
            " ORDER BY key, video_id, feature", (part,)):
        entries.append(row[0], row[1:])
    entries.flush()
