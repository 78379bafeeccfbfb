"""Checking a store: shards, the index's agreement with them, and the data itself.

Every shard is opened and every dataset read in full (NaN/Inf, time order), so verify costs
about one pass over the store. ``repair=True`` rebuilds the index from the shards first; what
remains afterwards is damage to the data, which only re-extracting the videos can fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.storage.index import FeatureEntry, StoreIndex
from vidfeat.storage.schema import INDEX_FILE, SHARD_DIR, SHARD_FORMAT, VIDEOS_GROUP
from vidfeat.storage.writer import (
    TEMP_SUFFIX,
    check_schema_version,
    python_value,
    require_store,
    require_writable,
)

UNREPAIRABLE = "data damage: re-extract the video; --repair cannot fix this"


@dataclass(frozen=True)
class _Stored:
    """A feature group as found in a shard."""

    status: str
    data_shape: tuple[int, ...] | None
    data_dtype: str


def verify(directory: str | Path, repair: bool = False) -> list[str]:
    """Problems found in the store at ``directory``, one line each; empty when all is well."""
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
        stored: dict[str, dict[tuple[str, str], _Stored] | None] = {}
        for path in sorted((directory / SHARD_DIR).rglob("*")):
            relpath = path.relative_to(directory).as_posix()
            if path.name.endswith(TEMP_SUFFIX):
                problems.append(f"{relpath}: unfinished write (a writer crashed, or is still "
                                "running); delete it once no writer is running")
            elif path.suffix == ".h5":
                stored[relpath] = _check_shard(path, relpath, problems)
        rows_of_lost_shards: Counter[str] = Counter()
        for entry in index.entries():
            groups = stored.get(entry.shard)
            if groups is None:
                rows_of_lost_shards[entry.shard] += 1
            else:
                problems += _compare(entry, groups.get((entry.video_id, entry.feature)))
        for shard in sorted(set(index.shards()) | set(rows_of_lost_shards)):
            if stored.get(shard) is None:
                state = "gone from disk" if shard not in stored else "unreadable"
                rows = rows_of_lost_shards[shard]
                pointing = f"{rows} index rows point at it" if rows else "the index lists it"
                problems.append(f"{shard}: {state}, yet {pointing}: "
                                f"run `vidfeat verify {directory} --repair`")
        problems += [f"{shard}: not in the index (a run stopped before indexing it; the next "
                     f"run indexes it, or run `vidfeat verify {directory} --repair`)"
                     for shard in sorted(set(stored) - set(index.shards()))
                     if stored[shard] is not None]
        return problems
    finally:
        index.close()


def _compare(entry: FeatureEntry, found: _Stored | None) -> list[str]:
    """How an index row disagrees with the group it points at."""
    where = f"index row {entry.video_id}/{entry.feature}"
    if found is None:
        return [f"{where}: {entry.shard} has no such group (deleted? run --repair)"]
    if found.status != entry.status:
        return [f"{where}: status {entry.status!r} in the index, {found.status!r} in the shard"]
    if entry.status != "ok" or found.data_shape is None:
        return []  # a missing dataset is reported with the shard
    if found.data_shape != (entry.rows, entry.dim) or found.data_dtype != entry.dtype:
        return [f"{where}: the index says [{entry.rows}, {entry.dim}] {entry.dtype}, "
                f"{entry.shard} holds {list(found.data_shape)} {found.data_dtype}"]
    return []


def _check_shard(path: Path, relpath: str,
                 problems: list[str]) -> dict[tuple[str, str], _Stored] | None:
    """The shard's feature groups, after checking their data; None if it cannot be read."""
    stored: dict[tuple[str, str], _Stored] = {}
    try:
        with h5py.File(path, "r", locking=False) as h5:
            if python_value(h5.attrs.get("format")) != SHARD_FORMAT:
                problems.append(f"{relpath}: not a vidfeat shard (root attribute format)")
                return None
            check_schema_version(int(python_value(h5.attrs.get("schema_version", 0))), relpath)
            for video_id, video in h5[VIDEOS_GROUP].items():
                for feature, group in video.items():
                    where = f"{relpath}: {video_id}/{feature}"
                    stored[video_id, feature] = _check_feature(group, where, problems)
    except StoreError as error:
        problems.append(str(error))
        return None
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        problems.append(f"{relpath}: unreadable ({error}); the file is damaged: delete it, "
                        "re-extract its videos, then run --repair")
        return None
    return stored


def _check_feature(group: h5py.Group, where: str, problems: list[str]) -> _Stored:
    status = str(python_value(group.attrs.get("status", "")))
    data, times = group.get("data"), group.get("times")
    found = _Stored(status, data.shape if data is not None else None,
                    data.dtype.name if data is not None else "")
    if status not in ("ok", "failed", "skipped"):
        problems.append(f"{where}: unknown status {status!r}")
    if status != "ok":
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
