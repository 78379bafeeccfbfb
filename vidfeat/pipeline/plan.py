"""Work units sized by work, not by file: short videos are packed into one task, long videos
are split into segments at clip-aligned frame boundaries whose rows stitch into exactly the
rows of an unsplit run (see ``stitch.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vidfeat.media import MediaInfo
from vidfeat.pipeline.corpus import VideoSource

UnitKind = Literal["visual", "audio"]
#: a task is never planned smaller than this many seconds of media, unless the corpus is
MIN_TASK_SECONDS = 10.0
MAX_TASK_SECONDS = 600.0
#: tasks per task slot: enough for the dynamic scheduling to even out the slots' loads
TASKS_PER_SLOT = 3
#: a task's finished videos are one shard: 128 units (a short video's visual and audio units
#: are two) keep a large corpus of short videos at 50-64 videos a file
MAX_UNITS_PER_TASK = 128
#: what planning assumes of a video it has not probed: 1 Mbit/s, to size tasks by their files
TYPICAL_BYTES_PER_SECOND = 125_000
#: no video is smaller than this per second (a 128 kbit/s stream): a file too small to last
#: past the split threshold at this rate is not probed before planning, but where it is decoded
MIN_BYTES_PER_SECOND = 16_000


@dataclass(frozen=True)
class Segment:
    """Frames ``[start_frame, stop_frame)`` of a video, whose rows this segment owns (a frame
    sample, or a clip starting there). The decoder covers ``[start_time, decode_stop_time)``:
    past ``stop_time`` by the frames that complete the segment's last clips."""

    index: int
    count: int
    start_frame: int
    stop_frame: int
    start_time: float
    stop_time: float  # time of stop_frame; inf for the last segment
    decode_stop_time: float  # inf: to the end of the video

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1

    @property
    def seek_time(self) -> float | None:
        """Where its decoder seeks and its sampler's targets start; None for the first
        segment, which starts with the video: decoded from the file's start (no seek to land
        wrong, as MPEG-TS's can) and sampled from 0 s, where an unsplit run's first target is
        (taken by the first frame even when that shows later)."""
        return self.start_time if self.index else None


@dataclass(frozen=True)
class WorkUnit:
    video: VideoSource
    kind: UnitKind
    features: tuple[str, ...]
    #: the unit's identity (video, kind, configuration): a split video's segments share it
    key: str
    #: probe facts; None: the task probes the video where it decodes it (short files)
    info: MediaInfo | None
    segment: Segment | None = None
    #: the video's store attributes (probe facts, fingerprint, size, mtime), computed once per
    #: video by the probe task; None: the engine computes them
    attrs: dict | None = None
    #: the file's size, for the seconds of media an unprobed unit is planned with
    size: int = 0

    @property
    def seconds(self) -> float:
        if self.info is None:
            return self.size / TYPICAL_BYTES_PER_SECOND
        if self.segment is None:
            return self.info.duration
        end = min(self.segment.stop_time, self.info.duration)
        return max(0.0, end - self.segment.start_time)


@dataclass
class Task:
    units: list[WorkUnit] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(unit.seconds for unit in self.units)


def media_seconds(sizes: Sequence[int], durations: Sequence[float | None]) -> float:
    """The corpus's seconds of media, for sizing its tasks: a probed video's duration, an
    unprobed one's (``None``) guessed from its size at ``TYPICAL_BYTES_PER_SECOND``."""
    return sum(size / TYPICAL_BYTES_PER_SECOND if duration is None else duration
               for size, duration in zip(sizes, durations, strict=True))


def task_seconds(total_seconds: float, slots: int, segment_seconds: float | None = None
                 ) -> float:
    """How much media one task should cover: a few tasks per slot, within bounds."""
    if segment_seconds:
        return segment_seconds
    target = total_seconds / (max(1, slots) * TASKS_PER_SLOT)
    return min(MAX_TASK_SECONDS, max(MIN_TASK_SECONDS, target))


def split_points(times: np.ndarray, seconds: float, align: int) -> list[int]:
    """Frame indices (multiples of ``align``, excluding 0 and N) about ``seconds`` apart."""
    count = len(times)
    points: list[int] = []
    next_time = times[0] + seconds
    while True:
        index = int(np.searchsorted(times, next_time))
        index = math.ceil(index / align) * align
        if index >= count - align:  # a tail shorter than one alignment step joins the last
            return points
        if not points or index > points[-1]:
            points.append(index)
        next_time = times[index] + seconds


def segments(times: np.ndarray, seconds: float, align: int, longest_clip: int
             ) -> list[Segment]:
    """The segments of a video whose frames show at ``times`` (presentation order)."""
    count = len(times)
    bounds = [0, *split_points(times, seconds, align), count]
    result = []
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        # the frames completing clips that start before `stop`, and one more for the last
        # clip's end time
        decode_stop = stop + longest_clip + 1
        result.append(Segment(
            index=index, count=len(bounds) - 1, start_frame=start, stop_frame=stop,
            start_time=float(times[start]),
            stop_time=float(times[stop]) if stop < count else math.inf,
            decode_stop_time=float(times[decode_stop]) if decode_stop < count else math.inf,
        ))
    return result


def pack(units: list[WorkUnit], seconds: float) -> list[Task]:
    """Consecutive units into tasks of about ``seconds`` of media, longest task first (so the
    stragglers at the end of a run are short)."""
    tasks: list[Task] = []
    current = Task()
    for unit in units:
        if current.units and (current.seconds + unit.seconds > seconds
                              or len(current.units) >= MAX_UNITS_PER_TASK):
            tasks.append(current)
            current = Task()
        current.units.append(unit)
    if current.units:
        tasks.append(current)
    return sorted(tasks, key=lambda task: -task.seconds)
