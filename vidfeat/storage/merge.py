"""Merging a store into one self-contained HDF5 file.

The merged file has the shards' per-video layout, holding for each (video, feature) the copy
the index names (the newest), plus the index itself as JSON in ``/index`` so that opening the
file does not walk every group. Groups are copied with ``H5Ocopy``: data moves as raw bytes,
without decoding. A virtual-dataset master file (no copy, pointing at the shards) was measured
too and rejected; README.md ("Merge") has the numbers and the reasons.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict
from itertools import groupby
from pathlib import Path

import h5py
import numpy as np

from vidfeat import __version__
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.reader import MERGED_INDEX_DATASET
from vidfeat.storage.schema import MERGED_FORMAT, SCHEMA_VERSION, SHARD_DIR, VIDEOS_GROUP
from vidfeat.storage.writer import (
    HDF5_LIBVER,
    TEMP_SUFFIX,
    require_store,
    set_attrs,
)


def merge(directory: str | Path, out_h5: str | Path) -> Path:
    """Write the store at ``directory`` as the single file ``out_h5`` (atomically)."""
    directory = require_store(directory)
    out_h5 = Path(out_h5)
    if out_h5.resolve().is_relative_to((directory / SHARD_DIR).resolve()):
        raise ValueError(f"{out_h5}: write the merged file outside {directory / SHARD_DIR}")
    index = StoreIndex(directory, readonly=True)
    try:
        entries = index.entries()
        video_attrs = index.videos()
    finally:
        index.close()
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    temp = out_h5.with_name(f".{out_h5.name}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        with h5py.File(temp, "w", libver=HDF5_LIBVER, locking=False) as merged:
            merged.attrs.update({
                "format": MERGED_FORMAT,
                "schema_version": SCHEMA_VERSION,
                "vidfeat_version": __version__,
                "written_at": time.time_ns(),
                "merged_from": str(directory.resolve()),
            })
            videos = merged.create_group(VIDEOS_GROUP)
            for video_id, attrs in sorted(video_attrs.items()):
                set_attrs(videos.create_group(video_id), attrs, f"video {video_id!r}")
            by_shard = sorted(entries, key=lambda e: (e.shard, e.video_id, e.feature))
            for shard, shard_entries in groupby(by_shard, key=lambda e: e.shard):
                with h5py.File(directory / shard, "r", locking=False) as source:
                    for entry in shard_entries:
                        path = f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}"
                        source.copy(source[path], videos[entry.video_id], name=entry.feature)
            index_json = json.dumps({"videos": video_attrs,
                                     "entries": [asdict(e) for e in entries]}, default=str)
            merged.create_dataset(MERGED_INDEX_DATASET,
                                  data=np.frombuffer(index_json.encode(), dtype=np.uint8))
        with open(temp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temp, out_h5)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return out_h5
