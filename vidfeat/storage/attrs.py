"""Attribute values: what a store keeps of a Python value, in HDF5 attributes (schema 1, merged
files' groups) and in JSON (the index, a shard's ``/index``), with one conversion for both.

None stays None, numbers and strings stay as they are, lists of numbers or of strings stay
lists, dicts and mixed lists become JSON strings.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np


def plain_value(value: Any, what: str) -> Any:
    """``value`` as the store keeps it, as a JSON-ready Python value (see the module doc)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=json_default)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value) if len(value) else None
        if array is not None and array.ndim == 1 and array.dtype.kind in "biufU":
            return array.tolist()
        return json.dumps(list(value), default=json_default)
    raise TypeError(f"{what}: cannot store a {type(value).__name__}; "
                    "use a number, string, list or dict")


def plain_attrs(attrs: Mapping[str, Any], owner: str) -> dict[str, Any]:
    return {key: plain_value(value, f"attribute {key!r} of {owner}")
            for key, value in attrs.items()}


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any], owner: str) -> None:
    """Store ``attrs`` on ``obj`` as HDF5 attributes (None as an empty attribute)."""
    for key, value in plain_attrs(attrs, owner).items():
        obj.attrs[key] = _hdf5_value(value)


def _hdf5_value(value: Any) -> Any:
    if value is None:
        return h5py.Empty("f4")
    if isinstance(value, list):
        array = np.asarray(value)
        return array.astype(h5py.string_dtype()) if array.dtype.kind == "U" else array
    return value


def python_value(value: Any) -> Any:
    """An attribute as read by h5py, back as a plain Python value (inverse of the above)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {key: python_value(value) for key, value in obj.attrs.items()}


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
