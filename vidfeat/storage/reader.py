"""Reading features back: ``open_store(path)`` for a store directory or a merged ``.h5`` file.

A FeatureStore's memory does not grow with the store: it answers from the index as it is asked
(the SQLite index of a directory, the sorted tables of a merged file), keeps no copy of it,
opens HDF5 files only when a read needs them, drops handles and connections it inherited
through fork (they must not be shared between processes) and pickles as its path alone, so
DataLoader workers (fork or spawn) reopen everything themselves.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from vidfeat.errors import StoreError
from vidfeat.storage.attrs import python_value, read_attrs
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.layout import check_schema_version, feature_attrs, read_index
from vidfeat.storage.merged import JsonMergedIndex, MergedIndex
from vidfeat.storage.schema import (
    INDEX_FILE,
    INDEX_NODE,
    MERGED_FORMAT,
    VIDEOS_GROUP,
    FeatureEntry,
    Outcome,
    Status,
)
from vidfeat.storage.store_dir import readable_store

ALIGN_METHODS = ("mean", "nearest")
#: each open HDF5 file keeps its own metadata cache (~0.5 MB): random reads over a store
#: of many packs gain nothing from more
MAX_OPEN_FILES = 32
#: shards whose own index (``/index``) is kept parsed, for ``attrs(video, feature)``
CACHED_SHARD_INDEXES = 16


@dataclass
class AlignedFeatures:
    """Several features resampled onto one time grid: ``times[k] = [k*grid, (k+1)*grid]``."""

    times: np.ndarray  # [M, 2] seconds
    features: dict[str, np.ndarray]  # name -> [M, D]

    def concat(self) -> np.ndarray:
        """The features side by side, in the order they were asked for: [M, sum of D]."""
        return np.concatenate(list(self.features.values()), axis=1)


class FeatureStore:
    """Read access to a store directory or a merged file. See ``open_store``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.merged = self.path.is_file()
        if self.merged:
            _check_merged(self.path)
        else:
            readable_store(self.path)
        self._reset_handles()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    def close(self) -> None:
        """Close the files and the index connection this process opened."""
        if self._pid == os.getpid():
            with self._lock:
                for handle in self._handles.values():
                    handle.close()
                if isinstance(self._index, _DirectoryIndex):
                    self._index.close()
        self._reset_handles()

    def videos(self) -> list[str]:
        """Videos with at least one feature that extracted successfully, sorted."""
        return self._lookup().ok_videos()

    def features(self, video_id: str) -> list[str]:
        """The features ``get`` can read for ``video_id``."""
        return sorted(f for f, e in self._video_entries(video_id).items() if e.status == Status.OK)

    def entries(self) -> list[FeatureEntry]:
        """Every (video, feature) the store knows, failures included (all in memory: on a
        large store prefer ``iter_entries``)."""
        return list(self.iter_entries())

    def iter_entries(self) -> Iterator[FeatureEntry]:
        """Every (video, feature) the store knows, failures included, streamed."""
        return self._lookup().iter_entries()

    def failures(self) -> list[Outcome]:
        """Every failed or skipped feature: ``Outcome(video_id, feature, status, reason)`` (a
        named tuple: ``for video_id, feature, status, reason in store.failures()``)."""
        return sorted(e.outcome for e in self.iter_entries() if e.status != Status.OK)

    def get(self, video_id: str, feature: str,
            dtype: npt.DTypeLike | None = np.float32) -> np.ndarray:
        """The feature's rows [N, D], converted to ``dtype`` (None: as stored)."""
        data = self._read(self._ok_entry(video_id, feature), "data")
        return data if dtype is None else _converted(data, np.dtype(dtype))

    def times(self, video_id: str, feature: str) -> np.ndarray:
        """Each row's [start, end] in seconds from the video start: [N, 2] float64."""
        return self._read(self._ok_entry(video_id, feature), "times")

    def attrs(self, video_id: str, feature: str | None = None) -> dict[str, Any]:
        """The video's attributes, or those of one of its features (failed ones too)."""
        entries = self._video_entries(video_id)
        if feature is None:
            return dict(self._lookup().video_attrs(video_id) or {})
        if feature not in entries:
            raise KeyError(f"video {video_id!r} has no feature {feature!r}")
        entry = entries[feature]
        if self.merged:
            return self._lookup().feature_attrs(entry)
        shard = self._file(entry)
        if not isinstance(shard.get(INDEX_NODE), h5py.Dataset):  # a schema 1 shard
            return read_attrs(shard[f"videos/{video_id}/{feature}"])
        payload = self._shard_indexes.get(entry.shard)
        if payload is None:
            payload = self._shard_indexes[entry.shard] = read_index(shard)
            if len(self._shard_indexes) > CACHED_SHARD_INDEXES:
                self._shard_indexes.popitem(last=False)
        return feature_attrs(payload, video_id, feature)

    def aligned(self, video_id: str, features: list[str], grid: float = 1.0,
                how: str = "mean") -> AlignedFeatures:
        """``features`` resampled onto cells ``[k*grid, (k+1)*grid)`` covering the video.

        ``mean``: the mean of the rows whose spans overlap the cell (the row whose centre is
        nearest the cell's centre when none does); ``nearest``: the row whose centre is
        nearest the cell's centre (the earlier row on a tie).
        """
        if not grid > 0:
            raise ValueError(f"grid must be a positive number of seconds, got {grid}")
        if how not in ALIGN_METHODS:
            raise ValueError(f"how must be one of {ALIGN_METHODS}, got {how!r}")
        if not features:
            raise ValueError("aligned() needs at least one feature")
        series = {name: (self.get(video_id, name), self.times(video_id, name))
                  for name in features}
        for name, (data, _) in series.items():
            if not len(data):
                raise ValueError(f"{video_id}/{name} has no rows to align")
        duration = (self._lookup().video_attrs(video_id) or {}).get("duration")
        if not isinstance(duration, (int, float)) or not duration > 0:
            duration = max(float(times[:, 1].max()) for _, times in series.values())
        count = max(1, math.ceil(round(duration / grid, 9)))
        starts = np.arange(count) * grid
        cells = np.stack([starts, starts + grid], axis=1)
        return AlignedFeatures(
            cells, {name: _resample(data, times, cells, how)
                    for name, (data, times) in series.items()}
        )

    def on_rows_of(self, video_id: str, features: list[str]) -> dict[str, np.ndarray]:
        """Each feature on the first feature's rows: the first as stored, each other resampled
        onto the first's [start, end) spans with ``aligned``'s ``mean`` rule (the mean of the
        rows overlapping a span, else the row whose centre is nearest). Float32, [N, D] each
        (S2VT pipelines tile C3D onto frames so)."""
        first, *others = features
        result = {first: self.get(video_id, first)}
        spans = self.times(video_id, first)
        for feature in others:
            data = self.get(video_id, feature)
            if not len(data):
                raise ValueError(f"{video_id}/{feature} has no rows to resample")
            result[feature] = _resample(data, self.times(video_id, feature), spans, "mean")
        return result

    def _lookup(self) -> _DirectoryIndex | MergedIndex | JsonMergedIndex:
        """This process's view of the index, opened on first use."""
        if self._pid != os.getpid():
            self._reset_handles()  # inherited through fork: never touch the parent's
        if self._index is None:
            if self.merged:
                h5 = self._file(None)
                node = h5.get(INDEX_NODE)
                self._index = (MergedIndex(h5, self.path) if isinstance(node, h5py.Group)
                               else JsonMergedIndex(h5, self.path))
            else:
                if not (self.path / INDEX_FILE).exists():
                    raise StoreError(f"{self.path}: the index is missing; "
                                     f"run `vidfeat verify {self.path} --repair`")
                self._index = _DirectoryIndex(StoreIndex(self.path, readonly=True))
        return self._index

    def _video_entries(self, video_id: str) -> dict[str, FeatureEntry]:
        entries = self._lookup().video_entries(video_id)
        if not entries:
            raise KeyError(f"video {video_id!r} is not in {self.path}")
        return entries

    def _ok_entry(self, video_id: str, feature: str) -> FeatureEntry:
        entries = self._video_entries(video_id)
        entry = entries.get(feature)
        if entry is None:
            raise KeyError(f"video {video_id!r} has no feature {feature!r} "
                           f"(it has {sorted(entries)})")
        if entry.status != Status.OK:
            raise KeyError(f"{video_id!r}/{feature} has no data: {entry.status}: {entry.reason}")
        return entry

    def _read(self, entry: FeatureEntry, name: str) -> np.ndarray:
        """One whole dataset. h5py's low-level calls: half the overhead of ``file[path][()]``."""
        path = f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}/{name}"
        try:
            dataset = h5py.h5d.open(self._file(entry).id, path.encode())
        except KeyError:
            raise StoreError(f"{entry.shard}: {path} is missing although the index lists it; "
                             f"run `vidfeat verify {self.path}`") from None
        values = np.empty(dataset.shape, dtype=dataset.dtype)
        if values.size:
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        return values

    def _file(self, entry: FeatureEntry | None) -> h5py.File:
        """The open file holding ``entry`` (the merged file itself for a merged store)."""
        if self._pid != os.getpid():
            self._reset_handles()  # inherited through fork: never touch the parent's handles
        key = "" if self.merged or entry is None else entry.shard
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
            path = self.path if key == "" else self.path / key
            try:
                handle = h5py.File(path, "r", locking=False)
            except OSError as error:
                raise StoreError(f"{path}: cannot open ({error}); "
                                 f"run `vidfeat verify {self.path}`") from error
            self._handles[key] = handle
            if len(self._handles) > MAX_OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
            return handle

    def _reset_handles(self) -> None:
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._shard_indexes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._index: _DirectoryIndex | MergedIndex | JsonMergedIndex | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()


