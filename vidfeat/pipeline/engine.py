"""The worker engine: runs one task's work units so that the model never waits.

Decode threads (one, or ``decode_threads`` decoding that many units at once) walk the units
(decode each video once for all its visual features, or its audio), feed every frame to the
samplers and put the preprocessed items on a bounded queue;
the calling thread drains it into fixed-size batches per extractor, filled from several units,
and embeds each batch while the decoder prepares the next (PyAV and torch release the GIL).
Rows go back to their unit; a unit is finished when its decode ended and its last item was
embedded: a whole video then joins the task's pack, written as one shard when the task ends
(or when its rows pass PACK_BYTES); a segment is returned for stitching.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vidfeat.errors import DeviceDecodeError, VidfeatError
from vidfeat.extractors.base import Extractor, Item, Sampler
from vidfeat.extractors.pool import ExtractorPool
from vidfeat.media import Frame, MediaInfo, iter_frames, probe
from vidfeat.media.audio import iter_audio
from vidfeat.media.frames import Wanted
from vidfeat.media.remote import remember
from vidfeat.pipeline.corpus import video_attrs
from vidfeat.pipeline.plan import Segment, WorkUnit
from vidfeat.pipeline.records import (
    SegmentPart,
    TaskReport,
    failed_record,
    feature_attrs,
    reason_of,
)
from vidfeat.storage.schema import FeatureRecord, Status, VideoRecord
from vidfeat.storage.writer import write_shard

# PTS * time_base is inexact in binary: times this close are the same instant
_SAME_INSTANT = 1e-6
#: a pack's rows in memory before it is written out (short videos never reach it)
PACK_BYTES = 256 << 20


@dataclass
class _Feature:
    extractor: Extractor
    rows: list[np.ndarray] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    queued: int = 0  # items waiting in the batcher
    failure: FeatureRecord | None = None
    padded: bool = False
    seconds: float = 0.0


@dataclass
class _Unit:
    unit: WorkUnit
    features: dict[str, _Feature]
    attrs: dict[str, Any] = field(default_factory=dict)
    decoded: bool = False
    decode_device: str = "cpu"
    frames: int = 0
    end: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.decoded and not any(feature.queued for feature in self.features.values())


class Engine:
    """Runs tasks in one worker process with that process's extractor pool."""

    def __init__(self, pool: ExtractorPool, *, batch_size: int | None = None,
                 dtype: str = "float16",
                 decoder: str = "pyav", decoder_threads: int | None = None,
                 decode_threads: int = 1, queue_items: int | None = None,
                 pack_bytes: int = PACK_BYTES) -> None:
        """``decoder_threads``: the threads all decoding shares (None: FFmpeg's choice);
        ``decode_threads``: units decoded at once, for a model faster than one decoder (a GPU's);
        ``pack_bytes``: rows held before the finished videos are written as a shard
        """
        self.pack_bytes = pack_bytes
        self.pool = pool
        self.decoder_threads = decoder_threads
        self.decode_threads = decode_threads
        self.batch_size = batch_size
        self.dtype = dtype
        self.decoder = decoder
        self.queue_items = queue_items
        #: the probe facts and attributes of the videos a task probed, by path
        self._probed: dict[str, tuple[MediaInfo, dict[str, Any]]] = {}
        #: FFmpeg threads of each decoder in the task running: the worker's, shared among the
        #: decode threads the task starts (a task of one segment gets them all)
        self._threads_per_decoder = decoder_threads

    def run(self, units: list[WorkUnit], store: str) -> TaskReport:
        started = time.perf_counter()
        report = TaskReport()
        self._probed.clear()
        pack = _Pack(store, self.dtype, report, self.pack_bytes)
        states: list[_Unit] = []
        for unit in units:
            features = {}
            for name in unit.features:
                try:
                    features[name] = _Feature(self.pool.get(name))
                except VidfeatError as error:  # weights or device: the same for every video
                    features[name] = _Feature(None, failure=FeatureRecord(  # type: ignore[arg-type]
                        name, Status.FAILED, reason=reason_of(error)))
            states.append(_Unit(unit, features))
        sizes = {name: self.batch_size or feature.extractor.batch_size
                 for state in states for name, feature in state.features.items()
                 if feature.extractor is not None}
        # room for the next batch of every model while the current one runs
        messages: queue.Queue = queue.Queue(
            maxsize=self.queue_items or 2 * max(sizes.values(), default=16))
        waiting: queue.SimpleQueue = queue.SimpleQueue()  # units no decoder has taken yet
        for state in states:
            waiting.put(state)
        count = max(1, min(self.decode_threads, len(states)))
        if self.decoder_threads is not None:
            self._threads_per_decoder = max(1, self.decoder_threads // count)
        decoders = [threading.Thread(target=self._decode_all, args=(waiting, messages),
                                     name=f"vidfeat-decode-{i}", daemon=True)
                    for i in range(count)]
        for decoder in decoders:
            decoder.start()
        batches: dict[str, list[tuple[_Unit, Item]]] = {}
        decoding = len(decoders)
        try:
            while decoding:
                if (message := messages.get()) is None:  # a decoder found no unit left
                    decoding -= 1
                    continue
                state, name, item = message
                if item is None:  # the unit's decode ended
                    state.decoded = True
                else:
                    batch = batches.setdefault(name, [])
                    batch.append((state, item))
                    state.features[name].queued += 1
                    if len(batch) >= sizes[name]:
                        self._embed(name, batch)
                        batch.clear()
                self._finish_done(states, pack, report)
        except BaseException:
            # the task breaks (a shard that cannot be written, a full store): the decoders
            # take no more units, and the queue is drained until each has ended, so that none
            # stays blocked on it, holding its decoder, for the rest of the worker's life
            while True:
                try:
                    waiting.get_nowait()
                except queue.Empty:
                    break
            while decoding:
                if messages.get() is None:
                    decoding -= 1
            raise
        for decoder in decoders:
            decoder.join()
        for name, batch in batches.items():
            if batch:
                self._embed(name, batch)
        self._finish_done(states, pack, report)
        pack.write()
        report.seconds = time.perf_counter() - started
        return report

    # ---- model side ----------------------------------------------------------------------
    def _embed(self, name: str, batch: list[tuple[_Unit, Item]]) -> None:
        extractor = batch[0][0].features[name].extractor
        started = time.perf_counter()
        try:
            rows = extractor.embed(torch.stack([item.tensor for _, item in batch]))
        except Exception as error:  # e.g. out of memory: every unit in the batch loses it
            for state, _ in batch:
                feature = state.features[name]
                feature.queued -= 1
                feature.failure = feature.failure or failed_record(extractor, reason_of(error))
            return
        share = (time.perf_counter() - started) / len(batch)
        for (state, item), row in zip(batch, rows, strict=True):
            feature = state.features[name]
            feature.queued -= 1
            feature.seconds += share
            if feature.failure is None:
                feature.rows.append(row)
                feature.spans.append((item.start, item.end))

    def _finish_done(self, states: list[_Unit], pack: _Pack, report: TaskReport) -> None:
        for state in [s for s in states if s.done]:
            states.remove(state)
            self._finish(state, pack, report)

    def _finish(self, state: _Unit, pack: _Pack, report: TaskReport) -> None:
        unit = state.unit
        decoded_by = (self.decoder, state.decode_device) if unit.kind == "visual" else None
        records = [_record(feature, unit, decoded_by) for feature in state.features.values()]
        seconds = time.perf_counter() - state.started
        model_seconds = {name: feature.seconds for name, feature in state.features.items()}
        report.frames += state.frames
        if unit.segment is not None:
            report.parts.append(SegmentPart(unit, state.attrs, records, state.frames, seconds,
                                            model_seconds, state.end))
            return
        pack.add(VideoRecord(unit.video.video_id, state.attrs, records))
        report.add_video(unit.video.video_id, records, model_seconds)

    # ---- decode side (the decode threads) ------------------------------------------------
    def _media(self, unit: WorkUnit) -> tuple[MediaInfo, dict[str, Any]]:
        """The unit's probe facts and store attributes: the planner's, or probed here, once
        per video and task (its visual and audio units share them)."""
        if unit.video.remote is not None:  # the listing's version: no HEAD, no stale blocks
            remember(unit.video.path, unit.video.remote)
        if unit.info is not None:
            return unit.info, unit.attrs or video_attrs(unit.video, unit.info)
        known = self._probed.get(unit.video.path)
        if known is None:
            info = probe(unit.video.path)
            known = self._probed[unit.video.path] = (info, video_attrs(unit.video, info))
        return known

    def _decode_all(self, waiting: queue.SimpleQueue, messages: queue.Queue) -> None:
        try:
            while True:
                try:
                    state = waiting.get_nowait()
                except queue.Empty:
                    return
                self._decode_unit(state, messages)
                messages.put((state, None, None))
        finally:
            messages.put(None)

    def _decode_unit(self, state: _Unit, messages: queue.Queue) -> None:
        unit = state.unit
        live = {name: f for name, f in state.features.items() if f.failure is None}
        state.attrs = {"source_path": unit.video.path, "video_id": unit.video.video_id}
        try:
            info, attrs = self._media(unit)
            state.attrs.update(attrs)
            if not live:
                return
            if unit.kind == "visual" and not info.has_video:
                for feature in live.values():
                    feature.failure = failed_record(feature.extractor, "no video stream",
                                                    Status.SKIPPED)
            elif unit.kind == "visual":
                self._decode_visual(state, info, live, messages)
            else:
                self._decode_audio(state, info, live, messages)
        except Exception as error:  # the unit fails; the task's other units go on
            reason = reason_of(error)
            for feature in live.values():
                feature.failure = feature.failure or failed_record(feature.extractor, reason)

    def _decode_visual(self, state: _Unit, info: MediaInfo, live: dict[str, _Feature],
                       messages: queue.Queue) -> None:
        segment = state.unit.segment
        start = segment.seek_time if segment else None
        stop = segment.stop_time if segment else math.inf
        samplers = {name: f.extractor.sampler(info, start_time=start) for name, f in live.items()}
        takes_frames = {name: f.extractor.modality == "frames" for name, f in live.items()}
        end = 0.0
        for frame in self._frames(state, info, segment, _wanted(list(samplers.values()))):
            state.frames += 1
            end = frame.end
            for name, sampler in samplers.items():
                feature = live[name]
                if feature.failure is not None:
                    continue
                if takes_frames[name] and frame.time >= stop - _SAME_INSTANT:
                    continue  # the next segment's frame: seen only for the clips' sake
                try:
                    self._put(state, name, sampler.push(frame), stop, messages)
                except Exception as error:  # one extractor failing must not stop the others
                    feature.failure = failed_record(feature.extractor, reason_of(error))
        state.end = end
        final = segment is None or segment.is_last
        for name, sampler in samplers.items():
            feature = live[name]
            if feature.failure is not None:
                continue
            # frame rows end where the next row starts: in the next segment (stitch.py)
            end_time = end if final or not takes_frames[name] else stop
            try:
                self._put(state, name, sampler.finish(end_time, final=final), stop, messages)
                feature.padded = sampler.padded
            except Exception as error:
                feature.failure = failed_record(feature.extractor, reason_of(error))

    def _decode_audio(self, state: _Unit, info: MediaInfo, live: dict[str, _Feature],
                      messages: queue.Queue) -> None:
        if not info.has_audio:
            for feature in live.values():
                feature.failure = failed_record(feature.extractor, "no audio stream",
                                                Status.SKIPPED)
            return
        streams = {name: f.extractor.audio_stream(info.audio_start) for name, f in live.items()}
        samples = 0
        for _, block in iter_audio(info):
            samples += block.size
            for name, stream in streams.items():
                self._put(state, name, stream.push(block), math.inf, messages)
        if not samples:
            for feature in live.values():
                feature.failure = failed_record(feature.extractor,
                                                "the audio stream has no samples", Status.SKIPPED)
            return
        for name, stream in streams.items():
            self._put(state, name, stream.finish(), math.inf, messages)
            live[name].padded = stream.padded

    def _frames(self, state: _Unit, info: MediaInfo, segment: Segment | None,
                wanted: Wanted | None) -> Iterator[Frame]:
        """The unit's frames, on the GPU where the pool decodes there; a GPU decoder that
        cannot start (no NVDEC for this codec, an FFmpeg without CUDA) leaves the CPU's."""
        device = state.decode_device = self.pool.decode_device(self.decoder)
        if device != "cpu":
            frames = _frames(info, segment, self.decoder, self._threads_per_decoder, device,
                             wanted)
            try:
                first = next(frames)
            except StopIteration:
                return
            except DeviceDecodeError as error:
                self.pool.gpu_decode_failed(error)
                state.decode_device = "cpu"
            else:
                yield first
                yield from frames
                return
        yield from _frames(info, segment, self.decoder, self._threads_per_decoder, "cpu",
                           wanted)

    @staticmethod
    def _put(state: _Unit, name: str, items: list[Item], stop: float,
             messages: queue.Queue) -> None:
        for item in items:
            if item.start < stop - _SAME_INSTANT:  # later items belong to the next segment
                messages.put((state, name, item))


class _Pack:
    """The finished videos of a task, written together as one shard. A video's visual and
    audio units may both be in the task: their records join one video."""

    def __init__(self, store: str, dtype: str, report: TaskReport, limit: int) -> None:
        self.store, self.dtype, self.report, self.limit = store, dtype, report, limit
        self.videos: dict[str, VideoRecord] = {}
        self.bytes = 0

    def add(self, video: VideoRecord) -> None:
        held = self.videos.get(video.video_id)
        if held is None:
            self.videos[video.video_id] = video
        else:
            held.attrs.update(video.attrs)
            held.features += video.features
        self.bytes += sum(record.data.nbytes for record in video.features
                          if record.data is not None)
        if self.bytes >= self.limit:
            self.write()

    def write(self) -> None:
        if self.videos:
            self.report.shards.append(write_shard(self.store, None, list(self.videos.values()),
                                                  dtype=self.dtype))
        self.videos, self.bytes = {}, 0


def _frames(info: MediaInfo, segment: Segment | None, decoder: str, threads: int | None,
            device: str, wanted: Wanted | None) -> Iterator[Frame]:
    """The frames a unit needs: the whole video, or a segment's decode range (whole-video
    frame indices, so that samplers pick the same frames as an unsplit run)."""
    if segment is None:
        return iter_frames(info, decoder=decoder, threads=threads, device=device, wanted=wanted)
    stop = None if math.isinf(segment.decode_stop_time) else segment.decode_stop_time
    return iter_frames(info, decoder=decoder, threads=threads, start_time=segment.seek_time,
                       stop_time=stop, first_index=segment.start_frame, device=device,
                       wanted=wanted)


def _wanted(samplers: list[Sampler]) -> Wanted | None:
    """The frames any of a unit's samplers may take, where every one of them can say (one
    that needs every frame, a clip model's, makes the decoder decode them all)."""
    if not samplers or not all(sampler.selective for sampler in samplers):
        return None
    return lambda time, next_time: any(sampler.wants(time, next_time) for sampler in samplers)


def _record(feature: _Feature, unit: WorkUnit, decoded_by: tuple[str, str] | None
            ) -> FeatureRecord:
    if feature.failure is not None:
        return feature.failure
    extractor = feature.extractor
    data = (np.stack(feature.rows) if feature.rows
            else np.zeros((0, extractor.feature_dim), np.float32))
    times = np.asarray(feature.spans, dtype=np.float64).reshape(-1, 2)
    if not len(data) and unit.segment is None:
        return failed_record(extractor, "no rows: the video is too short for this extractor")
    return FeatureRecord(extractor.name, Status.OK, data=data, times=times,
                         attrs=feature_attrs(extractor, feature.padded, decoded_by))
