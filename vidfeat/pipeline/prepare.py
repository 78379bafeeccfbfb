"""Deciding what a run extracts, before any task runs: the run's options, its report (one
``Outcome`` per video and feature, and the exit code, ``vidfeat.errors.ExitCode``), and
``prepare_run``, which validates everything, takes the store's run lock and compares each
video with the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from vidfeat.errors import ConfigError, ExitCode
from vidfeat.extractors.precision import check_precision
from vidfeat.extractors.registry import check_extractor_name, check_options
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.host import visible_gpus
from vidfeat.options import RunOptions
from vidfeat.pipeline.confighash import ConfigHashes, Describe, Description, describe_specs
from vidfeat.pipeline.corpus import Rejected, VideoSource, fingerprint, scan
from vidfeat.pipeline.records import TaskReport
from vidfeat.pipeline.sources import remote_fingerprint
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.lock import StoreLock
from vidfeat.storage.schema import INDEX_FILE, SHARD_DIR, Outcome, Status
from vidfeat.storage.store_dir import check_store_path, create_store

RESUME_HINT = "rerun the same command to resume"

log = logging.getLogger(__name__)


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
    #: videos still to do that --limit left for the next run
    beyond_limit: int = 0
    #: up-to-date videos whose float16 rows a --dtype float32 run leaves as they are
    kept_float16: int = 0
    #: the workers' reads of videos by URL or in tars: requests, bytes, retries (remote.py)
    remote: dict[str, int] = field(default_factory=dict)
    #: the file of each video the run extracts or refuses (failures and skips name it)
    paths: dict[str, str] = field(default_factory=dict)
    #: per feature, the rows of the videos it extracted and their model seconds
    rows: dict[str, int] = field(default_factory=dict)
    model_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, outcomes: list[Outcome]) -> None:
        self.outcomes += outcomes

    def add_task(self, task: TaskReport) -> None:
        self.outcomes += task.outcomes
        self.frames += task.frames
        for name, rows in task.rows.items():
            self.rows[name] = self.rows.get(name, 0) + rows
        for name, seconds in task.model_seconds.items():
            self.model_seconds[name] = self.model_seconds.get(name, 0.0) + seconds

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == Status.FAILED]

    @property
    def failed_videos(self) -> set[str]:
        return {o.video_id for o in self.failed}

    @property
    def extracted(self) -> int:
        done = {o.video_id for o in self.outcomes if o.status != Status.UP_TO_DATE}
        return len(done - self.failed_videos)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.PROBLEMS if self.failed else ExitCode.OK

    def summary(self) -> str:
        # an audio-only run, or one with nothing to do, decodes no frame: no frame rate
        speed = (f"{self.frames} frames decoded in {self.seconds:.1f} s "
                 f"({self.frames / max(self.seconds, 1e-9):.1f} frames/s)" if self.frames
                 else f"{self.seconds:.1f} s")
        lines = [
            f"{self.videos} videos: {self.extracted} extracted, {self.up_to_date} already up to "
            f"date, {len(self.failed_videos)} with failures; {speed}"
        ]
        # skips repeat on a large corpus (every silent video): one line per feature and reason
        skips: dict[tuple[str, str], list[str]] = {}
        for outcome in self.outcomes:
            if outcome.status == Status.SKIPPED:
                skips.setdefault((outcome.feature, outcome.reason), []).append(outcome.video_id)
        lines += [f"  skipped {feature} for {len(videos)} videos: {reason} "
                  f"(e.g. {', '.join(videos[:3])})" for (feature, reason), videos in skips.items()]
        lines += [f"  FAILED {o.video_id} {o.feature}: {o.reason}" for o in self.failed]
        if self.remote.get("requests") or self.remote.get("retries"):
            lines.append(f"  read {self.remote['bytes'] / 1e6:.1f} MB in "
                         f"{self.remote['requests']} requests, "
                         f"{self.remote['retries']} retried")
        if self.random_weights:
            lines.append("WARNING: RANDOM WEIGHTS were used: these are not real features")
        if self.kept_float16:
            lines.append(f"--dtype float32: {self.kept_float16} videos up to date keep their "
                         f"float16 rows (--overwrite extracts them again)")
        if self.beyond_limit:
            lines.append(f"--limit: {self.beyond_limit} more videos to do; the same command "
                         f"does the next ones")
        if self.interrupted:
            started = len({o.video_id for o in self.outcomes})
            lines.append(f"interrupted: what finished is stored, {self.videos - started} "
                         f"videos not started; {RESUME_HINT}")
        return "\n".join(lines)


@dataclass
class PreparedRun:
    """A validated run: what to extract from which videos, before any worker exists."""

    store: Path
    options: RunOptions
    specs: dict[str, ExtractorSpec]
    descriptions: dict[str, Description]
    todo: list[tuple[VideoSource, list[str]]]
    report: RunReport
    #: paths that are no regular files: recorded as failed by ``execute``
    rejected: list[Rejected] = field(default_factory=list)
    lock: StoreLock | None = None

    @property
    def hashes(self) -> dict[str, str]:
        """Each feature's configuration hash."""
        return {name: d.config_hash for name, d in self.descriptions.items()}

    def release(self) -> None:
        """Give back the store's run lock (when ``prepare_run`` took it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def extractor_specs(options: RunOptions) -> dict[str, ExtractorSpec]:
    """What each worker builds for the run's features (ConfigError for unknown names)."""
    unknown = set(options.weights_files) - set(options.features)
    unknown |= set(options.extractor_options) - set(options.features)
    if unknown:
        raise ConfigError(f"options given for extractors not in --features: {sorted(unknown)}")
    specs = {}
    for name in options.features:
        check_extractor_name(name)  # now, not on a worker once the cluster has started
        check_options(name, options.extractor_options.get(name, {}))
        extractor_options = dict(options.extractor_options.get(name, {}))
        # precision is a run option that a feature may override: --set c3d.precision=bf16
        precision = check_precision(extractor_options.pop("precision", options.precision))
        compiled = extractor_options.pop("compile", options.compile)
        if not isinstance(compiled, bool):
            raise ConfigError(f"{name}.compile must be true or false, got {compiled!r}")
        specs[name] = ExtractorSpec(name, extractor_options, options.weights_files.get(name),
                                    options.random_weights, options.weights_dir, precision,
                                    compiled)
        if compiled:
            from vidfeat.extractors.checks import check_compiler

            check_compiler()  # the driver's machine; each worker checks its own before a build
    return specs


