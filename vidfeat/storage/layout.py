"""A shard's own index (``/index``, schema 2) and reading a shard's metadata without its data.

The index rows of a pack are written into the pack itself as gzip'd JSON: what the writer
returns to the driver is exactly what ``verify --repair`` reads back, in one dataset read per
shard instead of a walk over every group. Attributes that every video of a feature in the pack
shares (model, config, weights, ...) are stored once under ``shared``; each entry keeps only
its own (status, reason, and whatever differs).
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.storage.attrs import json_default, python_value, read_attrs
from vidfeat.storage.schema import (
    INDEX_NODE,
    OLDEST_READABLE_SCHEMA,
    SCHEMA_VERSION,
    VIDEOS_GROUP,
    FeatureEntry,
    ShardContents,
    Status,
)

# libver v108: compact "new style" groups and attributes of any size; HDF5 1.8+ reads them
HDF5_LIBVER = "v108"

#: the attributes every feature record carries beside its own
ENTRY_KEYS = ("status", "reason", "feature")


def check_schema_version(found: int, where: object) -> None:
    """StoreError unless this vidfeat can read schema ``found``; the message says what to do."""
    if found > SCHEMA_VERSION:
        raise StoreError(f"{where}: created by a newer vidfeat (schema {found}); "
                         "upgrade vidfeat")
    if found < OLDEST_READABLE_SCHEMA:
        raise StoreError(f"{where}: schema {found} is older than this vidfeat reads "
                         f"(schema {OLDEST_READABLE_SCHEMA} to {SCHEMA_VERSION}); "
                         f"run `vidfeat migrate {where}`")


def entry(video_id: str, feature: str, shard: str, status: str, reason: str,
          attrs: dict[str, Any], shape: tuple[int, ...] | None, dtype: str) -> FeatureEntry:
    rows, dim = shape if shape is not None and len(shape) == 2 else (0, 0)
    return FeatureEntry(
        video_id=video_id, feature=feature, shard=shard, status=status, reason=reason,
        config_hash=str(attrs.get("config_hash") or ""), rows=int(rows), dim=int(dim),
        dtype=dtype, random_weights=bool(attrs.get("random_weights", False)),
        weights_sha256=str(attrs.get("weights_sha256") or ""),
    )


def shared_attrs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The (key, value) pairs all of ``records`` hold alike."""
    if not records:
        return {}
    common = dict(records[0])
    for attrs in records[1:]:
        common = {key: value for key, value in common.items()
                  if key in attrs and attrs[key] == value}
    return common


def encode_index(payload: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(payload, default=json_default,
                                    separators=(",", ":")).encode(), dtype=np.uint8)


def write_index(h5: h5py.File, payload: dict[str, Any]) -> None:
    data = encode_index(payload)
    h5.create_dataset(INDEX_NODE, data=data, compression="gzip", compression_opts=4,
                      chunks=(max(1, min(len(data), 1 << 20)),), track_times=False)


def read_index(h5: h5py.File) -> dict[str, Any]:
    return json.loads(h5[INDEX_NODE][()].tobytes())


def contents_from_index(payload: dict[str, Any], relpath: str) -> ShardContents:
    shared = payload.get("shared", {})
    entries = [
        entry(row["video_id"], row["feature"], relpath, row["status"], row["reason"],
              {**shared.get(row["feature"], {}), **row.get("attrs", {})},
              (row["rows"], row["dim"]) if row["status"] == Status.OK else None, row["dtype"])
        for row in payload["entries"]
    ]
    return ShardContents(relpath, int(payload["written_at"]), str(payload["vidfeat_version"]),
                         payload["videos"], entries)


def feature_attrs(payload: dict[str, Any], video_id: str, feature: str) -> dict[str, Any]:
    """One feature's attributes from a shard's index: shared, its own, status and reason."""
    for row in payload["entries"]:
        if row["video_id"] == video_id and row["feature"] == feature:
            return {**payload.get("shared", {}).get(feature, {}), **row.get("attrs", {}),
                    "status": row["status"], "reason": row["reason"], "feature": feature}
    raise KeyError(f"{video_id}/{feature}")


def read_contents(h5: h5py.File, relpath: str) -> ShardContents:
    """An open shard's index rows: its ``/index`` (schema 2), or a walk over its groups'
    attributes and dataset shapes (schema 1); no feature data is read."""
    root = read_attrs(h5)
    check_schema_version(int(root.get("schema_version", 0)), relpath)
    if isinstance(h5.get(INDEX_NODE), h5py.Dataset):
        return contents_from_index(read_index(h5), relpath)
    video_attrs: dict[str, dict[str, Any]] = {}
    entries = []
    for video_id, video in h5[VIDEOS_GROUP].items():
        video_attrs[video_id] = read_attrs(video)
        for feature, group in video.items():
            attrs = read_attrs(group)
            data = group.get("data")
            entries.append(entry(
                video_id, feature, relpath, str(python_value(attrs.get("status", Status.FAILED))),
                str(attrs.get("reason", "")), attrs,
                data.shape if data is not None else None,
                data.dtype.name if data is not None else ""))
    return ShardContents(relpath, int(root.get("written_at", 0)),
                         str(root.get("vidfeat_version", "")), video_attrs, entries)
