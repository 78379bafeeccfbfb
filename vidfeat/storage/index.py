"""The store's index: which shard holds the newest copy of each (video, feature).

``DIR/index.sqlite`` is a cache of the shards' metadata (never their data), so it can always be
rebuilt from ``shards/``. SQLite in WAL mode lets many processes read while one writes;
writers serialise through ``BEGIN IMMEDIATE`` transactions. WAL needs shared memory, so the
processes that update the index must run on one host (shards themselves may come from any).

For each (video, feature) the row from the shard with the highest ``written_at`` wins. A
video's attributes are merged key by key, each key from the newest shard that has it, so a
small failure-only shard does not erase the fingerprint an earlier shard recorded.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import h5py

from vidfeat.errors import StoreError
from vidfeat.storage.schema import INDEX_FILE, SHARD_DIR, SHARD_FORMAT, VIDEOS_GROUP
from vidfeat.storage.writer import TEMP_SUFFIX, check_schema_version, python_value, read_attrs

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 120.0

TABLES = """
CREATE TABLE IF NOT EXISTS shards (
    path TEXT PRIMARY KEY, written_at INTEGER NOT NULL, vidfeat_version TEXT
);
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY, shard TEXT NOT NULL, written_at INTEGER NOT NULL,
    fingerprint TEXT, source_path TEXT,
    attrs TEXT NOT NULL,            -- JSON: the merged attributes
    attrs_written_at TEXT NOT NULL  -- JSON: key -> [written_at, shard] of the value kept
);
CREATE TABLE IF NOT EXISTS features (
    video_id TEXT NOT NULL, feature TEXT NOT NULL, shard TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, config_hash TEXT NOT NULL,
    rows INTEGER NOT NULL, dim INTEGER NOT NULL, dtype TEXT NOT NULL,
    random_weights INTEGER NOT NULL, weights_sha256 TEXT NOT NULL,
    written_at INTEGER NOT NULL,
    PRIMARY KEY (video_id, feature)
);
CREATE INDEX IF NOT EXISTS features_by_shard ON features (shard);
"""


@dataclass(frozen=True)
class FeatureEntry:
    """What the index knows about one (video, feature): where it is and what it holds."""

    video_id: str
    feature: str
    shard: str
    status: str
    reason: str
    config_hash: str
    rows: int
    dim: int
    dtype: str
    random_weights: bool
    weights_sha256: str


@dataclass(frozen=True)
class ShardContents:
    """A shard's metadata, as read without touching its data."""

    written_at: int
    vidfeat_version: str
    video_attrs: dict[str, dict[str, Any]]
    entries: list[FeatureEntry]


def read_shard_metadata(h5: h5py.File, relpath: str) -> ShardContents:
    """Attributes and dataset shapes of an open shard (or merged file); no data is read."""
    root = read_attrs(h5)
    check_schema_version(int(root.get("schema_version", 0)), relpath)
    video_attrs: dict[str, dict[str, Any]] = {}
    entries = []
    for video_id, video in h5[VIDEOS_GROUP].items():
        video_attrs[video_id] = read_attrs(video)
        for feature, group in video.items():
            entries.append(_entry(video_id, feature, group, relpath))
    return ShardContents(int(root.get("written_at", 0)), str(root.get("vidfeat_version", "")),
                         video_attrs, entries)


def _entry(video_id: str, feature: str, group: h5py.Group, shard: str) -> FeatureEntry:
    attrs = group.attrs
    data = group.get("data")
    rows, dim = data.shape if data is not None and data.ndim == 2 else (0, 0)
    return FeatureEntry(
        video_id=video_id,
        feature=feature,
        shard=shard,
        status=str(python_value(attrs.get("status", "failed"))),
        reason=str(python_value(attrs.get("reason", ""))),
        config_hash=str(python_value(attrs.get("config_hash", "")) or ""),
        rows=int(rows),
        dim=int(dim),
        dtype=data.dtype.name if data is not None else "",
        random_weights=bool(python_value(attrs.get("random_weights", False))),
        weights_sha256=str(python_value(attrs.get("weights_sha256", "")) or ""),
    )


