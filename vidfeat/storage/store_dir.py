"""The store directory: its marker (``vidfeat-store.json``), creating it, and checking that
this vidfeat can read it or write to it, with one-line errors for what is not a store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py

from vidfeat import __version__
from vidfeat.errors import StoreError
from vidfeat.storage.attrs import python_value
from vidfeat.storage.files import disk_full_as_store_error, replace_atomically
from vidfeat.storage.layout import check_schema_version
from vidfeat.storage.schema import (
    MERGED_FORMAT,
    SCHEMA_VERSION,
    SHARD_DIR,
    STORE_FORMAT,
    STORE_MARKER,
)


def file_not_store(path: Path, needs: str) -> StoreError:
    """The error for a store path that is a file: a merged store (``vidfeat merge``) is one,
    and "Not a directory: 'm.h5/vidfeat-store.json'" would not tell its user why."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            merged = python_value(h5.attrs.get("format")) == MERGED_FORMAT
    except OSError:
        merged = False  # not HDF5: a plain file
    if merged:
        return StoreError(f"{path}: is a merged single-file store (vidfeat merge), not a store "
                          f"directory; {needs} (a merged store is read-only: inspect, export "
                          "and open_store read it)")
    return StoreError(f"{path}: is a file, not a store directory; {needs}")


def read_marker(directory: str | Path) -> dict[str, Any]:
    """The store's marker (``vidfeat-store.json``); StoreError if the directory is no store."""
    if Path(directory).is_file():
        raise file_not_store(Path(directory), "this needs a store directory")
    marker = Path(directory) / STORE_MARKER
    try:
        content = json.loads(marker.read_text())
    except FileNotFoundError:
        raise StoreError(f"{directory}: not a vidfeat store (no {STORE_MARKER})") from None
    except (OSError, ValueError) as error:
        raise StoreError(f"{marker}: unreadable store marker: {error}") from error
    if content.get("format") != STORE_FORMAT or not isinstance(content.get("schema_version"), int):
        raise StoreError(f"{marker}: not a vidfeat store marker")
    return content


def readable_store(directory: str | Path) -> tuple[Path, int]:
    """The store directory and its schema, after checking that this vidfeat reads it."""
    directory = Path(directory)
    version = read_marker(directory)["schema_version"]
    check_schema_version(version, directory)
    return directory, version


def require_store(directory: str | Path) -> Path:
    """The store directory, after checking that its schema is the one this vidfeat writes
    (an older one is read, but written to only after `vidfeat migrate`)."""
    directory, version = readable_store(directory)
    if version < SCHEMA_VERSION:
        raise StoreError(f"{directory}: schema {version} is older than this vidfeat's schema "
                         f"{SCHEMA_VERSION} (it reads it, but writes only the current one); "
                         f"run `vidfeat migrate {directory}`")
    return directory


def write_marker(directory: Path, schema_version: int) -> None:
    marker = {
        "format": STORE_FORMAT,
        "schema_version": schema_version,
        "created_by": __version__,
    }
    replace_atomically(directory / STORE_MARKER, json.dumps(marker, indent=2).encode() + b"\n",
                       directory)


def require_writable(directory: Path, needs: str) -> None:
    """StoreError in one line when the store directory cannot be written (a read-only mount,
    no permission), before anything tries to, rather than the first write's errno."""
    for place in (directory, directory / SHARD_DIR):
        if place.is_dir() and not os.access(place, os.W_OK):
            raise StoreError(f"{directory}: read-only (a read-only mount or no write "
                             f"permission on {place.name}/); {needs} writes to it. Reading "
                             f"it works: inspect, verify, export, open_store")


def check_store_path(directory: str | Path) -> Path:
    """StoreError unless a store can be created or written at ``directory`` (a file, a
    read-only directory, a store of another schema); creates nothing."""
    directory = Path(directory)
    if directory.is_file():
        raise file_not_store(directory, "give a directory (created if missing) for the store")
    require_writable(directory, "extracting")
    if (directory / STORE_MARKER).exists():
        require_store(directory)
    return directory


def create_store(directory: str | Path) -> Path:
    """Create a store at ``directory`` (or accept an existing one of this schema)."""
    directory = check_store_path(directory)
    with disk_full_as_store_error(directory, "creating the store"):
        if not (directory / STORE_MARKER).exists():
            (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            write_marker(directory, SCHEMA_VERSION)
        (directory / SHARD_DIR).mkdir(exist_ok=True)
    return directory
