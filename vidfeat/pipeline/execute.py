"""Running a prepared run on a connected Dask client: planning into work units
(packs of short videos, segments of long ones), submission with backpressure, stitching of
split videos, indexing shards as tasks report, per-task timeouts and dead workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterator
from typing import Any

from vidfeat.errors import StoreFullError
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.options import RunOptions
from vidfeat.pipeline.corpus import VideoSource, video_attrs
from vidfeat.pipeline.plan import (
    AUDIO_WORK_SHARE,
    MIN_BYTES_PER_SECOND,
    TYPICAL_BYTES_PER_SECOND,
    Task,
    TaskSizes,
    WorkUnit,
    plan_tasks,
    task_seconds,
)
from vidfeat.pipeline.prepare import PreparedRun, RunReport, unit_key
from vidfeat.pipeline.records import TaskReport, reason_of
from vidfeat.pipeline.worker import extractor_plugin, plugin_name
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.schema import FeatureRecord, Outcome, ShardContents, Status, VideoRecord
from vidfeat.storage.writer import write_shard

#: how often the driver looks at Ctrl-C and at tasks running past --task-timeout
POLL_S = 0.5

log = logging.getLogger(__name__)
#: videos probed per probe task: enough to amortise the task overhead
PROBES_PER_TASK = 16


def _probe_videos(videos: list[VideoSource]) -> list[tuple[Any, dict | None, str]]:
    """Each video's probe facts and store attributes (fingerprinted here, once per video, not
    by each of its units or segments), or why it cannot be read."""
    from vidfeat.media import probe
    from vidfeat.media.remote import remember

    results: list[tuple[Any, dict | None, str]] = []
    for video in videos:
        try:
            if video.remote is not None:
                remember(video.path, video.remote)
            info = probe(video.path)
            results.append((info, video_attrs(video, info), ""))
        except Exception as error:  # recorded for the video; the run goes on
            results.append((None, None, reason_of(error)))
    return results


def _frame_times(path: str) -> Any:
    from vidfeat.media.timeline import frame_times

    return frame_times(path)


def _run_units(units: list[WorkUnit], store: str, plugin: str, options: RunOptions
               ) -> TaskReport | StoreFullError:
    from vidfeat.pipeline.engine import Engine
    from vidfeat.pipeline.worker import worker_state

    state = worker_state(plugin)
    decode_threads = options.decode_threads or (
        max(1, state.torch_threads // 4) if state.pool.on_gpu() else 1)
    engine = Engine(state.pool, batch_size=options.batch_size, dtype=options.dtype,
                    decoder=options.decoder, decoder_threads=state.torch_threads,
                    decode_threads=decode_threads)
    try:
        return engine.run(units, store)
    except StoreFullError as error:  # returned: the driver stops the run, the worker logs nothing
        return error


def _stitch(reports: list[TaskReport], modality: dict[str, str], store: str, dtype: str
            ) -> TaskReport | StoreFullError:
    from vidfeat.pipeline.stitch import stitch_and_write

    try:
        return stitch_and_write([part for report in reports for part in report.parts],
                                modality, store, dtype)
    except StoreFullError as error:
        return error


# ---- the driver ----------------------------------------------------------------------------
def register_extractors(client: Any, specs: dict[str, ExtractorSpec], device: str, *,
                        load_now: bool = False) -> str:
    """Give every worker (and each that joins later) the run's extractor pool, its models
    loaded on first use or, ``load_now``, at once in the background; returns the plugin's
    name."""
    register_plugin(client, extractor_plugin(specs, device, _slots_by_host(client),
                                             load_now), plugin_name(specs))
    return plugin_name(specs)


def _slots_by_host(client: Any) -> dict[str, int]:
    slots: dict[str, int] = {}
    for worker in client.scheduler_info().get("workers", {}).values():
        slots[worker["host"]] = slots.get(worker["host"], 0) + worker["nthreads"]
    return slots


def execute(run: PreparedRun, client: Any, *, stop: threading.Event | None = None,
            task_timeout: float | None = None, registered: bool = False) -> RunReport:
    """Extract ``run.todo`` on ``client``'s workers; every outcome lands in the report.

    ``stop`` set (Ctrl-C): nothing more is submitted, the tasks in flight finish and are
    indexed. ``task_timeout``: a task running longer is abandoned (its worker restarted) and
    its videos recorded as failed. A full disk (StoreFullError) stops the run the same way,
    then leaves the index matching the shards on disk, and is raised. ``registered``: the
    extractors were given to the workers already (``register_extractors``)."""
    from tqdm import tqdm

    report = run.report
    stop = stop or threading.Event()
    started = time.perf_counter()
    index = StoreIndex(run.store)
    slots = max(1, sum(_slots_by_host(client).values()))
    plugin = (plugin_name(run.specs) if registered
              else register_extractors(client, run.specs, run.options.device))
    full: StoreFullError | None = None
    indexed: set[str] = set()
    reads = _RemoteReads(client, run)
    try:
        rejected = [(VideoSource(r.video_id, r.path), list(run.specs), r.reason)
                    for r in run.rejected]
        if rejected:
            shard, failures = _failures(rejected, run)
            index.add([shard])
            indexed.add(shard.relpath)
            report.add(failures)
        with tqdm(total=len(run.todo), unit="video", disable=not run.options.progress,
                  smoothing=0) as bar:
            progress = _VideoProgress(bar, run.todo)
            tasks = _plan(run, client, slots, index, report, progress, stop, task_timeout)
            for result in _run_tasks(client, run, tasks, plugin, stop, task_timeout):
                if isinstance(result, StoreFullError):
                    full, _ = full or result, stop.set()
                    continue
                if full is None and result.shards:
                    try:
                        index.add(result.shards)  # one transaction for the task's shards
                        indexed.update(shard.relpath for shard in result.shards)
                    except StoreFullError as error:
                        full, _ = error, stop.set()
                report.add_task(result)
                progress.record(result.outcomes)
                elapsed = time.perf_counter() - started
                bar.set_postfix(failed=len(report.failed_videos),
                                fps=f"{report.frames / max(elapsed, 1e-9):.1f}", refresh=False)
    except StoreFullError as error:
        full = error
    finally:
        # a shared scheduler's workers must not keep this run's models in memory
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(plugin)
    report.seconds = time.perf_counter() - started
    report.remote = reads.since()
    report.interrupted = stop.is_set() and full is None
    if full is not None:
        _remove_unindexed(index, indexed)
        raise full
    return report


class _RemoteReads:
    """What the workers read by URL or from tars during the run (their remote.counters(),
    before and after): the run report's requests, bytes and retries."""

    def __init__(self, client: Any, run: PreparedRun) -> None:
        self.client = client
        self.wanted = any(video.remote is not None for video, _ in run.todo)
        self.before = self._counts() if self.wanted else {}

    def _counts(self) -> dict[str, dict[str, int]]:
        from vidfeat.media.remote import counters

        try:
            return self.client.run(counters)
        except Exception as error:  # a worker gone: the figures are only a report's
            log.debug("cannot read the workers' remote counters: %s", error)
            return {}

    def since(self) -> dict[str, int]:
        if not self.wanted:
            return {}
        totals = {"requests": 0, "bytes": 0, "retries": 0}
        for worker, counts in self._counts().items():
            earlier = self.before.get(worker, {})
            for key in totals:  # a worker restarted during the run counts from 0 again
                totals[key] += counts[key] - min(earlier.get(key, 0), counts[key])
        return totals