class StoreIndex:
    """The index of the store at ``directory``; open in any process, also after fork."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / INDEX_FILE
        self._connection: sqlite3.Connection | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])

    def _db(self) -> sqlite3.Connection:
        # a connection inherited through fork must not be used: SQLite's locks are per process
        if self._connection is None or self._pid != os.getpid():
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(TABLES)
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def add_shard(self, relpath: str) -> None:
        """Index the shard at ``relpath`` (relative to the store), keeping newer entries."""
        contents = self._read_shard(relpath)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._forget_replaced_shard(db, relpath, contents.written_at)
            self._insert(db, relpath, contents)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def shard_files(self) -> list[str]:
        """The complete shards on disk (temporary files left by a crash excluded)."""
        return sorted(
            path.relative_to(self.directory).as_posix()
            for path in (self.directory / SHARD_DIR).rglob("*.h5")
            if not path.name.startswith(".") and not path.name.endswith(TEMP_SUFFIX)
        )

    def add_unindexed(self) -> list[str]:
        """Index the shards on disk that the index has not read (written by a run whose driver
        died before indexing them); returns those it indexed. Unreadable ones are left to
        `vidfeat verify`."""
        added = []
        for relpath in sorted(set(self.shard_files()) - set(self.shards())):
            try:
                self.add_shard(relpath)
            except StoreError as error:
                log.warning("%s", error)
                continue
            added.append(relpath)
        return added

    def rebuild(self) -> list[str]:
        """Index every shard again from scratch; returns the shards that could not be read."""
        readable, unreadable = [], []
        for relpath in self.shard_files():
            try:
                readable.append((relpath, self._read_shard(relpath)))
            except StoreError as error:
                log.warning("%s", error)
                unreadable.append(relpath)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("shards", "videos", "features"):
                db.execute(f"DELETE FROM {table}")
            for relpath, contents in readable:
                self._insert(db, relpath, contents)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return unreadable

    def video(self, video_id: str) -> dict[str, Any] | None:
        """``{video_id, shard, fingerprint, source_path, attrs}`` or None if not indexed."""
        row = self._db().execute(
            "SELECT video_id, shard, fingerprint, source_path, attrs FROM videos"
            " WHERE video_id = ?", (video_id,)
        ).fetchone()
        if row is None:
            return None
        video_id, shard, fingerprint, source_path, attrs = row
        return {"video_id": video_id, "shard": shard, "fingerprint": fingerprint,
                "source_path": source_path, "attrs": json.loads(attrs)}

    def videos(self) -> dict[str, dict[str, Any]]:
        """Every indexed video's attributes, by video id."""
        rows = self._db().execute("SELECT video_id, attrs FROM videos").fetchall()
        return {video_id: json.loads(attrs) for video_id, attrs in rows}

    def entries(self) -> list[FeatureEntry]:
        return self._entries("", ())

    def video_features(self, video_id: str) -> dict[str, FeatureEntry]:
        return {e.feature: e for e in self._entries(" WHERE video_id = ?", (video_id,))}

    def shards(self) -> list[str]:
        """The shards the index has read, as paths relative to the store."""
        return [path for (path,) in self._db().execute("SELECT path FROM shards ORDER BY path")]

    def _entries(self, where: str, parameters: tuple[str, ...]) -> list[FeatureEntry]:
        columns = ", ".join(f.name for f in fields(FeatureEntry))
        rows = self._db().execute(
            f"SELECT {columns} FROM features{where} ORDER BY video_id, feature", parameters
        )
        return [FeatureEntry(*row[:-2], bool(row[-2]), row[-1]) for row in rows]

    def _read_shard(self, relpath: str) -> ShardContents:
        try:
            with h5py.File(self.directory / relpath, "r", locking=False) as h5:
                if python_value(h5.attrs.get("format")) != SHARD_FORMAT:
                    raise StoreError(f"{relpath}: not a vidfeat shard")
                return read_shard_metadata(h5, relpath)
        except StoreError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            raise StoreError(f"{relpath}: unreadable shard: {error}") from error

    def _forget_replaced_shard(self, db: sqlite3.Connection, relpath: str,
                               written_at: int) -> None:
        row = db.execute("SELECT written_at FROM shards WHERE path = ?", (relpath,)).fetchone()
        if row is None or row[0] == written_at:
            return
        # rewritten under the same name: its old rows may name videos the new file lacks
        stale = db.execute("DELETE FROM features WHERE shard = ?", (relpath,)).rowcount
        db.execute("DELETE FROM videos WHERE shard = ?", (relpath,))
        log.warning("%s was rewritten: %d old entries dropped; rebuild() restores any that an "
                    "older shard still holds", relpath, stale)

    def _insert(self, db: sqlite3.Connection, relpath: str, contents: ShardContents) -> None:
        written_at = contents.written_at
        db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)",
                   (relpath, written_at, contents.vidfeat_version))
        for video_id, attrs in contents.video_attrs.items():
            self._merge_video(db, video_id, attrs, relpath, written_at)
        db.executemany(
            """INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (video_id, feature) DO UPDATE SET
                 shard = excluded.shard, status = excluded.status, reason = excluded.reason,
                 config_hash = excluded.config_hash, rows = excluded.rows, dim = excluded.dim,
                 dtype = excluded.dtype, random_weights = excluded.random_weights,
                 weights_sha256 = excluded.weights_sha256, written_at = excluded.written_at
               WHERE (excluded.written_at, excluded.shard) > (features.written_at, features.shard)
            """,
            [(*astuple(entry), written_at) for entry in contents.entries],
        )

    def _merge_video(self, db: sqlite3.Connection, video_id: str, attrs: dict[str, Any],
                     relpath: str, written_at: int) -> None:
        row = db.execute(
            "SELECT shard, written_at, attrs, attrs_written_at FROM videos WHERE video_id = ?",
            (video_id,),
        ).fetchone()
        version = [written_at, relpath]
        if row is None:
            shard, newest, merged, versions = relpath, written_at, {}, {}
        else:
            shard, newest = row[0], row[1]
            merged, versions = json.loads(row[2]), json.loads(row[3])
            if (written_at, relpath) > (newest, shard):
                shard, newest = relpath, written_at
        for key, value in attrs.items():
            if key not in versions or version > versions[key]:
                merged[key], versions[key] = value, version
        db.execute(
            "INSERT OR REPLACE INTO videos VALUES (?, ?, ?, ?, ?, ?, ?)",
            (video_id, shard, newest, _text_or_none(merged.get("fingerprint")),
             _text_or_none(merged.get("source_path")),
             json.dumps(merged, default=str), json.dumps(versions)),
        )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
