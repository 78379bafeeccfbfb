"""Joining a long video's segments into the rows an unsplit run gives.

Clip rows need nothing: each segment decoded the frames that complete its clips. Frame rows
end where the next row starts, and a segment's last row's successor is in the next segment:
those ends are set here, which is what the unsplit sampler does when it takes the next row.
"""

from __future__ import annotations

import numpy as np

from vidfeat.pipeline.records import SegmentPart, TaskReport
from vidfeat.storage.schema import FeatureRecord, Status, VideoRecord
from vidfeat.storage.writer import write_shard


def frame_row_ends(times: np.ndarray, video_end: float) -> np.ndarray:
    """Each row ends when a later row starts (rows sharing a start end together); the last
    rows end with the video (a segment past the last row's may hold no row of its own)."""
    starts = times[:, 0]
    ends = times[:, 1].copy()
    # for each row, the first later row with a greater start
    following = np.searchsorted(starts, starts, side="right")
    inside = following < len(starts)
    ends[inside] = starts[following[inside]]
    ends[~inside] = np.maximum(starts[~inside], video_end)
    return np.column_stack([starts, ends])


def stitch(parts: list[SegmentPart], modality: dict[str, str]) -> VideoRecord:
    parts = sorted(parts, key=lambda part: part.unit.segment.index)  # type: ignore[union-attr]
    first = parts[0]
    records = []
    for position, record in enumerate(first.records):
        pieces = [part.records[position] for part in parts]
        failed = next((piece for piece in pieces if piece.status != Status.OK), None)
        if failed is not None:
            index = pieces.index(failed)
            reason = f"segment {index + 1}/{len(pieces)}: {failed.reason}"
            records.append(FeatureRecord(record.feature, failed.status, reason=reason,
                                         attrs=failed.attrs))
            continue
        data = np.concatenate([piece.data for piece in pieces])  # type: ignore[misc]
        times = np.concatenate([piece.times for piece in pieces])  # type: ignore[misc]
        if modality[record.feature] == "frames" and len(times):
            times = frame_row_ends(times, parts[-1].end)
        if not len(data):
            records.append(FeatureRecord(record.feature, Status.FAILED, attrs=record.attrs,
                                         reason="no rows: the video is too short for this "
                                                "extractor"))
            continue
        attrs = dict(record.attrs, segments=len(pieces))
        if "decode_device" in attrs:  # a worker whose GPU decode failed did its parts on the CPU
            attrs["decode_device"] = ",".join(sorted({p.attrs["decode_device"] for p in pieces}))
        records.append(FeatureRecord(record.feature, Status.OK, data=data, times=times,
                                     attrs=attrs))
    return VideoRecord(first.unit.video.video_id, first.attrs, records)


def stitch_and_write(parts: list[SegmentPart], modality: dict[str, str], store: str,
                     dtype: str) -> TaskReport:
    video = stitch(parts, modality)
    unit = parts[0].unit
    shard = write_shard(store, None, [video], dtype=dtype)
    model_seconds: dict[str, float] = {}
    for part in parts:
        for name, seconds in part.model_seconds.items():
            model_seconds[name] = model_seconds.get(name, 0.0) + seconds
    report = TaskReport(shards=[shard], frames=sum(part.frames for part in parts),
                        seconds=sum(part.seconds for part in parts))
    report.add_video(unit.video.video_id, video.features, model_seconds)
    return report
