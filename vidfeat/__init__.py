"""vidfeat: precomputed deep video features into an HDF5 feature store, on Dask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vidfeat.api import extract

__version__ = "0.1.0"
__all__ = ["__version__", "extract", "open_store"]

if TYPE_CHECKING:
    from vidfeat.storage.reader import FeatureStore


def open_store(path: str) -> FeatureStore:
    """Open a feature store directory, or a merged single-file store (``.h5``), for reading."""
    from vidfeat.storage.reader import open_store as _open_store

    return _open_store(path)