def register_plugin(client: Any, plugin: object, name: str, tries: int = 3) -> None:
    """A worker dying while the plugin is broadcast fails the registration, although the
    scheduler keeps the plugin for the workers that come: try again."""
    for attempt in range(tries):
        try:
            client.register_plugin(plugin, name=name)
            return
        except OSError:  # distributed's CommClosedError
            if attempt == tries - 1:
                raise
            time.sleep(1.0)


def _remove_unindexed(index: StoreIndex, indexed: set[str]) -> None:
    """After a full disk: the shards this run wrote (the journal's) but could not index are
    removed (the rerun extracts them again), so that the store verifies. The index itself
    may not even open on a full disk (SQLite's shared memory file), hence ``indexed``, kept
    by the driver; under the run lock, and with the tasks in flight drained, no one else
    writes shards."""
    for relpath in sorted(set(index.journalled()) - indexed):
        (index.directory / relpath).unlink(missing_ok=True)
        log.debug("removed %s: written, but the full disk kept it out of the index", relpath)


class _VideoProgress:
    """The bar counts videos: one is done once each of its features has an outcome (its visual
    and audio units can end in different tasks, a split video's in its stitch)."""

    def __init__(self, bar: Any, todo: list[tuple[VideoSource, list[str]]]) -> None:
        self._bar = bar
        self._left = {video.video_id: set(names) for video, names in todo}

    def record(self, outcomes: list[Outcome]) -> None:
        finished = 0
        for outcome in outcomes:
            left = self._left.get(outcome.video_id)
            if left is None:
                continue
            left.discard(outcome.feature)
            if not left:
                del self._left[outcome.video_id]
                finished += 1
        self._bar.update(finished)


