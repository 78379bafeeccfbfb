"""torchcodec backend: the system's FFmpeg libraries, on the CPU or on a GPU (NVDEC).

``seek_mode="exact"`` scans the file's packets once when the decoder opens, so frame indices,
times and keyframes come from the packets, right for variable frame rate (the "approximate"
mode derives them from the average frame rate). Frames are read by index in chunks
(``get_frames_played_in_range`` also returns a frame still showing at a chunk's start, so time
chunks overlap); a window's first index comes from ``frame_times`` and the times torchcodec
returns are checked against it. torchcodec (since 0.11) turns frames upright by the
display matrix itself, so frames come without rotation left to apply.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torchcodec.decoders import VideoDecoder

from vidfeat.errors import DecodeError, DeviceDecodeError
from vidfeat.media.frames import TIME_TOLERANCE, Decoded, Wanted, last_line
from vidfeat.media.probe import MediaInfo
from vidfeat.media.remote import local_copy
from vidfeat.media.timeline import frame_times

ERRORS = (RuntimeError,)
_CHUNK_FRAMES = 32
_CHUNK_BYTES = 64 << 20  # a kept frame keeps its chunk's tensor alive: bound it for 4K


def decode(info: MediaInfo, *, start_time: float | None, threads: int | None,
           device: str, wanted: Wanted | None = None) -> Iterator[Decoded]:
    """Frames with presentation time from ``start_time`` on, in chunks of consecutive frames,
    as H x W x 3 uint8 tensors on ``device`` (kept as tensors on the CPU too, so the CPU path
    runs the code a GPU decode does); every frame, whatever ``wanted`` says. Raises
    DeviceDecodeError when the file cannot be opened on a device other than the CPU: the caller
    may decode it on the CPU instead."""
    # torchcodec's exact mode reads a file object through once to index it, then again to
    # decode: a video by URL is spooled to disk and read from there
    with local_copy(info.path) as local:
        yield from _decode(info, local, start_time, threads, device)


def _decode(info: MediaInfo, local: str, start_time: float | None, threads: int | None,
            device: str) -> Iterator[Decoded]:
    on_cpu = str(device) == "cpu"
    try:
        decoder = VideoDecoder(local, dimension_order="NHWC", seek_mode="exact",
                               num_ffmpeg_threads=0 if threads is None else threads,
                               device=device)
    except (RuntimeError, ValueError) as error:
        failure = DecodeError if on_cpu else DeviceDecodeError
        raise failure(f"{info.path}: torchcodec cannot open it on {device}: "
                      f"{last_line(error)}") from error
    metadata = decoder.metadata
    count = len(decoder)
    first = 0
    expected = None
    if start_time is not None:
        expected = frame_times(local)
        first = int(np.searchsorted(expected, start_time - TIME_TOLERANCE))
    frame_bytes = max(metadata.width or 1, 1) * max(metadata.height or 1, 1) * 3
    chunk = max(1, min(_CHUNK_FRAMES, _CHUNK_BYTES // frame_bytes))
    for begin in range(first, count, chunk):
        try:
            batch = decoder.get_frames_in_range(begin, min(begin + chunk, count))
        except RuntimeError as error:
            if on_cpu or begin != first:
                raise
            # NVDEC may open a file and still refuse its codec or profile
            raise DeviceDecodeError(f"{info.path}: torchcodec cannot decode it on {device}: "
                                    f"{last_line(error)}") from error
        times = [pts - info.start_time for pts in batch.pts_seconds.tolist()]
        if expected is not None and not _same_times(times, expected[begin:begin + len(times)]):
            raise DecodeError(f"{info.path}: torchcodec's frame index does not match the "
                              f"container's packet timestamps; decode it with --decoder pyav")
        durations = batch.duration_seconds.tolist()
        for image, time, duration in zip(batch.data, times, durations, strict=True):
            yield Decoded(time, duration, image, 0)


def _same_times(times: list[float], expected: np.ndarray) -> bool:
    return len(times) == len(expected) and bool(
        np.all(np.abs(np.asarray(times) - expected) <= TIME_TOLERANCE))
