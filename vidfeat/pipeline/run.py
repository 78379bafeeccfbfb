"""The driver: decide what to extract, plan work units, run them on Dask with backpressure,
stitch split videos, index the shards, report.

``prepare_run`` does everything that can fail on bad input before any worker starts;
``execute`` runs a prepared run on a connected client (jobs/ decides where it comes from).

Exit codes (see README): 0 every requested feature is in the store (a video without audio has
its vggish recorded as skipped), 1 some videos or features failed (each with its reason in the
store and the report), 2 bad usage or configuration (nothing was extracted), 3 the run itself
broke (cluster unreachable, store unwritable or full, store locked by another run), 130 the
run was interrupted (Ctrl-C) after indexing what finished.

``run_extraction`` is the whole nightly run around those two: the store's run lock, the run
report in ``DIR/runs/``, Ctrl-C, per-task timeouts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError, StoreFullError
from vidfeat.extractors._api import check_precision, get_extractor
from vidfeat.extractors.pool import ExtractorSpec, resolve_device
from vidfeat.media import check_decoder
from vidfeat.pipeline.corpus import Rejected, VideoSource, fingerprint, scan
from vidfeat.pipeline.engine import TaskReport, outcomes
from vidfeat.pipeline.plan import Task, WorkUnit, pack, segments, task_seconds
from vidfeat.pipeline.worker import extractor_plugin
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.lock import StoreLock
from vidfeat.storage.runs import build_report, write_report
from vidfeat.storage.schema import SHARD_DIR, FeatureRecord, Outcome, VideoRecord
from vidfeat.storage.writer import TEMP_SUFFIX, create_store, write_shard

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
#: how often the driver looks at Ctrl-C and at tasks running past --task-timeout
POLL_S = 0.5
RESUME_HINT = "rerun the same command to resume"

log = logging.getLogger(__name__)
#: videos probed per probe task: enough to amortise the task overhead
PROBES_PER_TASK = 16


@dataclass
class RunOptions:
    features: list[str] = field(default_factory=lambda: ["resnet152", "c3d", "vggish"])
    device: str = "auto"
    weights_dir: str | None = None
    random_weights: bool = False
    weights_files: dict[str, str] = field(default_factory=dict)
    extractor_options: dict[str, dict] = field(default_factory=dict)
    dtype: str = "float16"
    batch_size: int = 16
    precision: str = "fp32"
    decoder: str = "pyav"
    #: media seconds per task (and per segment of a long video); None: sized by the corpus
    segment_seconds: float | None = None
    #: Dask worker resources a model task needs, e.g. {"GPU": 1}: model tasks then run only
    #: on workers declaring them, while probing and stitching run anywhere
    model_resources: dict[str, float] = field(default_factory=dict)
    overwrite: bool = False
    limit: int | None = None
    progress: bool = True

    def check(self) -> None:
        if not self.features:
            raise ConfigError("--features names no extractor")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype must be float16 or float32, got {self.dtype!r}")
        check_decoder(self.decoder)
        if self.segment_seconds is not None and self.segment_seconds <= 0:
            raise ConfigError(f"segment seconds must be positive, got {self.segment_seconds}")
        check_precision(self.precision)


@dataclass
class RunReport:
    videos: int = 0
    up_to_date: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    random_weights: bool = False
    #: Ctrl-C stopped the run: what finished is indexed, the rest is done by a rerun
    interrupted: bool = False

    def add(self, outcomes: list[Outcome], frames: int = 0) -> None:
        self.outcomes += outcomes
        self.frames += frames

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def failed_videos(self) -> set[str]:
        return {o.video_id for o in self.failed}

    @property
    def extracted(self) -> int:
        done = {o.video_id for o in self.outcomes if o.status != "up_to_date"}
        return len(done - self.failed_videos)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failed else EXIT_OK

    def summary(self) -> str:
        lines = [
            f"{self.videos} videos: {self.extracted} extracted, {self.up_to_date} already up to "
            f"date, {len(self.failed_videos)} with failures; {self.frames} frames decoded in "
            f"{self.seconds:.1f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s)"
        ]
        # skips repeat on a large corpus (every silent video): one line per feature and reason
        skips: dict[tuple[str, str], list[str]] = {}
        for outcome in self.outcomes:
            if outcome.status == "skipped":
                skips.setdefault((outcome.feature, outcome.reason), []).append(outcome.video_id)
        lines += [f"  skipped {feature} for {len(videos)} videos: {reason} "
                  f"(e.g. {', '.join(videos[:3])})" for (feature, reason), videos in skips.items()]
        lines += [f"  FAILED {o.video_id} {o.feature}: {o.reason}" for o in self.failed]
        if self.random_weights:
            lines.append("WARNING: RANDOM WEIGHTS were used: these are not real features")
        if self.interrupted:
            lines.append(f"interrupted: what finished is stored; {RESUME_HINT}")
        return "\n".join(lines)


@dataclass
class PreparedRun:
    """A validated run: what to extract from which videos, before any worker exists."""

    store: Path
    options: RunOptions
    specs: dict[str, ExtractorSpec]
    hashes: dict[str, str]
    todo: list[tuple[VideoSource, list[str]]]
    report: RunReport
    #: paths that are no regular files: recorded as failed by ``execute``
    rejected: list[Rejected] = field(default_factory=list)
    lock: StoreLock | None = None

    def release(self) -> None:
        """Give back the store's run lock (when ``prepare_run`` took it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _specs(options: RunOptions) -> dict[str, ExtractorSpec]:
    unknown = set(options.weights_files) - set(options.features)
    unknown |= set(options.extractor_options) - set(options.features)
    if unknown:
        raise ConfigError(f"options given for extractors not in --features: {sorted(unknown)}")
    specs = {}
    for name in options.features:
        extractor_options = dict(options.extractor_options.get(name, {}))
        # precision is a run option that a feature may override: --set c3d.precision=bf16
        precision = check_precision(extractor_options.pop("precision", options.precision))
        specs[name] = ExtractorSpec(name, extractor_options, options.weights_files.get(name),
                                    options.random_weights, options.weights_dir, precision)
    return specs


