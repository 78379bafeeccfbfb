"""Run reports: one JSON file per extraction run in ``DIR/runs/``, read back by ``inspect --runs``.

A report is built from the run's outcomes (``schema.Outcome``: one per video and feature) and
written atomically as ``runs/<start, UTC>-<host>-<pid>.json``::

    {"format": "vidfeat-run", "version": 1, "host", "pid", "started", "ended" (ISO 8601, UTC),
     "seconds", "command" [argv], "configuration" {...}, "exit_code", "interrupted",
     "videos":   {"total", "done", "up_to_date", "skipped", "failed", "not_started"},
     "features": {"ok", "up_to_date", "skipped", "failed"},
     "throughput": {feature: {"videos", "rows", "seconds", "videos_per_s", "rows_per_s"}},
     "failures": [{"video_id", "feature", "reason", "source_path"}, ...],
     "skips":    [{"video_id", "feature", "reason", "source_path"}, ...]}

A video counts as failed when any of its features failed, as up to date when all were, as
skipped when all were skipped or up to date, and as done otherwise; a video of the run with no
outcome yet (a run interrupted, or still running) as not started.
"""

from __future__ import annotations

import json
import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vidfeat.errors import StoreError
from vidfeat.storage.files import replace_atomically
from vidfeat.storage.schema import Outcome, Status

RUNS_DIR = "runs"
REPORT_FORMAT = "vidfeat-run"
REPORT_VERSION = 1


@dataclass
class RunRecord:
    """A run as recorded in the store."""

    started: str
    ended: str
    seconds: float
    host: str
    pid: int
    command: list[str]
    configuration: dict[str, Any]
    exit_code: int | None
    interrupted: bool
    videos: dict[str, int]
    features: dict[str, int]
    throughput: dict[str, dict[str, float]]
    failures: list[dict[str, str]] = field(default_factory=list)
    skips: list[dict[str, str]] = field(default_factory=list)
    #: reads of videos by URL or in tars: {"requests", "bytes", "retries"} ({}: none)
    remote: dict[str, int] = field(default_factory=dict)

    def failed(self) -> list[tuple[Outcome, str]]:
        """The run's failures, each with its video's file."""
        return [(Outcome(f["video_id"], f["feature"], Status.FAILED, f["reason"]),
                 f["source_path"]) for f in self.failures]

    def line(self) -> str:
        """One line for ``inspect --runs``."""
        counts = self.videos
        state = ("interrupted" if self.interrupted
                 else "running?" if self.exit_code is None else f"exit {self.exit_code}")
        return (f"{self.started}  {_duration(self.seconds):>8}  {state:<11}  "
                f"videos {counts.get('total', 0)}: done {counts.get('done', 0)}, "
                f"up to date {counts.get('up_to_date', 0)}, "
                f"skipped {counts.get('skipped', 0)}, failed {counts.get('failed', 0)}"
                + (f", not started {counts['not_started']}" if counts.get("not_started") else "")
                + "  "
                f"{self.host}:{self.pid}  {' '.join(self.command)}")


