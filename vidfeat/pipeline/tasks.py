"""What runs on a worker: the per-process extractor pool and the per-video tasks.

A task decodes its video once, feeds every frame to the samplers of all visual extractors
(or the waveform to the audio extractors), batches the model inputs, writes one shard with
the rows and returns a small report. A failure of one video, or of one extractor on one video,
is recorded in the shard with its reason; it never aborts the other features or videos.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vidfeat import __version__
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.extractors._api import Extractor, Item, get_extractor
from vidfeat.extractors.weights import (
    check_keys,
    load_weights,
    locate,
    read_state_dict,
    sha256_file,
    spec,
    verify,
)
from vidfeat.media import MediaInfo, iter_frames, load_audio, probe
from vidfeat.pipeline.corpus import VideoSource, fingerprint
from vidfeat.storage.schema import FeatureRecord, VideoRecord
from vidfeat.storage.writer import write_shard

TaskKind = Literal["visual", "audio"]


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build and load one extractor (picklable)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None  # a user's file; None: the registry's verified file
    random_weights: bool = False
    weights_dir: str | None = None

    def build(self) -> Extractor:
        try:
            return get_extractor(self.name)(**self.options)
        except TypeError as error:
            raise ConfigError(f"{self.name}: bad option: {error}") from error

    def weights_sha256(self, extractor: Extractor) -> str:
        """The sha256 the loaded weights will have, computed without loading them."""
        if self.random_weights:
            return "random"
        if self.weights_file:
            path = Path(self.weights_file)
            if not path.is_file():
                raise ConfigError(f"{path}: no such weights file for {self.name}")
            return sha256_file(path)
        weights_dir = Path(self.weights_dir) if self.weights_dir else None
        path = locate(extractor.weights_name, weights_dir)
        return verify(spec(extractor.weights_name), path)

    def describe(self) -> Extractor:
        """An unloaded extractor whose ``config_hash()`` is the one the loaded one will have.
        A user's weights file is checked for the right keys here, before any worker starts."""
        extractor = self.build()
        extractor.weights_sha256 = self.weights_sha256(extractor)
        if self.weights_file:
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = extractor.build_model()
            check_keys(read_state_dict(Path(self.weights_file), mmap=True), model, self.name,
                       self.weights_file)
        return extractor

    def load(self, device: torch.device) -> Extractor:
        extractor = self.build()
        weights = load_weights(
            self.name, extractor.weights_name,
            file=Path(self.weights_file) if self.weights_file else None,
            weights_dir=Path(self.weights_dir) if self.weights_dir else None,
            random=self.random_weights,
        )
        extractor.load(weights, device)
        return extractor


def resolve_device(requested: str) -> torch.device:
    """``auto`` is CUDA when this process sees a GPU; ``cuda`` without one is an error, never a
    silent fall back to the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: no CUDA device visible on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")
    return torch.device(requested)


class ExtractorPool:
    """The extractors of one run in one worker process, each loaded on first use."""

    def __init__(self, specs: dict[str, ExtractorSpec], device: str = "auto",
                 torch_threads: int | None = None) -> None:
        self.specs = specs
        self.requested_device = device
        self.torch_threads = torch_threads
        self._loaded: dict[str, Extractor] = {}

    def get(self, name: str) -> Extractor:
        if name not in self._loaded:
            if self.torch_threads and not self._loaded:
                torch.set_num_threads(self.torch_threads)
            self._loaded[name] = self.specs[name].load(resolve_device(self.requested_device))
        return self._loaded[name]


@dataclass(frozen=True)
class VideoTask:
    video: VideoSource
    kind: TaskKind
    features: tuple[str, ...]
    store: str
    shard_name: str
    dtype: str = "float16"
    batch_size: int = 16


@dataclass
class TaskReport:
    """What a task returns to the driver: metadata only, never the rows."""

    video_id: str
    kind: TaskKind
    shard: str
    status: dict[str, tuple[str, str, int]]  # feature -> (status, reason, rows)
    frames: int = 0
    seconds: float = 0.0


class _Rows:
    """Batches an extractor's items and keeps the embedded rows with their spans."""

    def __init__(self, extractor: Extractor, batch_size: int) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self.pending: list[Item] = []
        self.rows: list[np.ndarray] = []
        self.spans: list[tuple[float, float]] = []

    def add(self, items: list[Item], final: bool = False) -> None:
        self.pending.extend(items)
        while len(self.pending) >= self.batch_size or (final and self.pending):
            batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
            self.rows.append(self.extractor.embed(torch.stack([item.tensor for item in batch])))
            self.spans.extend((item.start, item.end) for item in batch)

    def record(self, padded: bool) -> FeatureRecord:
        extractor = self.extractor
        data = (np.concatenate(self.rows) if self.rows
                else np.zeros((0, extractor.feature_dim), np.float32))
        times = np.asarray(self.spans, dtype=np.float64).reshape(-1, 2)
        if not len(data):
            return _failed(extractor, "no rows: the video is too short for this extractor")
        return FeatureRecord(extractor.name, "ok", data=data, times=times,
                             attrs=_feature_attrs(extractor, padded))