def _plan(run: PreparedRun, client: Any, slots: int, index: StoreIndex, report: RunReport,
          progress: _VideoProgress, stop: threading.Event, task_timeout: float | None
          ) -> list[Task | list[WorkUnit]]:
    """Cut the work into tasks: packs of units, and one task per segment of a long video (a
    list of WorkUnit of length one, see _run_tasks). Planning reads file sizes only: a video is
    probed where its task decodes it, except the files large enough to need splitting (all
    of them under --segment-seconds), probed first in tasks of their own, whose durations
    then size the tasks. Those are waited for as the model tasks are: a probe running past
    ``task_timeout`` fails its videos, and once ``stop`` is set (Ctrl-C) nothing is planned:
    the rerun starts over."""
    modality = {name: d.modality for name, d in run.descriptions.items()}
    sizes = [_size(video) for video, _ in run.todo]
    # which files might need splitting, guessed from their sizes
    guess = task_seconds(sum(sizes) / TYPICAL_BYTES_PER_SECOND, slots, run.options.segment_seconds)
    splittable = 1.5 * guess * MIN_BYTES_PER_SECOND
    # --segment-seconds sizes every task by media seconds: all videos are probed first
    to_probe = [position for position, ((_, names), size) in enumerate(zip(run.todo, sizes,
                                                                         strict=True))
                if run.options.segment_seconds
                or (size > splittable and any(modality[name] != "audio" for name in names))]
    probed = dict(zip(to_probe, _probe_all([run.todo[i][0] for i in to_probe], client,
                                           stop, task_timeout), strict=True))
    if stop.is_set():
        return []
    units: list[WorkUnit] = []
    unreadable = []
    # an audio track in a run with visual work costs a fraction of its seconds
    audio_weight = (AUDIO_WORK_SHARE if any(modality[name] != "audio" for _, names in run.todo
                                            for name in names) else 1.0)
    for position, ((video, names), size) in enumerate(zip(run.todo, sizes, strict=True)):
        info, attrs, error = probed.get(position, (None, None, ""))
        if error:
            unreadable.append((video, names, error))
            continue
        for kind in ("visual", "audio"):
            features = tuple(n for n in names if (modality[n] == "audio") == (kind == "audio"))
            if features:
                units.append(WorkUnit(
                    video, kind, features,  # type: ignore[arg-type]
                    unit_key(video.video_id, kind, [run.hashes[n] for n in features]),
                    info, attrs=attrs, size=size,
                    weight=audio_weight if kind == "audio" else 1.0))
    if unreadable:
        shard, failures = _failures(unreadable, run)
        index.add([shard])
        report.add(failures)
        progress.record(failures)
    # sized by the probed files' durations, not their sizes' guess: a corpus of high-bitrate
    # files is otherwise planned in tasks so long that its long videos are not split
    # (measured on benchmarks/throughput.py's corpus: its 600 s video was one task, whose
    # worker finished 9 s after the other)
    total = sum(unit.work for unit in units)
    largest = task_seconds(total, slots, run.options.segment_seconds)
    sizes_left = TaskSizes(total, slots, largest, shrink=not run.options.segment_seconds)

    def is_long(unit: WorkUnit) -> bool:
        return (unit.kind == "visual" and unit.info is not None and unit.info.has_video
                and unit.info.duration > 1.5 * largest)

    long_videos = [unit for unit in units if is_long(unit)]
    units = [unit for unit in units if not is_long(unit)]
    times = _planning_results(client, client.map(_frame_times, [u.video.path for u in long_videos],
                                                 pure=False), stop, task_timeout)
    if stop.is_set():
        return []
    splits = []
    for unit, frame_times in zip(long_videos, times, strict=True):
        if isinstance(frame_times, BaseException) or not len(frame_times):
            # no packet times (a file damaged or replaced since its probe): not split, so
            # that its own task decodes it and records what it could not read
            log.debug("%s: not split (%s)", unit.video.path, frame_times)
            units.append(unit)
        else:
            splits.append((unit, frame_times))
    return plan_tasks(units, splits, sizes_left, *_clip_alignment(run))


def _size(video: VideoSource) -> int:
    if video.remote is not None:  # by URL or in a tar: the listing's size, nothing is asked
        return video.remote.size
    try:
        return os.stat(video.path).st_size
    except OSError:  # gone since the scan: its task records why
        return 0


