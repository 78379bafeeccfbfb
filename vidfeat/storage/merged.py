"""A merged file's index (schema 2): tables in ``/index``, looked up without loading them.

    /index/videos       video_id, attrs (JSON), ok (has a feature with rows)
    /index/entries      one row per (video, feature): FeatureEntry's fields, ``shared`` (a row
                        of /index/shared, -1 for none) and ``attrs`` (JSON: the rest)
    /index/shared       JSON attribute sets that many entries share (model, config, ...)
    /index/video_keys   int64 ``video_key`` of each /index/videos row, ascending
    /index/entry_keys   int64 ``video_key`` of each /index/entries row, ascending

Both tables are sorted by (key, video id[, feature]): opening the file reads the two key
arrays (8 bytes a row), and a video's rows are found by binary search, so memory does not grow
with the file. Schema 1 merged files kept the index as one JSON document in ``/index``
(``JsonMergedIndex``, loaded whole).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.storage.attrs import read_attrs
from vidfeat.storage.schema import INDEX_NODE, VIDEOS_GROUP, FeatureEntry, Status, video_key

TEXT = h5py.string_dtype()
VIDEO_ROW = np.dtype([("video_id", TEXT), ("attrs", TEXT), ("ok", np.uint8)])
ENTRY_ROW = np.dtype([("video_id", TEXT), ("feature", TEXT), ("status", TEXT),
                      ("reason", TEXT), ("config_hash", TEXT), ("rows", np.int64),
                      ("dim", np.int64), ("dtype", TEXT), ("random_weights", np.uint8),
                      ("weights_sha256", TEXT), ("shared", np.int32), ("attrs", TEXT)])
#: rows written to a table at once
TABLE_CHUNK = 65536
#: videos whose entries a MergedIndex keeps (a DataLoader item reads a few features of one)
RECENT_VIDEOS = 64


class TableWriter:
    """Appends rows to one resizable table and its key array, in chunks."""

    def __init__(self, group: h5py.Group, name: str, dtype: np.dtype, keys_name: str) -> None:
        self.table = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                          chunks=(4096,))
        self.keys = group.create_dataset(keys_name, shape=(0,), maxshape=(None,),
                                         dtype=np.int64, chunks=(TABLE_CHUNK,))
        self.dtype = dtype
        self.rows: list[tuple] = []
        self.row_keys: list[int] = []

    def append(self, key: int, row: tuple) -> None:
        self.row_keys.append(key)
        self.rows.append(row)
        if len(self.rows) >= TABLE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        start = self.table.shape[0]
        end = start + len(self.rows)
        self.table.resize((end,))
        self.keys.resize((end,))
        self.table[start:end] = np.array(self.rows, dtype=self.dtype)
        self.keys[start:end] = np.array(self.row_keys, dtype=np.int64)
        self.rows, self.row_keys = [], []


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MergedIndex:
    """Lookups in a schema-2 merged file's index tables (see the module doc)."""

    def __init__(self, h5: h5py.File, where: Path) -> None:
        group = h5[INDEX_NODE]
        self.where = where
        self.videos_table = group["videos"]
        self.entries_table = group["entries"]
        self.video_keys = group["video_keys"][()]
        self.entry_keys = group["entry_keys"][()]
        self.shared = [json.loads(text) for text in group["shared"].asstr()[()]]
        self._recent: OrderedDict[str, dict[str, FeatureEntry]] = OrderedDict()

    def _rows(self, table: h5py.Dataset, keys: np.ndarray, video_id: str) -> np.ndarray:
        key = video_key(video_id)
        start, stop = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
        if start == stop:
            return table[0:0]
        rows = table[start:stop]
        return rows[[_text(v) == video_id for v in rows["video_id"]]]

    def video_entries(self, video_id: str) -> dict[str, FeatureEntry]:
        # get() of a video's features one after the other looks the same video up each time
        cached = self._recent.get(video_id)
        if cached is None:
            rows = self._rows(self.entries_table, self.entry_keys, video_id)
            cached = {entry.feature: entry for entry in map(self._entry, rows)}
            self._recent[video_id] = cached
            if len(self._recent) > RECENT_VIDEOS:
                self._recent.popitem(last=False)
        return cached

    def video_attrs(self, video_id: str) -> dict[str, Any] | None:
        rows = self._rows(self.videos_table, self.video_keys, video_id)
        return json.loads(_text(rows[0]["attrs"])) if len(rows) else None

    def feature_attrs(self, entry: FeatureEntry) -> dict[str, Any]:
        for row in self._rows(self.entries_table, self.entry_keys, entry.video_id):
            if _text(row["feature"]) == entry.feature:
                shared = self.shared[row["shared"]] if row["shared"] >= 0 else {}
                return {**shared, **json.loads(_text(row["attrs"])), "status": entry.status,
                        "reason": entry.reason, "feature": entry.feature}
        raise KeyError(f"{entry.video_id}/{entry.feature}")

    def ok_videos(self) -> list[str]:
        ids: list[str] = []
        columns = self.videos_table.fields(["video_id", "ok"])
        for start in range(0, self.videos_table.shape[0], TABLE_CHUNK):  # a chunk in memory
            rows = columns[start:start + TABLE_CHUNK]
            ids += [_text(v) for v, ok in zip(rows["video_id"], rows["ok"], strict=True) if ok]
        return sorted(ids)

    def iter_entries(self) -> Iterator[FeatureEntry]:
        for start in range(0, self.entries_table.shape[0], TABLE_CHUNK):
            yield from map(self._entry, self.entries_table[start:start + TABLE_CHUNK])

    def _entry(self, row: np.void) -> FeatureEntry:
        return FeatureEntry(_text(row["video_id"]), _text(row["feature"]), "",
                            _text(row["status"]), _text(row["reason"]),
                            _text(row["config_hash"]), int(row["rows"]), int(row["dim"]),
                            _text(row["dtype"]), bool(row["random_weights"]),
                            _text(row["weights_sha256"]))


