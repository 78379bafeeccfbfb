"""The store's on-disk layout (schema version 1) and the records written into it.

A store is a directory::

    DIR/vidfeat-store.json      {"schema_version": 1, "format": "vidfeat-store", ...}
    DIR/index.sqlite            video id -> shard, fingerprint, features, config hashes, failures
                                (a cache: `vidfeat verify DIR --repair` rebuilds it from shards)
    DIR/shards/**/NAME.h5       shard files, each written by one writer and renamed into place

Every shard (and a merged single-file export, whose root attribute ``format`` is
"vidfeat-merged") holds the same per-video layout::

    /                                   attrs: format, schema_version, vidfeat_version
    /videos/<video_id>                  attrs: source_path, fingerprint, duration, fps, width,
                                        height, rotation, frame_count, video_codec, start_time,
                                        has_audio, audio_sample_rate, audio_channels, audio_start
    /videos/<video_id>/<feature>        attrs: status ("ok" | "failed" | "skipped"), reason,
                                        model, layer, weights_sha256, random_weights, config
                                        (JSON), config_hash, padded, precision, compiled,
                                        device, vidfeat_version, the sampling options (fps,
                                        frames, clip_len, stride, hop, ...), and for visual
                                        features decoder and decode_device ("cpu" | "cuda")
    /videos/<video_id>/<feature>/data   [N, D] float16 or float32   (status "ok" only)
    /videos/<video_id>/<feature>/times  [N, 2] float64 seconds from the video start
    /index                              merged file only: the index as JSON bytes, so opening
                                        it reads one dataset instead of walking every group
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
STORE_MARKER = "vidfeat-store.json"
STORE_FORMAT = "vidfeat-store"
SHARD_FORMAT = "vidfeat-shard"
MERGED_FORMAT = "vidfeat-merged"
INDEX_FILE = "index.sqlite"
SHARD_DIR = "shards"
VIDEOS_GROUP = "videos"

Status = Literal["ok", "failed", "skipped"]
OutcomeStatus = Literal["ok", "failed", "skipped", "up_to_date"]


@dataclass
class FeatureRecord:
    """One feature of one video: rows and their time spans, or why there are none."""

    feature: str
    status: Status
    reason: str = ""
    data: np.ndarray | None = None  # [N, D]
    times: np.ndarray | None = None  # [N, 2] seconds
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status == "ok":
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


@dataclass(frozen=True)
class Outcome:
    """What happened to one feature of one video in one run: what the progress bar, the run
    report and the failure ledger all read."""

    video_id: str
    feature: str
    status: OutcomeStatus
    reason: str = ""
    rows: int = 0
    #: model seconds: its rows' share of their batches (a split video: its segments summed;
    #: 0 for up_to_date). Decoding serves every feature of a video and is not counted.
    seconds: float = 0.0
    source_path: str = ""