def build_report(outcomes: Iterable[Outcome], *, started: float, ended: float,
                 command: list[str], configuration: dict[str, Any],
                 exit_code: int | None = None, interrupted: bool = False,
                 videos_total: int = 0, remote: dict[str, int] | None = None,
                 rows: Mapping[str, int] | None = None,
                 model_seconds: Mapping[str, float] | None = None,
                 paths: Mapping[str, str] | None = None) -> RunRecord:
    """The report of a run from its outcomes; ``started``/``ended`` are ``time.time()``;
    ``videos_total``: the run's videos, with those that have no outcome yet; ``rows`` and
    ``model_seconds``: per feature, what its extracted videos gave and cost; ``paths``: the
    file of each video a failure or skip names."""
    outcomes = list(outcomes)
    paths = paths or {}
    by_video: dict[str, set[str]] = defaultdict(set)
    features: dict[str, int] = {"ok": 0, "up_to_date": 0, "skipped": 0, "failed": 0}
    spent: dict[str, dict[str, float]] = defaultdict(lambda: {"videos": 0, "rows": 0,
                                                              "seconds": 0.0})
    failures, skips = [], []
    for outcome in outcomes:
        by_video[outcome.video_id].add(outcome.status)
        features[outcome.status] = features.get(outcome.status, 0) + 1
        listed = {"video_id": outcome.video_id, "feature": outcome.feature,
                  "reason": outcome.reason, "source_path": paths.get(outcome.video_id, "")}
        if outcome.status == Status.FAILED:
            failures.append(listed)
        elif outcome.status == Status.SKIPPED:
            skips.append(listed)
        elif outcome.status == Status.OK:
            spent[outcome.feature]["videos"] += 1
    for name, totals in spent.items():
        totals["rows"] = (rows or {}).get(name, 0)
        totals["seconds"] = (model_seconds or {}).get(name, 0.0)
    total = max(videos_total, len(by_video))
    videos = {"total": total, "done": 0, "up_to_date": 0, "skipped": 0, "failed": 0,
              "not_started": total - len(by_video)}
    for statuses in by_video.values():
        if Status.FAILED in statuses:
            videos["failed"] += 1
        elif statuses == {Status.UP_TO_DATE}:
            videos["up_to_date"] += 1
        elif Status.OK not in statuses:
            videos["skipped"] += 1
        else:
            videos["done"] += 1
    throughput = {
        name: {**totals,
               "videos_per_s": round(totals["videos"] / totals["seconds"], 3)
               if totals["seconds"] else 0.0,
               "rows_per_s": round(totals["rows"] / totals["seconds"], 3)
               if totals["seconds"] else 0.0}
        for name, totals in sorted(spent.items())
    }
    return RunRecord(
        started=_iso(started), ended=_iso(ended), seconds=round(ended - started, 3),
        host=socket.gethostname(), pid=os.getpid(), command=list(command),
        configuration=configuration, exit_code=exit_code, interrupted=interrupted,
        videos=videos, features=features, throughput=throughput,
        failures=sorted(failures, key=lambda f: (f["video_id"], f["feature"])),
        skips=sorted(skips, key=lambda f: (f["video_id"], f["feature"])),
        remote=dict(remote or {}),
    )


def write_report(directory: str | Path, report: RunRecord) -> Path:
    """Write ``report`` into the store as ``runs/<start>-<host>-<pid>.json`` (atomically; a
    full disk is StoreFullError). Writing it again (e.g. at the end of a run whose start was
    already recorded) replaces it."""
    runs = Path(directory) / RUNS_DIR
    name = (report.started.replace("-", "").replace(":", "").replace("+0000", "Z")
            + f"-{report.host}-{report.pid}.json")
    content = {"format": REPORT_FORMAT, "version": REPORT_VERSION, **report.__dict__}
    runs.mkdir(exist_ok=True)
    path = runs / name
    replace_atomically(path, json.dumps(content, indent=1, default=str).encode() + b"\n",
                       directory)
    return path


def read_reports(directory: str | Path) -> list[RunRecord]:
    """Every run report in the store, oldest first. Unknown fields (from a newer vidfeat) are
    ignored; a file that is no report is a StoreError naming it."""
    reports = [_read_report(path)
               for path in sorted((Path(directory) / RUNS_DIR).glob("*.json"))]
    return sorted(reports, key=lambda r: r.started)


def newest_report(directory: str | Path) -> RunRecord | None:
    """The report of the run that started last (file names begin with the start time), read
    alone: a store of years of nightly runs holds hundreds of them."""
    paths = sorted((Path(directory) / RUNS_DIR).glob("*.json"))
    return _read_report(paths[-1]) if paths else None


def _read_report(path: Path) -> RunRecord:
    known = set(RunRecord.__dataclass_fields__)
    try:
        content = json.loads(path.read_text())
        if content.get("format") != REPORT_FORMAT:
            raise ValueError(f"format {content.get('format')!r}")
        return RunRecord(**{k: v for k, v in content.items() if k in known})
    except (OSError, ValueError, TypeError) as error:
        raise StoreError(f"{path}: not a readable run report: {error}") from error


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