class JsonMergedIndex:
    """A schema-1 merged file's index: one JSON document, loaded whole."""

    def __init__(self, h5: h5py.File, where: Path) -> None:
        self.h5 = h5
        index = json.loads(h5[INDEX_NODE][()].tobytes())
        self.entries = [entry_from_json(row, where) for row in index["entries"]]
        self.attrs = index["videos"]
        self.by_video: dict[str, dict[str, FeatureEntry]] = {}
        for entry in self.entries:
            self.by_video.setdefault(entry.video_id, {})[entry.feature] = entry

    def video_entries(self, video_id: str) -> dict[str, FeatureEntry]:
        return self.by_video.get(video_id, {})

    def video_attrs(self, video_id: str) -> dict[str, Any] | None:
        return self.attrs.get(video_id)

    def feature_attrs(self, entry: FeatureEntry) -> dict[str, Any]:
        return read_attrs(self.h5[f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}"])

    def ok_videos(self) -> list[str]:
        return sorted(v for v, features in self.by_video.items()
                      if any(e.status == Status.OK for e in features.values()))

    def iter_entries(self) -> Iterator[FeatureEntry]:
        return iter(self.entries)


def entry_from_json(row: dict[str, Any] | list[Any], where: str | Path) -> FeatureEntry:
    """A schema-1 merged file's index row: by field name (unknown names, from a newer vidfeat,
    are ignored; a missing one takes the field's default), or positional as vidfeat 0.1
    wrote it."""
    if isinstance(row, list):
        try:
            return FeatureEntry(*row)
        except TypeError as error:
            raise StoreError(f"{where}: unreadable index row {row!r}: {error}") from None
    known = {f.name: f for f in fields(FeatureEntry)}
    missing = [name for name, f in known.items()
               if name not in row and f.default is MISSING]
    if missing:
        raise StoreError(f"{where}: index rows lack {', '.join(missing)}: written by an "
                         "incompatible vidfeat")
    return FeatureEntry(**{name: value for name, value in row.items() if name in known})
