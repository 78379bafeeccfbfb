"""PyAV backend: libav* through PyAV, frames converted to RGB only when an extractor asks."""

from __future__ import annotations

from collections.abc import Iterator

import av

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.media.frames import TIME_TOLERANCE, Decoded
from vidfeat.media.probe import MediaInfo
from vidfeat.media.remote import open_input

ERRORS = (av.FFmpegError,)


def decode(info: MediaInfo, *, start_time: float | None, threads: int | None,
           device: str) -> Iterator[Decoded]:
    """Frames from the keyframe at or before ``start_time`` until the caller stops asking. Not
    rotated: ``Frame`` turns them."""
    if device != "cpu":
        raise ConfigError(f"{info.path}: the pyav decoder runs on the CPU only, not {device!r}; "
                          f"use --decoder torchcodec to decode on a GPU")
    try:
        container = av.open(open_input(info.path))
    except av.FFmpegError as error:
        raise DecodeError(f"{info.path}: cannot open: {error}") from error
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads is not None:
            stream.codec_context.thread_count = threads
        base = float(stream.time_base) if stream.time_base else 0.0
        nominal = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
        if start_time is None or not base:
            frames = _decoded(container, stream)
        else:
            frames = _from_keyframe_before(container, stream, start_time + info.start_time)
        previous: float | None = None
        for frame in frames:
            if frame.pts is not None and base:
                time = frame.pts * base - info.start_time
            else:
                time = (previous + nominal) if previous is not None else 0.0
            previous = time
            duration = frame.duration * base if frame.duration and base else nominal
            yield Decoded(time, duration, frame, info.rotation)


def _decoded(container: av.container.InputContainer, stream: av.VideoStream
             ) -> Iterator[av.VideoFrame]:
    """``container.decode(stream)`` without the empty packets Ogg Theora uses for "the previous
    frame again": FFmpeg 8 refuses them (EINVAL) where FFmpeg's own ffmpeg drops them, and the
    previous frame stays on screen until the next one's time either way. The demuxer's last,
    unstamped empty packet still flushes the decoder."""
    for packet in container.demux(stream):
        if packet.size == 0 and packet.pts is not None:
            continue
        yield from packet.decode()


def _from_keyframe_before(container: av.container.InputContainer, stream: av.VideoStream,
                          start: float) -> Iterator[av.VideoFrame]:
    """Decode from a keyframe whose presentation time is at or before ``start`` (absolute
    seconds). A seek lands on a keyframe by decode time, which can be after ``start`` in
    presentation time (B-frames), and an open GOP's leading frames cannot be decoded from their
    keyframe: the first frame out must be a keyframe shown no later than ``start``, else seek
    again from further back."""
    base = float(stream.time_base)
    first_shown = (stream.start_time or 0) * base
    back = 0.0
    while True:
        target = start - back
        container.seek(int(target / base), stream=stream, backward=True)
        frames = _decoded(container, stream)
        head = next(frames, None)
        # MPEG-TS seeks can land past the target (on a later keyframe, or at the end with
        # nothing left to decode): then seek again from further back
        if head is not None:
            shown = head.pts * base if head.pts is not None else first_shown
            # at the stream's start the first frame needs no keyframe flag (some muxers omit it)
            at_start = target <= first_shown and shown <= max(start, first_shown) + TIME_TOLERANCE
            if at_start or (head.key_frame and shown <= start + TIME_TOLERANCE):
                yield head
                yield from frames
                return
        if target < first_shown - 1.0:  # a seek before the stream's start still lands late
            if head is None:
                return  # nothing decodes: iter_frames reports the frames missing
            raise DecodeError(f"{container.name}: no seek reaches {start - first_shown:.3f} s "
                              f"into the video (the nearest frame found shows at "
                              f"{shown - first_shown:.3f} s)")
        back = max(2 * back, 1.0)
