"""Checking a store: shards, the index's agreement with them, and the data itself.

Every shard is opened and every dataset read in full (NaN/Inf, time order), so verify costs
about one pass over the store; shards are checked in parallel by worker processes, each given
a batch of shards with the index rows that point into them, so memory stays flat however large
the store. ``repair=True`` rebuilds the index from the shards first; what remains afterwards
is damage to the data, which only re-extracting the videos can fix.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.storage.attrs import python_value
from vidfeat.storage.files import TEMP_SUFFIX
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.layout import check_schema_version, read_contents
from vidfeat.storage.schema import (
    INDEX_FILE,
    SHARD_DIR,
    SHARD_FORMAT,
    VIDEOS_GROUP,
    FeatureEntry,
    Status,
)
from vidfeat.storage.store_dir import require_store, require_writable

UNREPAIRABLE = "data damage: re-extract the video; --repair cannot fix this"
#: shards per batch a worker process checks; fewer shards than two batches: no processes
SHARDS_PER_BATCH = 32


@dataclass(frozen=True)
class _Stored:
    """A (video, feature) as its shard holds it."""

    status: str
    data_shape: tuple[int, ...] | None
    data_dtype: str


def verify(directory: str | Path, repair: bool = False, *, processes: int | None = None
           ) -> list[str]:
    """Problems found in the store at ``directory``, one line each; empty when all is well.
    ``processes``: worker processes checking shards (None: one per core)."""
    directory = require_store(directory)
    if repair:
        require_writable(directory, "verify --repair")
    if not repair and not (directory / INDEX_FILE).exists():
        return [f"{INDEX_FILE} is missing: run `vidfeat verify {directory} --repair`"]
    index = StoreIndex(directory, readonly=not repair)
    try:
        if repair:
            index.rebuild()
        problems: list[str] = []
        on_disk = []
        for path in sorted((directory / SHARD_DIR).rglob("*")):
            relpath = path.relative_to(directory).as_posix()
            if path.name.endswith(TEMP_SUFFIX):
                problems.append(f"{relpath}: unfinished write (a writer crashed, or is still "
                                "running); delete it once no writer is running")
            elif path.suffix == ".h5":
                on_disk.append(relpath)
        on_disk.sort()  # as the index orders shards: by path, as text
        indexed = set(index.shards())
        readable: set[str] = set()
        for shard_problems, shard, ok in _check_all(directory, index, on_disk, processes):
            problems += shard_problems
            if ok:
                readable.add(shard)
        lost = {shard: rows for shard, rows in index.rows_per_shard().items()
                if shard not in readable}
        for shard in sorted(indexed | set(lost)):
            if shard not in readable:
                state = "unreadable" if shard in on_disk else "gone from disk"
                rows = lost.get(shard, 0)
                pointing = f"{rows} index rows point at it" if rows else "the index lists it"
                problems.append(f"{shard}: {state}, yet {pointing}: "
                                f"run `vidfeat verify {directory} --repair`")
        problems += [f"{shard}: not in the index (a run stopped before indexing it; the next "
                     f"run indexes it, or run `vidfeat verify {directory} --repair`)"
                     for shard in sorted(readable - indexed)]
        return problems
    finally:
        index.close()


def _check_all(directory: Path, index: StoreIndex, shards: list[str], processes: int | None
               ) -> Iterator[tuple[list[str], str, bool]]:
    """(problems, shard, readable) of every shard, checked in batches by worker processes
    (in this process for a small store), at most two batches per process in flight."""
    batches = _batches(index, shards)
    workers = processes or os.cpu_count() or 1
    if workers == 1 or len(shards) < 2 * SHARDS_PER_BATCH:
        for batch in batches:
            yield from _check_batch(directory, batch)
        return
    # spawn: the caller may hold threads (a CLI with a progress bar, a notebook)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from _bounded_map(pool, directory, batches, 2 * workers)


def _bounded_map(pool: Executor, directory: Path,
                 batches: Iterator[list[tuple[str, list[FeatureEntry]]]], in_flight: int
                 ) -> Iterator[tuple[list[str], str, bool]]:
    pending: list[Future] = [pool.submit(_check_batch_list, directory, batch)
                             for batch in itertools.islice(batches, in_flight)]
    while pending:
        yield from pending.pop(0).result()
        for batch in itertools.islice(batches, 1):
            pending.append(pool.submit(_check_batch_list, directory, batch))


def _batches(index: StoreIndex, shards: list[str]
             ) -> Iterator[list[tuple[str, list[FeatureEntry]]]]:
    """Batches of (shard, its index rows), streamed from the index in shard order."""
    rows = itertools.groupby(index.iter_entries(order="shard, video_id, feature"),
                             key=lambda e: e.shard)
    pending = next(rows, None)
    batch: list[tuple[str, list[FeatureEntry]]] = []
    for shard in shards:  # sorted, as the index's rows are
        while pending is not None and pending[0] < shard:
            pending = next(rows, None)
        entries = list(pending[1]) if pending is not None and pending[0] == shard else []
        batch.append((shard, entries))
        if len(batch) == SHARDS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_batch_list(directory: Path, batch: list[tuple[str, list[FeatureEntry]]]
                      ) -> list[tuple[list[str], str, bool]]:
    return list(_check_batch(directory, batch))


def _check_batch(directory: Path, batch: list[tuple[str, list[FeatureEntry]]]
                 ) -> Iterator[tuple[list[str], str, bool]]:
    for shard, entries in batch:
        problems: list[str] = []
        stored = _check_shard(directory / shard, shard, problems)
        if stored is not None:
            for entry in entries:
                problems += _compare(entry, stored.get((entry.video_id, entry.feature)))
        yield problems, shard, stored is not None


def _compare(entry: FeatureEntry, found: _Stored | None) -> list[str]:
    """How an index row disagrees with what its shard holds."""
    where = f"index row {entry.video_id}/{entry.feature}"
    if found is None:
        return [f"{where}: {entry.shard} has no such entry (deleted? run --repair)"]
    if found.status != entry.status:
        return [f"{where}: status {entry.status!r} in the index, {found.status!r} in the shard"]
    if entry.status != Status.OK or found.data_shape is None:
        return []  # a missing dataset is reported with the shard
    if found.data_shape != (entry.rows, entry.dim) or found.data_dtype != entry.dtype:
        return [f"{where}: the index says [{entry.rows}, {entry.dim}] {entry.dtype}, "
                f"{entry.shard} holds {list(found.data_shape)} {found.data_dtype}"]
    return []


def _check_shard(path: Path, relpath: str,
                 problems: list[str]) -> dict[tuple[str, str], _Stored] | None:
    """What the shard holds per (video, feature), after checking its data against its own
    index; None if it cannot be read."""
    stored: dict[tuple[str, str], _Stored] = {}
    try:
        with h5py.File(path, "r", locking=False) as h5:
            if python_value(h5.attrs.get("format")) != SHARD_FORMAT:
                problems.append(f"{relpath}: not a vidfeat shard (root attribute format)")
                return None
            check_schema_version(int(python_value(h5.attrs.get("schema_version", 0))), relpath)
            listed = {(e.video_id, e.feature): e.status
                      for e in read_contents(h5, relpath).entries}
            videos = h5[VIDEOS_GROUP]
            for (video_id, feature), status in listed.items():
                group = videos.get(f"{video_id}/{feature}")
                where = f"{relpath}: {video_id}/{feature}"
                stored[video_id, feature] = _check_feature(group, status, where, problems)
            for video_id, video in videos.items():
                problems += [f"{relpath}: {video_id}/{feature}: a group its shard's index "
                             f"does not list ({UNREPAIRABLE})"
                             for feature in video if (video_id, feature) not in listed]
    except StoreError as error:
        problems.append(str(error))
        return None
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        problems.append(f"{relpath}: unreadable ({error}); the file is damaged: delete it, "
                        "re-extract its videos, then run --repair")
        return None
    return stored


def _check_feature(group: h5py.Group | None, status: str, where: str,
                   problems: list[str]) -> _Stored:
    data = group.get("data") if group is not None else None
    times = group.get("times") if group is not None else None
    found = _Stored(status, data.shape if data is not None else None,
                    data.dtype.name if data is not None else "")
    if status not in (Status.OK, Status.FAILED, Status.SKIPPED):
        problems.append(f"{where}: unknown status {status!r}")
    if status != Status.OK:
        return found
    if data is None or times is None:
        missing = "data" if data is None else "times"
        problems.append(f"{where}: status ok but no {missing} dataset ({UNREPAIRABLE})")
        return found
    if data.ndim != 2 or times.shape != (data.shape[0], 2):
        problems.append(f"{where}: data {data.shape} and times {times.shape} do not fit "
                        f"[N, D] and [N, 2] ({UNREPAIRABLE})")
        return found
    values, spans = data[()], times[()]
    bad_values = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad_values:
        bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
        problems.append(f"{where}: {bad_values} NaN/Inf values in rows "
                        f"{_first(bad_rows)} ({UNREPAIRABLE})")
    if not np.isfinite(spans).all():
        problems.append(f"{where}: NaN/Inf in times ({UNREPAIRABLE})")
    elif len(spans):
        reversed_rows = np.flatnonzero(spans[:, 0] > spans[:, 1])
        if reversed_rows.size:
            problems.append(f"{where}: start after end in rows {_first(reversed_rows)} "
                            f"({UNREPAIRABLE})")
        backwards = np.flatnonzero(np.diff(spans[:, 0]) < 0) + 1
        if backwards.size:
            problems.append(f"{where}: start times go backwards at rows {_first(backwards)} "
                            f"({UNREPAIRABLE})")
    return found


def _first(rows: np.ndarray, shown: int = 5) -> str:
    listed = ", ".join(str(r) for r in rows[:shown])
    return listed + (f", ... ({len(rows)} in all)" if len(rows) > shown else "")
