"""The store's on-disk layout (schema version 2) and the records written into it.

A store is a directory::

    DIR/vidfeat-store.json      {"schema_version": 2, "format": "vidfeat-store", ...}
    DIR/index.sqlite            video id -> shard, fingerprint, features, config hashes, failures
                                (a cache: `vidfeat verify DIR --repair` rebuilds it from shards)
    DIR/journal/*.log           the shards each writing process started, one path a line, until
                                a run has indexed them (how a run finds what a killed run wrote
                                without walking the store)
    DIR/shards/XX/NAME.h5       packs: the videos of one task, written by one writer and
                                renamed into place; NAME is a random hex name, never a video id

Every shard holds, for its videos (docs/store.md is the full description)::

    /                                   attrs: format "vidfeat-shard", schema_version,
                                        vidfeat_version, written_at (time.time_ns())
    /videos/<video_id>/<feature>/data   [N, D] float16 or float32   (status "ok" only)
    /videos/<video_id>/<feature>/times  [N, 2] float64 seconds from the video start
    /index                              the shard's own index: gzip'd JSON bytes holding each
                                        video's attributes, each (video, feature)'s status,
                                        reason, shape and attributes, and the attributes all
                                        videos of a feature share, stored once ("shared")

Schema 1 shards (one video per file) kept every attribute as an HDF5 attribute of the
video's and the feature's groups, and had no ``/index``; they are still read.

A merged file (root ``format`` "vidfeat-merged") has the same ``/videos`` layout and its index
as tables (see ``merged.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np

SCHEMA_VERSION = 2
#: the oldest schema this vidfeat still reads (writing needs SCHEMA_VERSION: `vidfeat migrate`)
OLDEST_READABLE_SCHEMA = 1
STORE_MARKER = "vidfeat-store.json"
STORE_FORMAT = "vidfeat-store"
SHARD_FORMAT = "vidfeat-shard"
MERGED_FORMAT = "vidfeat-merged"
INDEX_FILE = "index.sqlite"
SHARD_DIR = "shards"
JOURNAL_DIR = "journal"
VIDEOS_GROUP = "videos"
#: a shard's own index (schema 2), and a merged file's index group
INDEX_NODE = "index"

class Status(StrEnum):
    """What became of one feature of one video: in the store (ok, failed, skipped), and in a
    run's outcomes also up_to_date. Equal to its value ("ok" == Status.OK), as stored."""

    OK = "ok"
    FAILED = "failed"  # with a one-line reason; a rerun extracts it again
    SKIPPED = "skipped"  # nothing to extract (no audio stream): not a failure
    UP_TO_DATE = "up_to_date"  # a run's outcome only: the store already held it


class Outcome(NamedTuple):
    """What became of one feature of one video: the one record of it that a worker reports, a
    run report lists, ``FeatureStore.failures()`` returns and ``inspect --failures`` prints (a
    named tuple: ``for video_id, feature, status, reason in store.failures()``)."""

    video_id: str
    feature: str
    status: Status
    reason: str = ""


@dataclass
class FeatureRecord:
    """One feature of one video as a worker writes it: its outcome's status and reason, and
    the rows with their time spans."""

    feature: str
    status: Status
    reason: str = ""
    data: np.ndarray | None = None  # [N, D]
    times: np.ndarray | None = None  # [N, 2] seconds
    attrs: dict[str, Any] = field(default_factory=dict)

    def outcome(self, video_id: str) -> Outcome:
        return Outcome(video_id, self.feature, self.status, self.reason)

    def __post_init__(self) -> None:
        if self.status == Status.OK:
            if self.data is None or self.times is None or self.data.ndim != 2:
                raise ValueError(f"{self.feature}: an ok record needs data [N, D] and times")
            if self.times.shape != (self.data.shape[0], 2):
                raise ValueError(
                    f"{self.feature}: times {self.times.shape} do not match data {self.data.shape}"
                )


@dataclass
class VideoRecord:
    """A video's attributes and the features one task extracted from it."""

    video_id: str
    attrs: dict[str, Any]
    features: list[FeatureRecord]


@dataclass(frozen=True, slots=True)
class FeatureEntry:
    """What the index knows about one (video, feature): its outcome, where its rows are and
    what they hold."""

    video_id: str
    feature: str
    shard: str
    status: Status
    reason: str
    config_hash: str
    rows: int
    dim: int
    dtype: str
    # a field added later needs a default, so merged files written before it still read
    random_weights: bool = False
    weights_sha256: str = ""

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.video_id, self.feature, Status(self.status), self.reason)


@dataclass(frozen=True)
class ShardContents:
    """A shard's index rows: what its writer returns, what the index adds in one transaction,
    and what ``/index`` in the file holds, so that indexing never opens the shard again."""

    relpath: str
    written_at: int
    vidfeat_version: str
    video_attrs: dict[str, dict[str, Any]]
    entries: list[FeatureEntry]


def video_key(video_id: str) -> int:
    """A video id's 64-bit lookup key (signed, as SQLite and numpy's int64 sort it): merged
    files sort their index tables by it, so a lookup is a binary search on one int array."""
    digest = hashlib.blake2b(video_id.encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)