def _shard_name(video_id: str, kind: str, config_hashes: list[str]) -> str:
    # a short fan-out directory keeps any one directory small on a large corpus
    bucket = hashlib.sha1(video_id.encode()).hexdigest()[:2]
    combined = hashlib.sha256("".join(config_hashes).encode()).hexdigest()[:10]
    return f"{bucket}/{video_id}.{kind}.{combined}"


def _features_to_extract(video: VideoSource, index: StoreIndex, hashes: dict[str, str]
                         ) -> list[str]:
    """The requested features the store lacks for this video's current content and config."""
    known = index.video(video.video_id)
    if known is None:
        return list(hashes)
    attrs = known.get("attrs", {})
    stat = os.stat(video.path)
    unchanged_file = (attrs.get("source_path") == video.path
                      and attrs.get("file_size") == stat.st_size
                      and attrs.get("file_mtime_ns") == stat.st_mtime_ns)
    if not unchanged_file and fingerprint(video.path) != known.get("fingerprint"):
        if attrs.get("source_path") not in (None, video.path):
            raise ConfigError(
                f"video id collision: {video.path} is {video.video_id!r}, which the store "
                f"already holds for {attrs.get('source_path')}"
            )
        return list(hashes)  # the file changed: everything again
    present = index.video_features(video.video_id)
    return [name for name, config_hash in hashes.items()
            if name not in present or present[name].status == "failed"
            or present[name].config_hash != config_hash]


