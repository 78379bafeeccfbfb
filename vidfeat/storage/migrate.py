"""Upgrading a store written by an older vidfeat to the current schema.

Each migration takes a store from schema N to N+1 in place and is listed in ``MIGRATIONS``
under N; ``migrate`` applies them in order, rewriting the marker after each step so an
interrupted run resumes where it stopped, then rebuilds the index.

Schema 1 -> 2 repacks the one-video shards into packs: the newest copy of each (video,
feature), as the index rebuilt from the shards names it, goes into packs of
``VIDEOS_PER_PACK`` videos written beside them (newer, holding the same rows); then every
shard the rebuilt index listed is deleted. Interrupted, the next ``migrate`` starts over from
a rebuilt index that holds the old shards and the packs already written: the same rows again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path

from vidfeat.errors import StoreError
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.layout import ENTRY_KEYS, check_schema_version
from vidfeat.storage.reader import FeatureStore
from vidfeat.storage.schema import (
    JOURNAL_DIR,
    SCHEMA_VERSION,
    SHARD_DIR,
    FeatureEntry,
    FeatureRecord,
    Status,
    VideoRecord,
)
from vidfeat.storage.store_dir import read_marker, write_marker
from vidfeat.storage.writer import write_into

VIDEOS_PER_PACK = 64


def migrate(directory: str | Path) -> str:
    """Bring the store at ``directory`` to this vidfeat's schema; say what was done."""
    directory = Path(directory)
    found = read_marker(directory)["schema_version"]
    if found > SCHEMA_VERSION:
        check_schema_version(found, directory)  # raises: created by a newer vidfeat
    if found == SCHEMA_VERSION:
        return f"{directory}: already at schema {SCHEMA_VERSION}"
    for version in range(found, SCHEMA_VERSION):
        if version not in MIGRATIONS:
            raise StoreError(f"{directory}: no migration from schema {version}; "
                             f"re-extract into a new store")
        MIGRATIONS[version](directory)
        write_marker(directory, version + 1)
    index = StoreIndex(directory)
    try:
        index.rebuild()
    finally:
        index.close()
    return f"{directory}: migrated from schema {found} to {SCHEMA_VERSION}"


def _schema_1_to_2(directory: Path) -> None:
    index = StoreIndex(directory)
    try:
        index.rebuild()
        before = index.shards()
    finally:
        index.close()
    with FeatureStore(directory) as store:  # reads schema 1 shards, and packs already written
        pack: list[VideoRecord] = []
        for video in _videos(store):
            pack.append(video)
            if len(pack) == VIDEOS_PER_PACK:
                write_into(directory, None, pack, dtype=None)
                pack = []
        if pack:
            write_into(directory, None, pack, dtype=None)
    for relpath in before:
        (directory / relpath).unlink(missing_ok=True)
    for folder in sorted((directory / SHARD_DIR).rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # the fan-out folders of schema 1's per-video names
    shutil.rmtree(directory / JOURNAL_DIR, ignore_errors=True)


def _videos(store: FeatureStore) -> Iterator[VideoRecord]:
    """Each indexed video with its newest entries, as records to write again."""
    for video_id, entries in groupby(store.iter_entries(), key=lambda e: e.video_id):
        yield VideoRecord(video_id, store.attrs(video_id),
                          [_record(store, entry) for entry in entries])


def _record(store: FeatureStore, entry: FeatureEntry) -> FeatureRecord:
    video_id, feature = entry.video_id, entry.feature
    attrs = {k: v for k, v in store.attrs(video_id, feature).items() if k not in ENTRY_KEYS}
    if entry.status != Status.OK:
        return FeatureRecord(feature, entry.status, entry.reason,  # type: ignore[arg-type]
                             attrs=attrs)
    return FeatureRecord(feature, Status.OK, entry.reason, data=store.get(video_id, feature, None),
                         times=store.times(video_id, feature), attrs=attrs)


MIGRATIONS: dict[int, Callable[[Path], None]] = {1: _schema_1_to_2}
