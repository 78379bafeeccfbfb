"""Work units sized by work, not by file: short videos are packed into one task, long videos
are split into segments at clip-aligned frame boundaries whose rows stitch into exactly the
rows of an unsplit run (see ``stitch.py``). Tasks shrink as the planned work runs out, and run
largest first, so that the task slots finish together."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vidfeat.media import MediaInfo
from vidfeat.pipeline.corpus import VideoSource

UnitKind = Literal["visual", "audio"]
#: a task is never planned smaller than this many seconds of media, unless the corpus is
MIN_TASK_SECONDS = 10.0
MAX_TASK_SECONDS = 600.0
#: tasks per task slot at the largest size: the run's first tasks
TASKS_PER_SLOT = 3
#: once the work left is less than this many of the largest tasks per slot, each further task
#: is that share of it: the last tasks are short (guided self-scheduling), so no slot is left
#: running a long one while the others idle
TAIL_TASKS_PER_SLOT = 2
#: an audio unit's work per second of media against a visual unit's, in a run with both
#: (measured on one core: VGGish with its decode 19 ms a second of audio, ResNet-152 at 1 fps
#: about 120 ms a second of video, C3D about 650 ms): a short video's audio does not make its
#: pack look twice as long as it is, nor is a long audio track run first as the largest task
AUDIO_WORK_SHARE = 0.1
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
    #: work per second of media (AUDIO_WORK_SHARE: an audio unit in a run with visual work)
    weight: float = 1.0

    @property
    def work(self) -> float:
        """What planning sizes and orders tasks by: seconds of media, weighted."""
        return self.seconds * self.weight

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
    def work(self) -> float:
        return sum(unit.work for unit in self.units)


def task_seconds(total_work: float, slots: int, segment_seconds: float | None = None
                 ) -> float:
    """The largest task's work (seconds of media, audio weighted): a few tasks per slot,
    within bounds."""
    if segment_seconds:
        return segment_seconds
    target = total_work / (max(1, slots) * TASKS_PER_SLOT)
    return min(MAX_TASK_SECONDS, max(MIN_TASK_SECONDS, target))


class TaskSizes:
    """The size of each task as the plan is made: ``largest`` while much work is left, then
    ``1 / (slots x TAIL_TASKS_PER_SLOT)`` of the work left, down to MIN_TASK_SECONDS. Fixed
    sizes (``shrink=False``) for ``--segment-seconds``."""

    def __init__(self, work: float, slots: int, largest: float, shrink: bool = True) -> None:
        self.left = work
        self.slots = max(1, slots)
        self.largest = largest
        self.shrink = shrink

    def next(self) -> float:
        if not self.shrink:
            return self.largest
        tail = self.left / (self.slots * TAIL_TASKS_PER_SLOT)
        return min(self.largest, max(MIN_TASK_SECONDS, tail))

    def take(self, work: float) -> None:
        self.left -= work


def split_points(times: np.ndarray, sizes: TaskSizes, align: int) -> list[int]:
    """Frame indices (multiples of ``align``, excluding 0 and N) ``sizes`` apart in time."""
    count = len(times)
    points: list[int] = []
    start = 0
    while True:
        size = sizes.next()
        index = int(np.searchsorted(times, times[start] + size))
        index = max(math.ceil(index / align) * align, start + align)
        # a rest shorter than one alignment step joins the last segment, and when sizes
        # shrink, one shorter than half of it too (fixed sizes stay exact: --segment-seconds)
        if index >= count - align or (sizes.shrink and times[-1] - times[index] < size / 2):
            sizes.take(float(times[-1] - times[start]))
            return points
        points.append(index)
        sizes.take(float(times[index] - times[start]))
        start = index


def segments(times: np.ndarray, seconds: float | TaskSizes, align: int, longest_clip: int
             ) -> list[Segment]:
    """The segments of a video whose frames show at ``times`` (presentation order), each
    ``seconds`` long, or as long as ``TaskSizes`` says."""
    sizes = seconds if isinstance(seconds, TaskSizes) else TaskSizes(0, 1, seconds, False)
    count = len(times)
    bounds = [0, *split_points(times, sizes, align), count]
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


def pack(units: list[WorkUnit], sizes: TaskSizes) -> list[Task]:
    """Consecutive units into tasks as large as ``sizes`` says (in work)."""
    tasks: list[Task] = []
    current, work, size = Task(), 0.0, sizes.next()  # work: current's, kept as units join
    for unit in units:
        unit_work = unit.work
        if current.units and (work + unit_work > size
                              or len(current.units) >= MAX_UNITS_PER_TASK):
            tasks.append(current)
            sizes.take(work)
            current, work, size = Task(), 0.0, sizes.next()
        current.units.append(unit)
        work += unit_work
    if current.units:
        tasks.append(current)
        sizes.take(work)
    return tasks


def plan_tasks(units: list[WorkUnit], splits: list[tuple[WorkUnit, np.ndarray]],
               sizes: TaskSizes, align: int, longest_clip: int) -> list[Task | list[WorkUnit]]:
    """The run's tasks, largest first: ``units`` packed, and each long video of ``splits`` (its
    visual unit, its frame times) cut into segments, one task each (a list of one WorkUnit).
    The packs are sized first: the segments, which can be cut to any length, take the
    shrinking sizes at the end of the plan, and run last."""
    tasks: list[Task | list[WorkUnit]] = list(pack(units, sizes))
    for unit, times in splits:
        tasks += [[dataclasses.replace(unit, segment=segment)]
                  for segment in segments(times, sizes, align, longest_clip)]
    return sorted(tasks, key=lambda task: -(task.work if isinstance(task, Task)
                                            else task[0].work))
