"""The driver: plan the tasks, run them on Dask with backpressure, index the shards, report.

Exit codes (see README): 0 every requested feature is in the store (a video without audio has
its vggish recorded as skipped), 1 some videos or features failed (each with its reason in the
store and the report), 2 bad usage or configuration (nothing was extracted), 3 the run itself
broke (cluster unreachable, store unwritable).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vidfeat.errors import ConfigError
from vidfeat.extractors._api import get_extractor
from vidfeat.pipeline.corpus import VideoSource, discover, fingerprint
from vidfeat.pipeline.tasks import ExtractorPool, ExtractorSpec, TaskReport, VideoTask, run_task
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.schema import FeatureRecord, VideoRecord
from vidfeat.storage.writer import create_store, write_shard

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3


@dataclass
class RunOptions:
    features: list[str] = field(default_factory=lambda: ["resnet152", "c3d", "vggish"])
    workers: int = 2
    scheduler: str | None = None
    device: str = "auto"
    weights_dir: str | None = None
    random_weights: bool = False
    weights_files: dict[str, str] = field(default_factory=dict)
    extractor_options: dict[str, dict] = field(default_factory=dict)
    dtype: str = "float16"
    batch_size: int = 16
    overwrite: bool = False
    limit: int | None = None
    progress: bool = True


@dataclass
class RunReport:
    videos: int = 0
    up_to_date: int = 0
    extracted: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # video, feature, reason
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    random_weights: bool = False
    failed_videos: set[str] = field(default_factory=set)

    def add(self, result: TaskReport) -> None:
        self.frames += result.frames
        for name, (status, reason, _) in result.status.items():
            if status == "failed":
                self.failed.append((result.video_id, name, reason))
                self.failed_videos.add(result.video_id)
            elif status == "skipped":
                self.skipped.append((result.video_id, name, reason))

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failed else EXIT_OK

    def summary(self) -> str:
        failed_videos = len(self.failed_videos)
        lines = [
            f"{self.videos} videos: {self.extracted} extracted, {self.up_to_date} already up to "
            f"date, {failed_videos} with failures; {self.frames} frames decoded in "
            f"{self.seconds:.1f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s)"
        ]
        # skips repeat on a large corpus (every silent video): one line per feature and reason
        skips: dict[tuple[str, str], list[str]] = {}
        for video, feature, reason in self.skipped:
            skips.setdefault((feature, reason), []).append(video)
        lines += [f"  skipped {feature} for {len(videos)} videos: {reason} "
                  f"(e.g. {', '.join(videos[:3])})" for (feature, reason), videos in skips.items()]
        lines += [f"  FAILED {v} {f}: {r}" for v, f, r in self.failed]
        if self.random_weights:
            lines.append("WARNING: RANDOM WEIGHTS were used: these are not real features")
        return "\n".join(lines)


def _specs(options: RunOptions) -> dict[str, ExtractorSpec]:
    unknown = set(options.weights_files) - set(options.features)
    unknown |= set(options.extractor_options) - set(options.features)
    if unknown:
        raise ConfigError(f"options given for extractors not in --features: {sorted(unknown)}")
    return {name: ExtractorSpec(name, dict(options.extractor_options.get(name, {})),
                                options.weights_files.get(name), options.random_weights,
                                options.weights_dir)
            for name in options.features}


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


def plan(videos: list[VideoSource], store: Path, specs: dict[str, ExtractorSpec],
         options: RunOptions, report: RunReport) -> list[VideoTask]:
    hashes = {name: s.describe().config_hash() for name, s in specs.items()}
    modality = {name: get_extractor(name).modality for name in specs}
    index = StoreIndex(store)
    tasks = []
    for video in videos:
        try:
            todo = list(hashes) if options.overwrite else _features_to_extract(video, index, hashes)
        except ConfigError as error:
            report.failed.extend((video.video_id, name, str(error)) for name in hashes)
            report.failed_videos.add(video.video_id)
            continue
        if not todo:
            report.up_to_date += 1
        for kind in ("visual", "audio"):
            names = [n for n in todo if (modality[n] == "audio") == (kind == "audio")]
            if names:
                tasks.append(VideoTask(
                    video, kind, tuple(names), str(store),
                    _shard_name(video.video_id, kind, [hashes[n] for n in names]),
                    options.dtype, options.batch_size,
                ))
    return tasks


@contextmanager
def _client(options: RunOptions) -> Iterator[object]:
    from distributed import Client, LocalCluster

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # distributed logs every worker start/stop at INFO: noise next to the progress bar
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if options.scheduler:
        with Client(options.scheduler, timeout="30s") as client:
            yield client
        return
    with LocalCluster(n_workers=options.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def _failure_shard(task: VideoTask, reason: str) -> str:
    """A task that died (worker killed, crash) still leaves its failure in the store."""
    records = [FeatureRecord(name, "failed", reason=reason) for name in task.features]
    attrs = {"source_path": task.video.path, "video_id": task.video.video_id}
    return write_shard(task.store, task.shard_name, [VideoRecord(task.video.video_id, attrs,
                                                                 records)], dtype=task.dtype)


def run_extract(sources: list[str], store: str | Path, options: RunOptions) -> RunReport:
    """Extract ``options.features`` from the videos named by ``sources`` into ``store``."""
    from tqdm import tqdm

    if options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {options.workers}")
    if options.dtype not in ("float16", "float32"):
        raise ConfigError(f"--dtype must be float16 or float32, got {options.dtype!r}")
    videos = discover(sources, options.limit)
    specs = _specs(options)
    if not options.scheduler:
        from vidfeat.pipeline.tasks import resolve_device

        resolve_device(options.device)  # refuse --device cuda on a machine without one now
    store = create_store(store)
    StoreIndex(store).add_unindexed()  # a killed driver's finished work is not done again
    report = RunReport(videos=len(videos), random_weights=options.random_weights)
    tasks = plan(videos, store, specs, options, report)
    plugin_name = "vidfeat-" + hashlib.sha256(repr(sorted(specs.items())).encode()).hexdigest()[:12]
    threads = None if options.scheduler else max(1, (os.cpu_count() or 1) // options.workers)
    started = time.perf_counter()
    index = StoreIndex(store)
    pending_by_video: dict[str, int] = {}
    for task in tasks:
        pending_by_video[task.video.video_id] = pending_by_video.get(task.video.video_id, 0) + 1
    with _client(options) as client, tqdm(total=len(pending_by_video), unit="video",
                                          disable=not options.progress, smoothing=0) as bar:
        client.register_plugin(_extractor_plugin(plugin_name, specs, options.device, threads))
        try:
            for result in _run_tasks(client, tasks, plugin_name):
                index.add_shard(result.shard)
                report.add(result)
                pending_by_video[result.video_id] -= 1
                if not pending_by_video[result.video_id]:
                    report.extracted += result.video_id not in report.failed_videos
                    bar.update(1)
                elapsed = time.perf_counter() - started
                bar.set_postfix(failed=len(report.failed_videos),
                                fps=f"{report.frames / max(elapsed, 1e-9):.1f}", refresh=False)
        finally:
            # a shared scheduler's workers must not keep this run's models in memory
            client.unregister_worker_plugin(plugin_name)
    report.seconds = time.perf_counter() - started
    return report


def _run_tasks(client: object, tasks: list[VideoTask], plugin_name: str
               ) -> Iterator[TaskReport]:
    """Run ``tasks`` with about two per worker thread in flight (backpressure: a new task is
    submitted as each one finishes); yield their reports as they complete. A task that dies
    (worker killed, crash) still yields a report, and leaves its failure in the store."""
    from distributed import as_completed

    queue = list(reversed(tasks))
    futures: dict[object, VideoTask] = {}
    completed = as_completed()

    def submit() -> None:
        task = queue.pop()
        key = f"{task.shard_name.split('/')[-1]}-{time.time_ns()}"
        future = client.submit(_run_on_worker, task, plugin_name, pure=False, key=key)
        futures[future] = task
        completed.add(future)

    for _ in range(min(max(2, 2 * sum(client.nthreads().values())), len(queue))):
        submit()
    for future in completed:
        task = futures.pop(future)
        try:
            yield future.result()
        except Exception as error:  # the task never reported: record why, go on
            reason = f"task died: {type(error).__name__}: {error}".splitlines()[0]
            yield TaskReport(task.video.video_id, task.kind, _failure_shard(task, reason),
                             {name: ("failed", reason, 0) for name in task.features})
        if queue:
            submit()


def _extractor_plugin(name: str, specs: dict[str, ExtractorSpec], device: str,
                      threads: int | None) -> object:
    """A worker plugin that gives each worker process one ExtractorPool for this run; the models
    load on a worker's first task and stay loaded for the rest."""
    from distributed import WorkerPlugin

    class ExtractorPlugin(WorkerPlugin):
        def setup(self, worker: object) -> None:
            self.pool = ExtractorPool(specs, device, threads)

    plugin = ExtractorPlugin()
    plugin.name = name
    return plugin


def _run_on_worker(task: VideoTask, plugin_name: str) -> TaskReport:
    from distributed import get_worker

    return run_task(task, get_worker().plugins[plugin_name].pool)