def prepare_run(sources: list[str], store: str | Path, options: RunOptions, *,
                lock: bool = False, wait_lock: float | None = 0.0,
                retry_failed: bool = False) -> PreparedRun:
    """Validate everything and decide what each video needs; creates the store.

    ``lock``: take the store's run lock (``wait_lock`` seconds to wait for another run, None:
    forever) before reading the index; the caller releases it (``PreparedRun.release``).
    ``retry_failed``: only the features the index records as failed for these videos."""
    options.check()
    corpus = scan(sources, options.limit)
    videos = corpus.videos
    specs = _specs(options)
    if options.device != "auto":
        resolve_device(options.device)  # refuse --device cuda on a machine without one now
    hashes = {name: s.describe().config_hash() for name, s in specs.items()}
    store = create_store(store)
    held = StoreLock(store, wait=wait_lock) if lock else None
    if held is not None:
        held.acquire()
    try:
        if held is not None:  # a killed worker's; the lock says no run is writing
            _remove_temporary_files(store)
        index = StoreIndex(store)
        index.add_unindexed()  # a killed driver's finished work is not done again
    except BaseException:
        if held is not None:
            held.release()
        raise
    report = RunReport(videos=len(videos) + len(corpus.rejected),
                       random_weights=options.random_weights)
    todo = []
    for video in videos:
        try:
            if retry_failed:
                names = _failed_features(video, index, hashes)
                if not names:
                    report.videos -= 1  # not listed as failed: not part of this run
                    continue
            else:
                names = list(hashes) if options.overwrite else _features_to_extract(
                    video, index, hashes)
        except ConfigError as error:
            report.add([Outcome(video.video_id, name, "failed", str(error),
                                source_path=video.path) for name in hashes])
            continue
        if names:
            todo.append((video, names))
        else:
            report.up_to_date += 1
            report.add([Outcome(video.video_id, name, "up_to_date", source_path=video.path)
                        for name in hashes])
    return PreparedRun(store, options, specs, hashes, todo, report, corpus.rejected, held)


def _failed_features(video: VideoSource, index: StoreIndex, hashes: dict[str, str]
                     ) -> list[str]:
    present = index.video_features(video.video_id)
    return [name for name in hashes if name in present and present[name].status == "failed"]