def unit_key(video_id: str, kind: str, config_hashes: list[str]) -> str:
    combined = hashlib.sha256("".join(config_hashes).encode()).hexdigest()[:10]
    return f"{video_id}.{kind}.{combined}"


def _features_to_extract(video: VideoSource, index: StoreIndex, hashes: dict[str, str]
                         ) -> list[str]:
    """The requested features the store lacks for this video's current content and config."""
    known = index.video(video.video_id)
    if known is None:
        return list(hashes)
    attrs = known.get("attrs", {})
    if video.remote is not None:  # by URL or in a tar: the listing decides, nothing is read
        changed = remote_fingerprint(video.remote) != known.get("fingerprint")
    else:
        stat = os.stat(video.path)
        unchanged_file = (attrs.get("source_path") == video.path
                          and attrs.get("file_size") == stat.st_size
                          and attrs.get("file_mtime_ns") == stat.st_mtime_ns)
        changed = not unchanged_file and fingerprint(video.path) != known.get("fingerprint")
    if changed:
        if attrs.get("source_path") not in (None, video.path):
            raise ConfigError(
                f"video id collision: {video.path} is {video.video_id!r}, which the store "
                f"already holds for {attrs.get('source_path')}"
            )
        return list(hashes)  # the file changed: everything again
    present = index.video_features(video.video_id)
    return [name for name, config_hash in hashes.items()
            if name not in present or present[name].status == Status.FAILED
            or present[name].config_hash != config_hash]


def prepare_run(sources: list[str], store: str | Path, options: RunOptions, *,
                lock: bool = False, describe: Describe = describe_specs) -> PreparedRun:
    """Validate everything and decide what each video needs; creates the store.

    ``lock``: take the store's run lock (``options.wait_lock`` seconds to wait for another
    run, None: forever) before reading the index; the caller releases it
    (``PreparedRun.release``). ``options.retry_failed``: only the features the index records
    as failed for these videos. ``describe``: how the extractors the store does not remember
    are described (in this process by default: torch; a run passes one that asks a worker)."""
    options.check()
    corpus = scan(sources, extensions=options.extensions)
    videos = corpus.videos
    specs = extractor_specs(options)
    if options.device.startswith("cuda") and not visible_gpus():
        # never a silent fall back to the CPU
        raise ConfigError(f"--device {options.device}: no CUDA device visible on this machine")
    check_store_path(store)  # before a worker may be asked to describe the extractors
    remembered = ConfigHashes(Path(store))
    descriptions = remembered.of(specs, describe)
    hashes = {name: description.config_hash for name, description in descriptions.items()}
    store = create_store(store)
    remembered.save(store)
    held = StoreLock(store, wait=options.wait_lock) if lock else None
    if held is not None:
        held.acquire()
    try:
        lost_index = not (store / INDEX_FILE).exists() and _has_shards(store)
        index = StoreIndex(store)
        if held is not None and lost_index:  # deleted, or a store copied without it
            log.warning("%s: the index is missing: rebuilding it from the shards", store)
            index.rebuild()
        elif held is not None:  # the lock says no run is writing: a killed run's shards
            index.recover()     # are indexed (its finished work is not done again)
    except BaseException:
        if held is not None:
            held.release()
        raise
    report = RunReport(videos=len(videos) + len(corpus.rejected),
                       random_weights=options.random_weights,
                       paths={rejected.video_id: rejected.path for rejected in corpus.rejected})
    todo = []
    for video in videos:
        try:
            if options.retry_failed:
                names = _failed_features(video, index, hashes)
                if not names:
                    report.videos -= 1  # not listed as failed: not part of this run
                    continue
            else:
                names = list(hashes) if options.overwrite else _features_to_extract(
                    video, index, hashes)
        except ConfigError as error:
            report.add([Outcome(video.video_id, name, Status.FAILED, str(error))
                        for name in hashes])
            report.paths[video.video_id] = video.path
            continue
        if names:
            todo.append((video, names))
            report.paths[video.video_id] = video.path
        else:
            if options.dtype == "float32" and any(  # rows are not extracted again for a dtype
                    entry.dtype == "float16"
                    for entry in index.video_features(video.video_id).values()):
                report.kept_float16 += 1
            report.up_to_date += 1
            report.add([Outcome(video.video_id, name, Status.UP_TO_DATE) for name in hashes])
    if options.limit is not None and len(todo) > options.limit:
        # the first N videos still to do, not the first N found: a nightly --limit advances
        report.beyond_limit = len(todo) - options.limit
        report.videos -= report.beyond_limit
        todo = todo[:options.limit]
    return PreparedRun(store, options, specs, descriptions, todo, report, corpus.rejected,
                       held)


def _has_shards(store: Path) -> bool:
    with os.scandir(store / SHARD_DIR) as entries:
        return next(entries, None) is not None


def _failed_features(video: VideoSource, index: StoreIndex, hashes: dict[str, str]
                     ) -> list[str]:
    present = index.video_features(video.video_id)
    return [name for name in hashes if name in present and present[name].status == Status.FAILED]
