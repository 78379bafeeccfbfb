"""The store's index: which shard holds the newest copy of each (video, feature).

``DIR/index.sqlite`` is a cache of the shards' metadata (never their data), so it can always be
rebuilt from ``shards/``. SQLite in WAL mode lets many processes read while one writes;
writers serialise through ``BEGIN IMMEDIATE`` transactions. WAL needs shared memory, so the
processes that update the index must run on one host (shards themselves may come from any).

For each (video, feature) the row from the shard with the highest ``written_at`` wins. A
video's attributes are merged key by key, each key from the newest shard that has it, so a
small failure-only shard does not erase the fingerprint an earlier shard recorded.

Readers open the index read-only (``readonly=True``), so a store on a read-only mount can be
read: SQLite's ``mode=ro`` where it can keep its shared memory, else ``immutable=1`` when the
last writer left no unmerged write-ahead log, else an index built in memory from the shards.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import h5py

from vidfeat.errors import StoreError, StoreFullError
from vidfeat.storage.schema import INDEX_FILE, SHARD_DIR, SHARD_FORMAT, VIDEOS_GROUP
from vidfeat.storage.writer import (
    TEMP_SUFFIX,
    check_schema_version,
    disk_full_as_store_error,
    python_value,
    read_attrs,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 120.0
SQLITE_IOERR, SQLITE_FULL = 10, 13
NEARLY_FULL_BYTES = 1 << 20

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
    # a field added later needs a default, so merged files written before it still read
    random_weights: bool = False
    weights_sha256: str = ""


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
    """The index of the store at ``directory``; open in any process, also after fork.
    ``readonly=True`` never writes to the store, so it works on a read-only mount."""

    def __init__(self, directory: str | Path, *, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / INDEX_FILE
        self.readonly = readonly
        self._connection: sqlite3.Connection | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "readonly": self.readonly}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], readonly=state.get("readonly", False))

    def _db(self) -> sqlite3.Connection:
        # a connection inherited through fork must not be used: SQLite's locks are per process
        if self._connection is None or self._pid != os.getpid():
            if self.readonly:
                connection = self._connect_readonly()
            else:
                with self._disk_full("opening the index"):
                    connection = self._connect(str(self.path))
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.executescript(TABLES)
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False, uri=uri)

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"{self.directory}: the index is missing; "
                             f"run `vidfeat verify {self.directory} --repair`")
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        try:
            connection = self._connect(uri + "?mode=ro", uri=True)
            connection.execute("SELECT count(*) FROM shards").fetchone()
            return connection
        except sqlite3.Error:
            pass  # WAL needs its -shm file, which a read-only directory cannot hold
        wal = self.path.with_name(self.path.name + "-wal")
        if not (wal.exists() and wal.stat().st_size > 0):
            return self._connect(uri + "?immutable=1", uri=True)
        # immutable=1 would ignore the write-ahead log the last writer left unmerged
        log.warning("%s: read-only, and the index has changes not merged into it; "
                    "reading the shards instead", self.directory)
        connection = self._connect(":memory:")
        connection.executescript(TABLES)
        self._fill(connection, self._readable_shards()[0])
        return connection

    @contextmanager
    def _disk_full(self, doing: str) -> Iterator[None]:
        """SQLite's "database or disk is full", and ENOSPC, as StoreFullError."""
        with disk_full_as_store_error(self.directory, doing):
            try:
                yield
            except sqlite3.Error as error:
                code = getattr(error, "sqlite_errorcode", None)
                # in WAL mode a full disk often shows as an I/O error writing the log
                if (code == SQLITE_FULL or "database or disk is full" in str(error)
                        or (code is not None and code & 0xFF == SQLITE_IOERR
                            and _free_bytes(self.directory) < NEARLY_FULL_BYTES)):
                    raise StoreFullError(f"store {self.directory}: disk full {doing} "
                                         f"({error}); free space and rerun") from error
                raise

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: all of it is committed, or none of it."""
        if self.readonly:
            raise StoreError(f"{self.directory}: the index was opened read-only")
        db = self._db()
        with self._disk_full(doing):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some errors (a full disk among them); a
                # second ROLLBACK would hide the real error behind "no transaction is active"
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as rollback_error:
                        log.debug("rollback failed too: %s", rollback_error)
                raise

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def add_shard(self, relpath: str) -> None:
        """Index the shard at ``relpath`` (relative to the store), keeping newer entries."""
        contents = self._read_shard(relpath)
        with self._transaction(f"indexing {relpath}") as db:
            self._forget_replaced_shard(db, relpath, contents)
            self._insert(db, relpath, contents)

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
            except StoreFullError:
                raise
            except StoreError as error:
                log.warning("%s", error)
                continue
            added.append(relpath)
        return added

    def rebuild(self) -> list[str]:
        """Index every shard again from scratch; returns the shards that could not be read."""
        readable, unreadable = self._readable_shards()
        with self._transaction("rebuilding the index") as db:
            for table in ("shards", "videos", "features"):
                db.execute(f"DELETE FROM {table}")
            self._fill(db, readable)
        return unreadable

    def _readable_shards(self) -> tuple[list[tuple[str, ShardContents]], list[str]]:
        readable, unreadable = [], []
        for relpath in self.shard_files():
            try:
                readable.append((relpath, self._read_shard(relpath)))
            except StoreError as error:
                log.warning("%s", error)
                unreadable.append(relpath)
        return readable, unreadable

    def _fill(self, db: sqlite3.Connection, shards: list[tuple[str, ShardContents]]) -> None:
        for relpath, contents in shards:
            self._insert(db, relpath, contents)

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
                               contents: ShardContents) -> None:
        """A shard written again under its name (a video extracted again) replaces its old
        rows. Only rows for features the new file no longer holds are worth a word."""
        row = db.execute("SELECT written_at FROM shards WHERE path = ?", (relpath,)).fetchone()
        if row is None or row[0] == contents.written_at:
            return
        old = db.execute("SELECT video_id, feature FROM features WHERE shard = ?",
                         (relpath,)).fetchall()
        db.execute("DELETE FROM features WHERE shard = ?", (relpath,))
        db.execute("DELETE FROM videos WHERE shard = ?", (relpath,))
        kept = {(e.video_id, e.feature) for e in contents.entries}
        gone = sorted(f"{video}/{feature}" for video, feature in old
                      if (video, feature) not in kept)
        if gone:
            log.warning("%s was written again without %s, which it held before: those are no "
                        "longer in the index (`vidfeat verify %s --repair` finds them again if "
                        "an older shard still holds them)", relpath, ", ".join(gone[:5])
                        + (f" and {len(gone) - 5} more" if len(gone) > 5 else ""),
                        self.directory)

    def _insert(self, db: sqlite3.Connection, relpath: str, contents: ShardContents) -> None:
        written_at = contents.written_at
        db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)",
                   (relpath, written_at, contents.vidfeat_version))
        for video_id, attrs in contents.video_attrs.items():
            self._merge_video(db, video_id, attrs, relpath, written_at)
        columns = ", ".join([f.name for f in fields(FeatureEntry)] + ["written_at"])
        db.executemany(
            f"""INSERT INTO features ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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


def _free_bytes(directory: Path) -> int:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return NEARLY_FULL_BYTES
    return stats.f_bavail * stats.f_frsize


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