def _remove_temporary_files(store: Path) -> None:
    for temp in (store / SHARD_DIR).rglob(f"*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)


# ---- tasks run on workers ------------------------------------------------------------------
def _probe_videos(paths: list[str]) -> list[tuple[Any, str]]:
    from vidfeat.media import probe

    results = []
    for path in paths:
        try:
            results.append((probe(path), ""))
        except Exception as error:  # recorded for the video; the run goes on
            from vidfeat.pipeline.records import reason_of

            results.append((None, reason_of(error)))
    return results


def _frame_times(path: str) -> Any:
    from vidfeat.media.timeline import frame_times

    return frame_times(path)


def _run_units(units: list[WorkUnit], store: str, plugin_name: str, options: RunOptions
               ) -> TaskReport | StoreFullError:
    from vidfeat.pipeline.engine import Engine
    from vidfeat.pipeline.worker import worker_state

    state = worker_state(plugin_name)
    engine = Engine(state.pool, batch_size=options.batch_size, dtype=options.dtype,
                    decoder=options.decoder, decoder_threads=state.torch_threads)
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
def execute(run: PreparedRun, client: Any, *, stop: threading.Event | None = None,
            task_timeout: float | None = None) -> RunReport:
    """Extract ``run.todo`` on ``client``'s workers; every outcome lands in the report.

    ``stop`` set (Ctrl-C): nothing more is submitted, the tasks in flight finish and are
    indexed. ``task_timeout``: a task running longer is abandoned (its worker restarted) and
    its videos recorded as failed. A full disk (StoreFullError) stops the run the same way,
    then leaves the index matching the shards on disk, and is raised."""
    from tqdm import tqdm

    report = run.report
    stop = stop or threading.Event()
    started = time.perf_counter()
    index = StoreIndex(run.store)
    plugin_name = "vidfeat-" + hashlib.sha256(
        repr(sorted(run.specs.items())).encode()).hexdigest()[:12]
    workers = client.scheduler_info().get("workers", {})
    slots_by_host: dict[str, int] = {}
    for worker in workers.values():
        slots_by_host[worker["host"]] = slots_by_host.get(worker["host"], 0) + worker["nthreads"]
    slots = max(1, sum(slots_by_host.values()))
    _register_plugin(client, extractor_plugin(plugin_name, run.specs, run.options.device,
                                              slots_by_host), plugin_name)
    full: StoreFullError | None = None
    indexed = set(index.shards())
    try:
        for rejected in run.rejected:
            video = VideoSource(rejected.video_id, rejected.path)
            shard, failures = _failure(video, list(run.specs), rejected.reason, run)
            index.add_shard(shard)
            indexed.add(shard)
            report.add(failures)
        with tqdm(total=len(run.todo), unit="video", disable=not run.options.progress,
                  smoothing=0) as bar:
            tasks = _plan(run, client, slots, index, report, bar)
            for result in _run_tasks(client, run, tasks, plugin_name, stop, task_timeout):
                if isinstance(result, StoreFullError):
                    full, _ = full or result, stop.set()
                    continue
                if full is None:
                    try:
                        for shard in result.shards:
                            index.add_shard(shard)
                            indexed.add(shard)
                    except StoreFullError as error:
                        full, _ = error, stop.set()
                report.add(result.outcomes, result.frames)
                finished = {o.video_id for o in result.outcomes}
                bar.update(len(finished))
                elapsed = time.perf_counter() - started
                bar.set_postfix(failed=len(report.failed_videos),
                                fps=f"{report.frames / max(elapsed, 1e-9):.1f}", refresh=False)
    except StoreFullError as error:
        full = error
    finally:
        # a shared scheduler's workers must not keep this run's models in memory
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(plugin_name)
    report.seconds = time.perf_counter() - started
    report.interrupted = stop.is_set() and full is None
    if full is not None:
        _remove_unindexed(index, indexed)
        raise full
    return report


def _register_plugin(client: Any, plugin: object, name: str, tries: int = 3) -> None:
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
    """After a full disk: the shards this run wrote but could not index are removed (the
    rerun extracts them again), so that the store verifies. The index itself may not even
    open on a full disk (SQLite's shared memory file), hence ``indexed``, kept by the driver;
    under the run lock, and with the tasks in flight drained, no one else writes shards."""
    for relpath in sorted(set(index.shard_files()) - indexed):
        (index.directory / relpath).unlink(missing_ok=True)
        log.debug("removed %s: written, but the full disk kept it out of the index", relpath)


def run_extraction(sources: list[str], store: str | Path, options: RunOptions,
                   open_cluster: Callable[[], contextlib.AbstractContextManager[Any]], *,
                   wait_lock: float | None = 0.0, task_timeout: float | None = None,
                   retry_failed: bool = False, allowed_failures: int = 2,
                   configuration: dict[str, Any] | None = None) -> RunReport:
    """A whole run under the store's run lock: prepare, open the cluster, execute, with the
    run report written into the store at the start and replaced at the end (also when the
    run breaks). The first Ctrl-C stops submitting and lets the tasks in flight finish (the
    report says ``interrupted``); a second one stops at once (KeyboardInterrupt).
    ``allowed_failures``: deaths of a worker running a task before the task is recorded as
    failed (a video that kills its worker, out of memory say)."""
    import dask
    import distributed  # noqa: F401  (its config defaults, which dask.config.set extends)

    started = time.time()
    run = prepare_run(sources, store, options, lock=True, wait_lock=wait_lock,
                      retry_failed=retry_failed)
    configuration = configuration or {}

    def record(exit_code: int | None, interrupted: bool = False) -> None:
        write_report(run.store, build_report(
            run.report.outcomes, started=started, ended=time.time(), command=sys.argv,
            configuration=configuration, exit_code=exit_code, interrupted=interrupted))

    stop = threading.Event()
    try:
        record(None)
        with _first_interrupt_stops(stop) as spawning, contextlib.ExitStack() as stack:
            with spawning(), dask.config.set(
                    {"distributed.scheduler.allowed-failures": allowed_failures}):
                client = stack.enter_context(open_cluster())
            _register_plugin(client, _ignore_interrupts_plugin(), "vidfeat-ignore-interrupts")
            report = execute(run, client, stop=stop, task_timeout=task_timeout)
        if report.interrupted:
            StoreIndex(run.store).add_unindexed()  # a task finishing as the cluster closed
        record(report.exit_code, report.interrupted)
        return report
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            # the workers are gone: a shard they finished is indexed, one half written removed
            _remove_temporary_files(run.store)
            StoreIndex(run.store).add_unindexed()
            record(EXIT_INTERRUPTED, interrupted=True)
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # a full disk may refuse the report too
            record(EXIT_BROKEN)
        raise
    finally:
        run.release()


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event) -> Iterator[Callable[[], Any]]:
    """While inside: the first SIGINT sets ``stop``, the second raises KeyboardInterrupt.
    Yields a context manager to wrap the cluster's start in: worker processes started inside
    it ignore SIGINT (inherited), so a terminal's Ctrl-C, sent to the whole process group,
    reaches only the driver, which decides."""
    if threading.current_thread() is not threading.main_thread():
        yield contextlib.nullcontext
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\nvidfeat: interrupted: finishing the tasks in flight (Ctrl-C again to stop "
              f"at once); {RESUME_HINT}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def ignoring() -> Iterator[None]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, on_interrupt)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield ignoring
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_interrupts_plugin() -> object:
    from distributed import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        """Workers restarted during the run (after a crash, a timeout) ignore SIGINT too."""

        def setup(self, worker: object) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


def _plan(run: PreparedRun, client: Any, slots: int, index: StoreIndex, report: RunReport,
          bar: Any) -> list[Task | list[WorkUnit]]:
    """Probe the videos on the workers, then cut the work into tasks: packs of units, and one
    task per segment of a long video (a list of WorkUnit of length one, see _run_tasks)."""
    paths = [video.path for video, _ in run.todo]
    chunks = [paths[i:i + PROBES_PER_TASK] for i in range(0, len(paths), PROBES_PER_TASK)]
    probed = [item for chunk, future in zip(chunks, client.map(_probe_videos, chunks,
                                                                pure=False), strict=True)
              for item in _probe_results(chunk, future)]
    modality = {name: get_extractor(name).modality for name in run.specs}
    units: list[WorkUnit] = []
    total = sum(info.duration for info, _ in probed if info is not None)
    seconds = task_seconds(total, slots, run.options.segment_seconds)
    long_videos = []
    for (video, names), (info, error) in zip(run.todo, probed, strict=True):
        if info is None:
            failure = _failure(video, names, error, run)
            index.add_shard(failure[0])
            report.add(failure[1])
            bar.update(1)
            continue
        for kind in ("visual", "audio"):
            features = tuple(n for n in names if (modality[n] == "audio") == (kind == "audio"))
            if not features:
                continue
            unit = WorkUnit(video, kind, features,  # type: ignore[arg-type]
                            _shard_name(video.video_id, kind, [run.hashes[n] for n in features]),
                            info)
            if kind == "visual" and info.has_video and info.duration > 1.5 * seconds:
                long_videos.append(unit)
            else:
                units.append(unit)
    tasks: list[Task | list[WorkUnit]] = list(pack(units, seconds))
    times = client.gather(client.map(_frame_times, [u.video.path for u in long_videos],
                                     pure=False))
    for unit, frame_times in zip(long_videos, times, strict=True):
        align, longest = _clip_alignment(run, unit.features)
        for segment in segments(frame_times, seconds, align, longest):
            tasks.append([WorkUnit(unit.video, unit.kind, unit.features, unit.shard_name,
                                   unit.info, segment)])
    # the longest work first, so the stragglers at the end of a run are short
    return sorted(tasks, key=lambda t: -(t.seconds if isinstance(t, Task) else t[0].seconds))


def _probe_results(paths: list[str], future: Any) -> list[tuple[Any, str]]:
    """A probe task whose workers kept dying (KilledWorker) fails its videos, not the run."""
    try:
        return future.result()
    except Exception as error:
        reason = f"probe task died: {type(error).__name__}: {error}".splitlines()[0]
        return [(None, reason) for _ in paths]


def _clip_alignment(run: PreparedRun, features: tuple[str, ...]) -> tuple[int, int]:
    """Segment starts must be clip starts of every clip feature: a multiple of each stride."""
    import math

    align, longest = 1, 0
    for name in features:
        options = run.specs[name].describe().options()
        if "stride" in options and "clip_len" in options:
            align = math.lcm(align, int(options["stride"]))
            longest = max(longest, int(options["clip_len"]))
    return align, longest


def _failure(video: VideoSource, names: list[str], reason: str, run: PreparedRun
             ) -> tuple[str, list[Outcome]]:
    """A video whose task never reported, or that cannot be probed, still leaves its failure
    in the store."""
    records = [FeatureRecord(name, "failed", reason=reason) for name in names]
    attrs = {"source_path": video.path, "video_id": video.video_id}
    kinds = sorted({"audio" if get_extractor(n).modality == "audio" else "visual"
                    for n in names})
    shard = write_shard(run.store, _shard_name(video.video_id, "+".join(kinds),
                                               [run.hashes[n] for n in names]),
                        [VideoRecord(video.video_id, attrs, records)], dtype=run.options.dtype)
    return shard, [Outcome(video.video_id, r.feature, "failed", reason, source_path=video.path)
                   for r in records]


def _run_tasks(client: Any, run: PreparedRun, tasks: list[Task | list[WorkUnit]],
               plugin_name: str, stop: threading.Event, task_timeout: float | None = None
               ) -> Iterator[TaskReport | StoreFullError]:
    """Run ``tasks`` with about two per worker thread in flight (a new one is submitted as
    each finishes); a long video's segments are stitched once all are done. A task that dies
    (worker killed, crash) or times out still yields a report and leaves its failures in the
    store; one that met a full disk yields its StoreFullError. Once ``stop`` is set nothing
    more is submitted and the tasks in flight are waited for."""
    from distributed import wait

    store = str(run.store)
    modality = {name: get_extractor(name).modality for name in run.specs}
    queue = list(reversed(tasks))
    in_flight: dict[Any, list[WorkUnit]] = {}
    segments_done: dict[str, list[Any]] = {}  # shard name -> finished segment futures
    broken: set[str] = set()
    stitches: set[Any] = set()
    watch = _TaskWatch(client, task_timeout)

    def submit(units: list[WorkUnit]) -> None:
        key = f"vidfeat-{units[0].video.video_id}-{time.time_ns()}"
        future = client.submit(_run_units, units, store, plugin_name, run.options,
                               pure=False, key=key,
                               resources=run.options.model_resources or None)
        in_flight[future] = units

    def submit_next() -> None:
        if queue and not stop.is_set():
            task = queue.pop()
            submit(task.units if isinstance(task, Task) else task)

    for _ in range(min(max(2, 2 * sum(client.nthreads().values())), len(queue))):
        submit_next()
    while in_flight:
        try:
            done = wait(list(in_flight), timeout=POLL_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            done = set()
        for future in watch.expired(in_flight, done):
            units = in_flight.pop(future)
            yield _died_or_full(units, f"timed out after {task_timeout:g} s", run, broken)
            submit_next()
        for future in done:
            units = in_flight.pop(future)
            segment = units[0].segment if len(units) == 1 else None
            if future.status == "error":
                error = future.exception()
                reason = f"task died: {type(error).__name__}: {error}".splitlines()[0]
                yield _died_or_full(units, reason, run, broken)
            elif segment is not None and future not in stitches:
                name = units[0].shard_name
                if name not in broken:
                    finished = segments_done.setdefault(name, [])
                    finished.append(future)
                    if len(finished) == segment.count and not stop.is_set():
                        del segments_done[name]
                        stitched = client.submit(_stitch, finished, modality, store,
                                                 run.options.dtype, pure=False,
                                                 key=f"vidfeat-stitch-{time.time_ns()}")
                        stitches.add(stitched)
                        in_flight[stitched] = units
                        continue  # the stitch takes this slot
            else:
                stitches.discard(future)
                yield future.result()  # a TaskReport, or the StoreFullError a task met
            submit_next()


class _TaskWatch:
    """Which tasks have run longer than ``timeout`` on a worker (time in the scheduler's
    queue excluded); those are cancelled and their worker restarted, since a thread stuck in a
    decode cannot be stopped any other way."""

    def __init__(self, client: Any, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        self.running_since: dict[str, tuple[float, str]] = {}  # key -> (start, worker)

    def expired(self, in_flight: dict[Any, list[WorkUnit]], done: set[Any]) -> list[Any]:
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
    for unit in units:
        if unit.shard_name in broken:
            continue
        if unit.segment is not None:
            broken.add(unit.shard_name)
        shard, failures = _failure(unit.video, list(unit.features), reason, run)
        report.shards.append(shard)
        report.outcomes += failures
    return report


__all__ = ["EXIT_BROKEN", "EXIT_FAILURES", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE",
           "PreparedRun", "RunOptions", "RunReport", "execute", "outcomes", "prepare_run",
           "run_extraction"]
