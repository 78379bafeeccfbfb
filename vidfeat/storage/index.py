"""The store's index: which shard holds the newest copy of each (video, feature).

``DIR/index.sqlite`` is a cache of the shards' metadata (never their data), so it can always be
rebuilt from ``shards/``. SQLite in WAL mode lets many processes read while one writes;
writers serialise through ``BEGIN IMMEDIATE`` transactions. WAL needs shared memory, so the
processes that update the index must run on one host (shards themselves may come from any).

The index grows from the rows each writer returns (``add``: one transaction for a task's
shards, no shard opened again). A run finds shards written but never indexed (its driver was
killed) in the store's journal (``recover``); only ``rebuild`` walks ``shards/``.

For each (video, feature) the row from the shard with the highest ``written_at`` wins. A
video's attributes are merged key by key, each key from the newest shard that has it, so a
small failure-only shard does not erase the fingerprint an earlier shard recorded. A shard
left without a winning row (all its videos extracted again into newer packs) is deleted.

Readers open the index read-only (``readonly=True``), so a store on a read-only mount can be
read: SQLite's ``mode=ro`` where it can keep its shared memory, else ``immutable=1`` when the
last writer left no unmerged write-ahead log, else an index built in memory from the shards.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import h5py

from vidfeat.errors import StoreError, StoreFullError
from vidfeat.storage.attrs import json_default, python_value
from vidfeat.storage.files import TEMP_SUFFIX, disk_full_as_store_error, fsync_path
from vidfeat.storage.layout import read_contents
from vidfeat.storage.schema import (
    INDEX_FILE,
    JOURNAL_DIR,
    SHARD_DIR,
    SHARD_FORMAT,
    FeatureEntry,
    ShardContents,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 120.0
SQLITE_IOERR, SQLITE_FULL = 10, 13
NEARLY_FULL_BYTES = 1 << 20
#: SQLite's default limit on host parameters is 32766; a lookup of many ids goes in chunks
IDS_PER_QUERY = 500

TABLES = """
CREATE TABLE IF NOT EXISTS shards (
    path TEXT PRIMARY KEY, written_at INTEGER NOT NULL, vidfeat_version TEXT
);
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY, shard TEXT NOT NULL, written_at INTEGER NOT NULL,
    fingerprint TEXT, source_path TEXT,
    attrs TEXT NOT NULL,            -- JSON: the merged attributes
    attrs_written_at TEXT NOT NULL  -- JSON: key -> [written_at, shard] of the value kept,
                                    -- '' when every key is from (written_at, shard)
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
ENTRY_COLUMNS = ", ".join(f.name for f in fields(FeatureEntry))
#: an entry's columns as a tuple (dataclasses.astuple deep-copies: 2/3 of indexing's time)
_entry_values = operator.attrgetter(*(f.name for f in fields(FeatureEntry)))


def read_shard(directory: Path, relpath: str) -> ShardContents:
    """A shard's index rows, read from the file; StoreError naming it if it cannot be."""
    try:
        with h5py.File(directory / relpath, "r", locking=False) as h5:
            if python_value(h5.attrs.get("format")) != SHARD_FORMAT:
                raise StoreError(f"{relpath}: not a vidfeat shard")
            return read_contents(h5, relpath)
    except StoreError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        raise StoreError(f"{relpath}: unreadable shard: {error}") from error


