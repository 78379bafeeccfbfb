"""decord backend (decord 0.6.0 bundles FFmpeg 4.1: no AV1).

decord rebases its float32 timestamps on the stream start, so frame times come from our own
demux (``timeline.packet_times``), matched to decord's index and checked against its
timestamps. decord indexes every packet, also those the container marks as discarded (frames an
MP4 edit list hides), while its decoder drops them: its frames then shift against its index and
it pads the end with copies of the last frame, so such files are refused, as are MPEG-TS and
MPEG program streams (.mpg), whose frames it returns shifted. decord turns rotated
videos upright itself, but for 90/270 degrees its 0.6.0 wheel can report a wrong channel count
for the rotated frame; the rows are then read from the buffer as laid out.
"""

from __future__ import annotations

from collections.abc import Iterator

import decord
import numpy as np

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.media.frames import TIME_TOLERANCE, Decoded, Wanted, last_line
from vidfeat.media.probe import MediaInfo
from vidfeat.media.remote import local_copy
from vidfeat.media.timeline import PacketTimes, packet_times

ERRORS = (decord.DECORDError,)
_TIMESTAMP_TOLERANCE = 2e-3  # decord keeps float32 seconds
#: containers (FFmpeg demuxer names) whose frames decord returns shifted, with what was measured
_SHIFTED = {
    "mpegts": "MPEG-TS (measured: 23 of 24 frames wrong, H.264 with B-frames)",
    "mpeg": "an MPEG program stream (measured: MPEG-2 video one GOP late, the end padded with "
            "copies of the last frame)",
}


def decode(info: MediaInfo, *, start_time: float | None, threads: int | None,
           device: str, wanted: Wanted | None = None) -> Iterator[Decoded]:
    """Frames in presentation order from the first frame at or after ``start_time``; every
    frame (decord cannot leave out the ones ``wanted`` turns down)."""
    if device != "cpu":
        raise ConfigError(f"{info.path}: the decord wheel on PyPI decodes on the CPU only, not "
                          f"{device!r}; use --decoder torchcodec to decode on a GPU")
    # decord reads a file object whole into memory: a video by URL is spooled to disk
    with local_copy(info.path) as local:
        yield from _decode(info, local, start_time, threads)


def _decode(info: MediaInfo, local: str, start_time: float | None, threads: int | None
            ) -> Iterator[Decoded]:
    packets = packet_times(local)
    if packets.hidden.any():
        raise DecodeError(f"{info.path}: decord 0.6.0 returns wrong frames for a video whose "
                          f"container hides {packets.hidden.sum()} frames (edit list or "
                          f"discarded packets); decode it with --decoder pyav")
    for demuxer in packets.container.split(","):
        if demuxer in _SHIFTED:
            raise DecodeError(f"{info.path}: decord 0.6.0 returns shifted frames for "
                              f"{_SHIFTED[demuxer]}; decode it with --decoder pyav")
    try:
        reader = decord.VideoReader(local, ctx=decord.cpu(0), num_threads=threads or 0)
    except decord.DECORDError as error:
        raise DecodeError(f"{info.path}: decord cannot open it: {last_line(error)}") from error
    # decord 0.6.0 loops forever past the last decodable frame when the header over-counts
    count = min(len(reader), len(packets.times))
    if count:
        _check_alignment(info, reader, packets.times, count)
    times = packets.times
    durations = np.diff(times, append=np.nan)
    nominal = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
    first = 0 if start_time is None else int(np.searchsorted(times[:count],
                                                             start_time - TIME_TOLERANCE))
    if first >= count:
        return
    begin = first if _seeks_exactly(reader, packets) else 0
    reader.seek_accurate(begin)
    for index in range(begin, count):
        image = reader.next().asnumpy()
        if index < first:
            continue
        duration = durations[index] if np.isfinite(durations[index]) else nominal
        yield Decoded(float(times[index]), float(duration), _three_channels(image), 0)


def _seeks_exactly(reader: decord.VideoReader, packets: PacketTimes) -> bool:
    """decord numbers keyframes by decode order and seeks by that number as if it were a
    presentation index: right when they agree (closed GOPs), frames shifted when they do not
    (an open GOP's leading frames follow their keyframe in decode order; measured: every frame
    after such a seek was wrong). Where they disagree, decode from the start instead."""
    keys = [int(key) for key in reader.get_key_indices()]
    return keys == np.flatnonzero(packets.keyframe).tolist()


def _check_alignment(info: MediaInfo, reader: decord.VideoReader, times: np.ndarray,
                     count: int) -> None:
    stamps = reader.get_frame_timestamp(range(count))[:, 0].astype(np.float64)
    offset = stamps[0] - times[0]
    if np.abs(stamps - times[:count] - offset).max() > _TIMESTAMP_TOLERANCE:
        raise DecodeError(f"{info.path}: decord's frame index does not match the container's "
                          f"packet timestamps; decode it with --decoder pyav")


def _three_channels(image: np.ndarray) -> np.ndarray:
    if image.shape[2] == 3:
        return image
    height, width, _ = image.shape
    return np.ascontiguousarray(image.reshape(height, -1)[:, : width * 3].reshape(height, width, 3))