def _probe_all(videos: list[VideoSource], client: Any, stop: threading.Event,
               task_timeout: float | None) -> list[tuple[Any, dict | None, str]]:
    """(info, attrs, reason) of each video, probed on the workers PROBES_PER_TASK at a time."""
    chunks = [videos[i:i + PROBES_PER_TASK] for i in range(0, len(videos), PROBES_PER_TASK)]
    results = _planning_results(client, client.map(_probe_videos, chunks, pure=False), stop,
                                task_timeout)
    return [item for chunk, result in zip(chunks, results, strict=True)
            for item in _probe_results(chunk, result)]


def _planning_results(client: Any, futures: list[Any], stop: threading.Event,
                      task_timeout: float | None) -> list[Any]:
    """Each future's result, or the exception it ended with (TimeoutError past
    ``task_timeout``: its worker is restarted, as for a model task); those still running
    when ``stop`` is set are cancelled (None)."""
    from distributed import wait

    watch = _TaskWatch(client, task_timeout)
    pending = {future: position for position, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    while pending and not stop.is_set():
        try:
            done = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            done = set()
        for future in watch.expired(pending, done):
            results[pending.pop(future)] = TimeoutError(f"timed out after {task_timeout:g} s")
        for future in done:
            if future.status == "finished":
                results[pending.pop(future)] = future.result()
            else:  # error, or cancelled (a scheduler that restarted)
                error = future.exception() if future.status == "error" else None
                results[pending.pop(future)] = error or RuntimeError(f"task {future.status}")
    if pending:
        client.cancel(list(pending))
    return results


def _probe_results(paths: list[VideoSource], result: Any) -> list[tuple[Any, dict | None, str]]:
    """A probe task whose workers kept dying (KilledWorker) or that timed out fails its
    videos, not the run."""
    if not isinstance(result, BaseException):
        return result
    reason = (str(result) if isinstance(result, TimeoutError)
              else f"probe task died: {type(result).__name__}: {result}").splitlines()[0]
    return [(None, None, reason) for _ in paths]


def _clip_alignment(run: PreparedRun) -> tuple[int, int]:
    """Segment starts must be clip starts of every clip feature: a multiple of each stride;
    and the longest clip, which a segment's decode runs past its end for."""
    align, longest = 1, 0
    for description in run.descriptions.values():
        if description.clip is not None:
            stride, clip_len = description.clip
            align, longest = math.lcm(align, stride), max(longest, clip_len)
    return align, longest


def _failures(failed: list[tuple[VideoSource, list[str], str]], run: PreparedRun
              ) -> tuple[ShardContents, list[Outcome]]:
    """Videos whose task never reported, or that cannot be probed or read, still leave their
    failures in the store: (video, features, reason) each, written as one pack."""
    videos: dict[str, VideoRecord] = {}
    outcomes = []
    for video, names, reason in failed:
        records = [FeatureRecord(name, Status.FAILED, reason=reason) for name in names]
        held = videos.setdefault(video.video_id, VideoRecord(
            video.video_id, {"source_path": video.path, "video_id": video.video_id}, []))
        held.features += records
        outcomes += [record.outcome(video.video_id) for record in records]
    shard = write_shard(run.store, None, list(videos.values()), dtype=run.options.dtype)
    return shard, outcomes


def _run_tasks(client: Any, run: PreparedRun, tasks: list[Task | list[WorkUnit]],
               plugin: str, stop: threading.Event, task_timeout: float | None = None
               ) -> Iterator[TaskReport | StoreFullError]:
    """Run ``tasks`` with one per worker thread in flight (a new one is submitted as each
    finishes); a long video's segments are stitched once all are done. A task that dies
    (worker killed, crash) or times out still yields a report and leaves its failures in the
    store; one that met a full disk yields its StoreFullError. A pack of several videos that
    dies or times out is split: each video is tried again alone. Once ``stop`` is set nothing
    more is submitted and the tasks in flight are waited for."""
    from distributed import wait

    store = str(run.store)
    modality = {name: d.modality for name, d in run.descriptions.items()}
    queue = list(reversed(tasks))
    in_flight: dict[Any, list[WorkUnit]] = {}
    segments_done: dict[str, list[Any]] = {}  # unit key -> finished segment futures
    broken: set[str] = set()
    stitches: set[Any] = set()
    watch = _TaskWatch(client, task_timeout)

    def submit(units: list[WorkUnit]) -> None:
        key = f"vidfeat-{units[0].video.video_id}-{time.time_ns()}"
        future = client.submit(_run_units, units, store, plugin, run.options,
                               pure=False, key=key,
                               resources=run.options.model_resources or None)
        in_flight[future] = units

    def submit_next() -> None:
        if queue and not stop.is_set():
            task = queue.pop()
            submit(task.units if isinstance(task, Task) else task)

    # one task per task slot: a task waiting on a worker would share the fate of the one
    # running there (a worker killed by one video's out-of-memory counts against every task
    # it holds); tasks are long, so the round trip to submit the next one costs nothing
    for _ in range(min(max(1, sum(client.nthreads().values())), len(queue))):
        submit_next()
    while in_flight:
        try:
            done = wait(list(in_flight), timeout=POLL_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            done = set()
        for future in watch.expired(in_flight, done):
            units = in_flight.pop(future)
            if len(units) > 1:  # a pack: each video again on its own, so one hang is one
                queue.extend([unit] for unit in units)
            else:
                yield _died_or_full(units, f"timed out after {task_timeout:g} s", run, broken)
            submit_next()
        for future in done:
            units = in_flight.pop(future)
            segment = units[0].segment if len(units) == 1 else None
            if future.status == "error" and len(units) > 1:
                # a pack whose worker died: one video may be the cause (out of memory); each
                # goes again alone, and only the one that dies again is recorded as failed
                queue.extend([unit] for unit in units)
            elif future.status == "error":
                error = future.exception()
                reason = f"task died: {type(error).__name__}: {error}".splitlines()[0]
                yield _died_or_full(units, reason, run, broken)
            elif segment is not None and future not in stitches:
                name = units[0].key
                if name not in broken:
                    finished = segments_done.setdefault(name, [])
                    finished.append(future)
                    if len(finished) == segment.count and not stop.is_set():
                        del segments_done[name]
                        stitched = client.submit(_stitch, finished, modality, store,
                                                 run.options.dtype, pure=False,
                                                 key=f"vidfeat-stitch-{units[0].video.video_id}-"
                                                     f"{time.time_ns()}",
                                                 **_where_it_ran(client, future))
                        stitches.add(stitched)
                        in_flight[stitched] = units
                        continue  # the stitch takes this slot
            else:
                stitches.discard(future)
                yield future.result()  # a TaskReport, or the StoreFullError a task met
            submit_next()


def _where_it_ran(client: Any, future: Any) -> dict[str, Any]:
    """``submit`` arguments for a task to run on the worker that ran ``future``, whose task
    slot has just come free (or elsewhere, should that worker be gone); none when the
    scheduler cannot say. A stitch goes there: left to Dask, it goes where most of its
    segments' rows are, which can be a worker in the middle of a model task while this one
    waits idle for the stitch to end (seen: 2.7 s of a 27 s run on 2 workers)."""
    try:
        workers = list(client.who_has([future]).get(future.key, ()))
    except Exception as error:  # the scheduler's view only places the stitch; it still runs
        log.debug("where %s ran is unknown: %s", future.key, error)
        workers = []
    return {"workers": workers, "allow_other_workers": True} if workers else {}


class _TaskWatch:
    """Which tasks have run longer than ``timeout`` on a worker (time in the scheduler's
    queue excluded); those are cancelled and their worker restarted, since a thread stuck in a
    decode cannot be stopped any other way."""

    def __init__(self, client: Any, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        self.running_since: dict[str, tuple[float, str]] = {}  # key -> (start, worker)

    def expired(self, in_flight: Collection[Any], done: set[Any]) -> list[Any]:
        if not self.timeout:
            return []
        now = time.monotonic()
        for worker, keys in self.client.processing().items():
            for key in keys:
                self.running_since.setdefault(str(key), (now, worker))
        expired = [future for future in in_flight if future not in done
                   and now - self.running_since.get(future.key, (now, ""))[0] > self.timeout]
        stuck_workers = {self.running_since[future.key][1] for future in expired}
        if expired:
            self.client.cancel(expired, force=True)
            try:
                self.client.restart_workers(sorted(stuck_workers), timeout=30)
            except Exception as error:  # the scheduler drops it when it stops answering
                log.warning("could not restart the stuck worker(s) %s: %s",
                            sorted(stuck_workers), error)
        return expired


def _died_or_full(units: list[WorkUnit], reason: str, run: PreparedRun, broken: set[str]
                  ) -> TaskReport | StoreFullError:
    try:
        return _died(units, reason, run, broken)
    except StoreFullError as error:
        return error


def _died(units: list[WorkUnit], reason: str, run: PreparedRun, broken: set[str]
          ) -> TaskReport:
    report = TaskReport()
    failed = []
    for unit in units:
        if unit.key in broken:
            continue
        if unit.segment is not None:
            broken.add(unit.key)
        failed.append((unit.video, list(unit.features), reason))
    if failed:
        shard, report.outcomes = _failures(failed, run)
        report.shards.append(shard)
    return report