def _feature_attrs(extractor: Extractor, padded: bool = False) -> dict[str, Any]:
    options = extractor.options()
    attrs = {key: value for key, value in options.items()
             if isinstance(value, (int, float, str, bool))}
    attrs.update(
        model=extractor.name,
        layer=str(options.get("layer", "")),
        weights_sha256=extractor.weights_sha256,
        random_weights=extractor.weights_sha256 == "random",
        config=extractor.config(),
        config_hash=extractor.config_hash(),
        padded=padded,
        device=str(extractor.device),
        vidfeat_version=__version__,
    )
    return attrs


def _failed(extractor: Extractor, reason: str, status: str = "failed") -> FeatureRecord:
    return FeatureRecord(extractor.name, status, reason=reason, attrs=_feature_attrs(extractor))


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(error, VidfeatError) else f"{type(error).__name__}: {first}"


def _visual(info: MediaInfo, extractors: list[Extractor], batch_size: int
            ) -> tuple[list[FeatureRecord], int]:
    samplers = {e.name: e.sampler(info) for e in extractors}
    rows = {e.name: _Rows(e, batch_size) for e in extractors}
    failed: dict[str, FeatureRecord] = {}
    frames, end = 0, 0.0
    try:
        for frame in iter_frames(info):
            frames, end = frames + 1, frame.end
            for name, sampler in samplers.items():
                if name in failed:
                    continue
                try:
                    rows[name].add(sampler.push(frame))
                except Exception as error:  # one extractor failing must not stop the others
                    failed[name] = _failed(rows[name].extractor, _reason(error))
    except VidfeatError as error:
        return [_failed(e, _reason(error)) for e in extractors], frames
    records = []
    for extractor in extractors:
        name = extractor.name
        if name not in failed:
            try:
                rows[name].add(samplers[name].finish(end), final=True)
                records.append(rows[name].record(samplers[name].padded))
                continue
            except Exception as error:
                failed[name] = _failed(extractor, _reason(error))
        records.append(failed[name])
    return records, frames


def _audio(info: MediaInfo, extractors: list[Extractor], batch_size: int) -> list[FeatureRecord]:
    if not info.has_audio:
        return [_failed(e, "no audio stream", "skipped") for e in extractors]
    waveform = load_audio(info)
    if not waveform.size:
        return [_failed(e, "the audio stream has no samples", "skipped") for e in extractors]
    records = []
    for extractor in extractors:
        try:
            items, padded = extractor.audio_items(waveform, info.audio_start)
            rows = _Rows(extractor, batch_size)
            rows.add(items, final=True)
            records.append(rows.record(padded))
        except Exception as error:  # recorded per feature; the other audio features go on
            records.append(_failed(extractor, _reason(error)))
    return records


def run_task(task: VideoTask, pool: ExtractorPool) -> TaskReport:
    """Extract ``task.features`` from one video and write them as one shard."""
    started = time.perf_counter()
    path = task.video.path
    attrs: dict[str, Any] = {"source_path": path, "video_id": task.video.video_id}
    frames = 0
    try:
        extractors = [pool.get(name) for name in task.features]
    except VidfeatError as error:  # weights or device problems: same for every video
        records = [FeatureRecord(name, "failed", reason=_reason(error)) for name in task.features]
        extractors = []
    if extractors:
        try:
            info = probe(path)
            stat = os.stat(path)
            attrs.update(info.as_attrs(), fingerprint=fingerprint(path),
                         file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns)
            if task.kind == "visual":
                records, frames = _visual(info, extractors, task.batch_size)
            else:
                records = _audio(info, extractors, task.batch_size)
        except (VidfeatError, OSError) as error:
            records = [_failed(e, _reason(error)) for e in extractors]
    shard = write_shard(task.store, task.shard_name,
                        [VideoRecord(task.video.video_id, attrs, records)], dtype=task.dtype)
    status = {r.feature: (r.status, r.reason, 0 if r.data is None else len(r.data))
              for r in records}
    return TaskReport(task.video.video_id, task.kind, shard, status, frames,
                      time.perf_counter() - started)
