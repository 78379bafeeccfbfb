"""A human-readable summary of a store, or of one video in it; its failures; its runs."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from vidfeat.storage.reader import FeatureStore, open_store
from vidfeat.storage.runs import newest_report, read_reports
from vidfeat.storage.schema import FeatureEntry, Status

EXAMPLES_SHOWN = 3


def summarize(path: str | Path, video_id: str | None = None) -> str:
    """Counts per feature, loud warnings, and failures; or one video's details."""
    with open_store(path) as store:
        entries = store.entries()
        if video_id is not None:
            return _video_details(store, video_id)
        lines = [
            f"store: {store.path}" + (" (merged file)" if store.merged else ""),
            f"videos: {len({e.video_id for e in entries})} "
            f"({len(store.videos())} with features), "
            f"shards: {len({e.shard for e in entries})}",
            "",
            f"{'feature':<16}{'videos':>8}{'rows':>10}{'min':>6}{'max':>7}{'dim':>6}"
            f"  {'dtype':<8}{'MB':>9}  configs",
        ]
        ok_by_feature: dict[str, list[FeatureEntry]] = defaultdict(list)
        for entry in entries:
            if entry.status == Status.OK:
                ok_by_feature[entry.feature].append(entry)
        warnings = []
        for feature, ok in sorted(ok_by_feature.items()):
            rows = [e.rows for e in ok]
            megabytes = sum(e.rows * e.dim * np.dtype(e.dtype).itemsize for e in ok) / 1e6
            configs = Counter(e.config_hash for e in ok)
            lines.append(
                f"{feature:<16}{len(ok):>8}{sum(rows):>10}{min(rows):>6}{max(rows):>7}"
                f"{_joined(e.dim for e in ok):>6}  {_joined(e.dtype for e in ok):<8}"
                f"{megabytes:>9.1f}  {len(configs)}"
            )
            if len(configs) > 1:
                shares = ", ".join(f"{h or '(none)'}: {n} videos"
                                   for h, n in configs.most_common())
                warnings.append(f"!!! MIXED CONFIGURATIONS in {feature}: {shares}; "
                                "its features are not comparable across videos")
            random = sum(e.random_weights for e in ok)
            if random:
                warnings.append(f"!!! RANDOM WEIGHTS — NOT REAL FEATURES: {feature} "
                                f"({random} of {len(ok)} videos)")
        lines += ["", *warnings] if warnings else []
        lines += _failures(entries)
    return "\n".join(lines)


def _failures(entries: list[FeatureEntry]) -> list[str]:
    """Failed and skipped features grouped by reason, with a few example videos each."""
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for entry in entries:
        if entry.status != Status.OK:
            groups[entry.status, entry.feature, entry.reason].append(entry.video_id)
    if not groups:
        return []
    lines = ["", "failures and skips:"]
    for (status, feature, reason), videos in sorted(groups.items()):
        examples = ", ".join(sorted(videos)[:EXAMPLES_SHOWN])
        more = f", ... ({len(videos)} videos)" if len(videos) > EXAMPLES_SHOWN else ""
        lines.append(f"  {status:<8}{feature:<16}{reason}  [{examples}{more}]")
    return lines


def _video_details(store: FeatureStore, video_id: str) -> str:
    lines = [f"video: {video_id}"]
    lines += [f"  {key}: {value}" for key, value in sorted(store.attrs(video_id).items())]
    for entry in sorted((e for e in store.entries() if e.video_id == video_id),
                        key=lambda e: e.feature):
        if entry.status == Status.OK:
            times = store.times(video_id, entry.feature)
            span = f"{times[0, 0]:.3f}-{times[-1, 1]:.3f} s" if len(times) else "no rows"
            lines.append(f"{entry.feature}: [{entry.rows}, {entry.dim}] {entry.dtype}, {span}"
                         + ("  !!! RANDOM WEIGHTS — NOT REAL FEATURES"
                            if entry.random_weights else ""))
        else:
            lines.append(f"{entry.feature}: {entry.status}: {entry.reason}")
        attrs = store.attrs(video_id, entry.feature)
        lines += [f"  {key}: {value}" for key, value in sorted(attrs.items())
                  if key not in ("feature", "status", "reason")]
    return "\n".join(lines)


def _joined(values: object) -> str:
    return "/".join(sorted({str(v) for v in values}))


def failures_listing(path: str | Path) -> str:
    """Every video and feature whose latest extraction failed, with the reason and the file:
    one tab-separated line each (``video_id feature reason source_path``), from the index,
    then those the newest run refused before extracting (a video id the store holds for
    another file) from its report: storing such a failure under the id would hide the other
    file's rows. Empty when none failed."""
    with open_store(path) as store:
        failed = [(outcome, store.attrs(outcome.video_id).get("source_path", ""))
                  for outcome in store.failures() if outcome.status == Status.FAILED]
        merged = store.merged
    newest = None if merged else newest_report(path)
    listed = {(outcome.video_id, outcome.feature) for outcome, _ in failed}
    failed += [(outcome, source) for outcome, source in (newest.failed() if newest else [])
               if (outcome.video_id, outcome.feature) not in listed]
    return "\n".join(f"{outcome.video_id}\t{outcome.feature}\t{outcome.reason}\t{source}"
                     for outcome, source in failed)


def runs_listing(path: str | Path) -> str:
    """One line per run recorded in the store, oldest first."""
    reports = read_reports(path)
    return "\n".join(report.line() for report in reports) if reports else "no runs recorded"