class _DirectoryIndex:
    """A store directory's SQLite index, asked one question at a time (one connection per
    process, shared by its threads under a lock)."""

    def __init__(self, index: StoreIndex) -> None:
        self.index = index
        self.lock = threading.Lock()

    def close(self) -> None:
        self.index.close()

    def ok_videos(self) -> list[str]:
        with self.lock:
            return self.index.ok_videos()

    def video_entries(self, video_id: str) -> dict[str, FeatureEntry]:
        with self.lock:
            return self.index.video_features(video_id)

    def video_attrs(self, video_id: str) -> dict[str, Any] | None:
        with self.lock:
            known = self.index.video(video_id)
        return None if known is None else known["attrs"]

    def iter_entries(self) -> Iterator[FeatureEntry]:
        entries = self.index.iter_entries()
        while True:
            with self.lock:  # not held while the caller works on a chunk (and reads rows)
                chunk = list(itertools.islice(entries, 4096))
            if not chunk:
                return
            yield from chunk


def open_store(path: str | Path) -> FeatureStore:
    """Open a store directory, or a merged single-file store (``.h5``), for reading."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such store or merged file")
    return FeatureStore(path)


@contextmanager
def using_store(store_or_path: FeatureStore | str | Path) -> Iterator[FeatureStore]:
    """The given store as is, or the store at a path, opened for the block and closed after."""
    if isinstance(store_or_path, FeatureStore):
        yield store_or_path
        return
    with open_store(store_or_path) as store:
        yield store


def _check_merged(path: Path) -> None:
    try:
        with h5py.File(path, "r", locking=False) as h5:
            root = {key: python_value(value) for key, value in h5.attrs.items()}
    except OSError as error:
        raise StoreError(f"{path}: not a readable HDF5 file: {error}") from error
    if root.get("format") != MERGED_FORMAT:
        raise StoreError(f"{path}: not a merged vidfeat store (format {root.get('format')!r})")
    check_schema_version(int(root.get("schema_version", 0)), path)


def _converted(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if data.dtype == np.float16 and dtype == np.float32:
        return _float16_to_float32(data)
    return data.astype(dtype, copy=False)


def _float16_to_float32(data: np.ndarray) -> np.ndarray:
    """Exact, and about 4x faster than numpy's own cast, which widens one element at a time.

    float16's exponent and mantissa, moved to float32's bit positions, read as a float32 that
    is 2**112 (the difference of the exponent biases) too small; the multiply also normalises
    float16's subnormals. Infinities and NaNs (exponent all ones) are set apart.
    """
    half = data.view(np.uint16).astype(np.uint32)
    magnitude = ((half & 0x7FFF) << 13).view(np.float32) * np.float32(2.0**112)
    special = (half & 0x7C00) == 0x7C00
    magnitude[special] = np.where((half[special] & 0x3FF) == 0, np.inf, np.nan)
    return (magnitude.view(np.uint32) | ((half & 0x8000) << 16)).view(np.float32)


def _resample(data: np.ndarray, times: np.ndarray, cells: np.ndarray, how: str) -> np.ndarray:
    starts, ends = times[:, 0], times[:, 1]
    centres = times.mean(axis=1)
    resampled = np.empty((len(cells), data.shape[1]), dtype=np.float32)
    for k, (cell_start, cell_end) in enumerate(cells):
        if how == "mean":
            # half-open spans; a zero-length row belongs to the cell its instant falls in
            overlaps = (starts < cell_end) & (
                (ends > cell_start) | ((ends == starts) & (starts >= cell_start))
            )
            rows = np.flatnonzero(overlaps)
            if rows.size:
                resampled[k] = data[rows].mean(axis=0, dtype=np.float64)
                continue
        resampled[k] = data[np.argmin(np.abs(centres - (cell_start + cell_end) / 2))]
    return resampled