def _entry_from_row(row: tuple) -> FeatureEntry:
    return FeatureEntry(*row[:-2], bool(row[-2]), row[-1])


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
                    # a commit no longer waits for an fsync (power loss may undo the last ones;
                    # the journal, fsynced, finds their shards again: see recover)
                    connection.execute("PRAGMA synchronous=NORMAL")
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
        self._insert_readable(connection, [])
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

    def add(self, shards: Iterable[ShardContents]) -> list[str]:
        """Index ``shards`` (their writers' rows) in one transaction, keeping newer entries;
        delete the shards left without a winning row. Returns the shards deleted."""
        shards = list(shards)
        with self._transaction(f"indexing {len(shards)} shards") as db:
            superseded: set[str] = set()
            for contents in shards:
                self._forget_replaced_shard(db, contents)
                superseded |= self._insert(db, contents)
            dead = [shard for shard in sorted(superseded)
                    if db.execute("SELECT 1 FROM features WHERE shard = ? LIMIT 1",
                                  (shard,)).fetchone() is None
                    and db.execute("SELECT 1 FROM videos WHERE shard = ? LIMIT 1",
                                   (shard,)).fetchone() is None]
            db.executemany("DELETE FROM shards WHERE path = ?", [(shard,) for shard in dead])
        for shard in dead:  # after the commit: a crash in between leaves a file rebuild skips
            (self.directory / shard).unlink(missing_ok=True)
        return dead

    def add_shard(self, relpath: str) -> None:
        """Index the shard at ``relpath`` (relative to the store), read from its file."""
        self.add([read_shard(self.directory, relpath)])

    def shard_files(self) -> list[str]:
        """The complete shards on disk (temporary files left by a crash excluded): a walk of
        ``shards/``, for ``rebuild`` and ``verify`` only."""
        return sorted(
            path.relative_to(self.directory).as_posix()
            for path in (self.directory / SHARD_DIR).rglob("*.h5")
            if not path.name.startswith(".") and not path.name.endswith(TEMP_SUFFIX)
        )

    def journalled(self) -> list[str]:
        """The shards the journal lists: those a writer started since the last ``recover``."""
        listed: set[str] = set()
        for path in self._journals():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    listed.add(json.loads(line))
                except ValueError:
                    continue  # the line a writer killed mid-append left
        return sorted(listed)

    def _journals(self) -> list[Path]:
        journal = self.directory / JOURNAL_DIR
        return sorted(journal.glob("*.log")) if journal.is_dir() else []

    def recover(self) -> list[str]:
        """Index the shards the journal lists that the index lacks (written by a run whose
        driver died before indexing them), remove the temporary files of those never
        finished, then empty the journal. Only while no one writes (under the run lock).
        Returns the shards it indexed; unreadable ones are left to `vidfeat verify`."""
        journals = self._journals()
        listed = self.journalled()
        known = self._known_shards(listed)
        found = []
        for relpath in listed:
            if relpath in known:  # renamed into place, so no temporary file is left
                continue
            path = self.directory / relpath
            for temp in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
                temp.unlink(missing_ok=True)
            if not path.is_file():
                continue
            try:
                found.append(read_shard(self.directory, relpath))
            except StoreError as error:
                log.warning("%s", error)
        if found:
            self.add(found)
        if journals:  # what the journal listed is durable in the index before it goes
            self._sync()
        for path in journals:
            path.unlink(missing_ok=True)
        return [contents.relpath for contents in found]

    def _sync(self) -> None:
        """fsync the index and its write-ahead log: commits made with synchronous=NORMAL
        survive a power failure from here on (a checkpoint would wait for every reader)."""
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            fsync_path(path)

    def _known_shards(self, relpaths: list[str]) -> set[str]:
        known: set[str] = set()
        for chunk in _chunks(relpaths):
            known |= {path for (path,) in self._db().execute(
                f"SELECT path FROM shards WHERE path IN ({_marks(chunk)})", chunk)}
        return known

    def rebuild(self) -> list[str]:
        """Index every shard again from scratch (the tables are made anew, so an older
        schema's index takes this one's), one shard at a time (flat memory); returns the
        shards that could not be read."""
        unreadable: list[str] = []
        with self._transaction("rebuilding the index") as db:
            for table in ("shards", "videos", "features"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in TABLES.split(";"):  # executescript would commit first
                if statement.strip():
                    db.execute(statement)
            self._insert_readable(db, unreadable)
        for path in self._journals():
            path.unlink(missing_ok=True)
        return unreadable

    def _insert_readable(self, db: sqlite3.Connection, unreadable: list[str]) -> None:
        """Every shard on disk read and inserted; those that cannot be read are listed."""
        for relpath in self.shard_files():
            try:
                contents = read_shard(self.directory, relpath)
            except StoreError as error:
                log.warning("%s", error)
                unreadable.append(relpath)
                continue
            self._insert(db, contents)

    # ---- queries ------------------------------------------------------------------------
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

    def iter_videos(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(video id, attributes) of every indexed video, in video id order, streamed."""
        for video_id, attrs in self._db().execute(
                "SELECT video_id, attrs FROM videos ORDER BY video_id"):
            yield video_id, json.loads(attrs)

    def ok_videos(self) -> list[str]:
        """Videos with at least one feature that extracted successfully, sorted."""
        return [video_id for (video_id,) in self._db().execute(
            "SELECT DISTINCT video_id FROM features WHERE status = 'ok' ORDER BY video_id")]

    def entries(self) -> list[FeatureEntry]:
        return list(self.iter_entries())

    def iter_entries(self, where: str = "", parameters: tuple[Any, ...] = (),
                     order: str = "video_id, feature") -> Iterator[FeatureEntry]:
        """Index rows, streamed: ``where`` a SQL condition on the features table."""
        rows = self._db().execute(
            f"SELECT {ENTRY_COLUMNS} FROM features"
            f"{' WHERE ' + where if where else ''} ORDER BY {order}", parameters)
        for row in rows:
            yield _entry_from_row(row)

    def video_features(self, video_id: str) -> dict[str, FeatureEntry]:
        return {e.feature: e for e in self.iter_entries("video_id = ?", (video_id,))}

    def rows_per_shard(self) -> dict[str, int]:
        """How many index rows point into each shard."""
        return dict(self._db().execute("SELECT shard, count(*) FROM features GROUP BY shard"))

    def shards(self) -> list[str]:
        """The shards the index has read, as paths relative to the store."""
        return [path for (path,) in self._db().execute("SELECT path FROM shards ORDER BY path")]

    # ---- writing --------------------------------------------------------------------------
    def _forget_replaced_shard(self, db: sqlite3.Connection, contents: ShardContents) -> None:
        """A shard written again under its name replaces its old rows. Only rows for features
        the new file no longer holds are worth a word."""
        relpath = contents.relpath
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

    def _insert(self, db: sqlite3.Connection, contents: ShardContents) -> set[str]:
        """Add one shard's rows; returns the shards whose rows it superseded, and itself
        when none of its rows won (the candidates for deletion)."""
        relpath, written_at = contents.relpath, contents.written_at
        db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)",
                   (relpath, written_at, contents.vidfeat_version))
        self._merge_videos(db, contents)
        keys = [(e.video_id, e.feature) for e in contents.entries]
        before = self._shards_of(db, keys)
        db.executemany(
            f"""INSERT INTO features ({ENTRY_COLUMNS}, written_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (video_id, feature) DO UPDATE SET
                 shard = excluded.shard, status = excluded.status, reason = excluded.reason,
                 config_hash = excluded.config_hash, rows = excluded.rows, dim = excluded.dim,
                 dtype = excluded.dtype, random_weights = excluded.random_weights,
                 weights_sha256 = excluded.weights_sha256, written_at = excluded.written_at
               WHERE (excluded.written_at, excluded.shard) > (features.written_at, features.shard)
            """,
            [(*_entry_values(entry), written_at) for entry in contents.entries],
        )
        return set(before.values()) | {relpath}

    @staticmethod
    def _shards_of(db: sqlite3.Connection, keys: list[tuple[str, str]]) -> dict[tuple, str]:
        found: dict[tuple, str] = {}
        videos = sorted({video_id for video_id, _ in keys})
        wanted = set(keys)
        for chunk in _chunks(videos):
            for video_id, feature, shard in db.execute(
                    f"SELECT video_id, feature, shard FROM features"
                    f" WHERE video_id IN ({_marks(chunk)})", chunk):
                if (video_id, feature) in wanted:
                    found[video_id, feature] = shard
        return found

    @staticmethod
    def _merge_videos(db: sqlite3.Connection, contents: ShardContents) -> None:
        """Each video's attributes merged key by key with what the index holds, newest wins;
        a video new to the index (the common case) is one plain insert."""
        relpath, written_at = contents.relpath, contents.written_at
        version = [written_at, relpath]
        existing: dict[str, tuple] = {}
        ids = list(contents.video_attrs)
        for chunk in _chunks(ids):
            for row in db.execute(
                    "SELECT video_id, shard, written_at, attrs, attrs_written_at FROM videos"
                    f" WHERE video_id IN ({_marks(chunk)})", chunk):
                existing[row[0]] = row[1:]
        rows = []
        for video_id, attrs in contents.video_attrs.items():
            if video_id not in existing:
                merged, versions, shard, newest = attrs, "", relpath, written_at
            else:
                shard, newest, old_attrs, old_versions = existing[video_id]
                merged = json.loads(old_attrs)
                versions = (json.loads(old_versions) if old_versions
                            else {key: [newest, shard] for key in merged})
                for key, value in attrs.items():
                    if key not in versions or version > versions[key]:
                        merged[key], versions[key] = value, version
                if (written_at, relpath) > (newest, shard):
                    shard, newest = relpath, written_at
                uniform = all(v == [newest, shard] for v in versions.values())
                versions = "" if uniform else json.dumps(versions)
            rows.append((video_id, shard, newest, _text_or_none(merged.get("fingerprint")),
                         _text_or_none(merged.get("source_path")),
                         json.dumps(merged, default=json_default), versions))
        db.executemany("INSERT OR REPLACE INTO videos VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), IDS_PER_QUERY):
        yield items[start:start + IDS_PER_QUERY]


def _marks(chunk: list[Any]) -> str:
    return ", ".join("?" * len(chunk))


def _free_bytes(directory: Path) -> int:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return NEARLY_FULL_BYTES
    return stats.f_bavail * stats.f_frsize


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
