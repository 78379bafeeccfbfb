"""Upgrading a store written by an older vidfeat to the current schema.

Each migration takes a store from schema N to N+1 in place and is listed in ``MIGRATIONS``
under N; ``migrate`` applies them in order, rewriting the marker after each step so an
interrupted run resumes where it stopped, then rebuilds the index. Schema 1 is the first, so
the table is empty: a future schema 2 adds ``MIGRATIONS[1] = _schema_1_to_2``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vidfeat.errors import StoreError
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.schema import SCHEMA_VERSION
from vidfeat.storage.writer import check_schema_version, read_marker, write_marker

MIGRATIONS: dict[int, Callable[[Path], None]] = {}


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
