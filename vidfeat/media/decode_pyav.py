"""PyAV backend: libav* through PyAV, frames converted to RGB only when an extractor asks.

Frames the run does not want (``wanted``: at 1 fps most of a 25 fps video) are left undecoded
where that cannot change any other frame: the non-reference frames of H.264 and HEVC, which no
other frame is predicted from (``skip_frame = NONREF`` for that packet alone). A frame's
packet time is its presentation time in these codecs; how long it is shown needs the next
presentation time, found among the packets a window before and after it (decoders reorder at
most 16 frames).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator

import av

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.media.frames import TIME_TOLERANCE, Decoded, Wanted
from vidfeat.media.probe import MediaInfo
from vidfeat.media.remote import open_input

ERRORS = (av.FFmpegError,)


#: codecs whose non-reference frames may be left undecoded
SKIPPABLE_CODECS = frozenset({"h264", "hevc"})
#: packets looked at on each side of one for the next presentation time
_REORDER_WINDOW = 32


def decode(info: MediaInfo, *, start_time: float | None, threads: int | None,
           device: str, wanted: Wanted | None = None) -> Iterator[Decoded]:
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
        skipper = None
        if wanted is not None and base and stream.codec_context.name in SKIPPABLE_CODECS:
            skipper = _Skipper(stream.codec_context, wanted, base, info.start_time)
        if start_time is None or not base:
            frames = _decoded(container, stream, skipper)
        else:
            frames = _from_keyframe_before(container, stream, start_time + info.start_time,
                                           skipper)
        previous: float | None = None
        for frame in frames:
            if frame.pts is not None and base:
                time = frame.pts * base - info.start_time
            else:
                time = (previous + nominal) if previous is not None else 0.0
            previous = time
            duration = frame.duration * base if frame.duration and base else nominal
            skipped = skipper.skipped_before(frame.pts) if skipper else ()
            yield Decoded(time, duration, frame, info.rotation, skipped)


class _Skipper:
    """Decides, packet by packet, whether the decoder may drop the packet's frame (when it is
    a non-reference frame nobody wants), and tells which frames were dropped."""

    def __init__(self, context: av.CodecContext, wanted: Wanted, base: float,
                 offset: float) -> None:
        self._context = context
        self._wanted = wanted
        self._base = base
        self._offset = offset
        self._recent: deque[int] = deque()  # presentation stamps, in decode order
        self._sorted: list[int] = []
        self._droppable: list[int] = []  # stamps allowed to drop, not yet seen decoded

    def restart(self) -> None:
        """After a seek: the packets before it say nothing of the ones after."""
        self._recent.clear()
        self._sorted.clear()
        self._droppable.clear()

    def packets(self, packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
        """``packets`` again, each once the window after it has been read, the decoder told
        whether it may drop its frame."""
        ahead: deque[av.Packet] = deque()
        for packet in packets:
            ahead.append(packet)
            self._remember(packet.pts)
            if len(ahead) > _REORDER_WINDOW:
                yield self._decide(ahead.popleft())
        while ahead:
            yield self._decide(ahead.popleft())

    def skipped_before(self, stamp: int | None) -> tuple[float, ...]:
        """The times of the dropped frames shown before the decoded frame at ``stamp`` (frames
        come out in presentation order, so a droppable one before it that did not come out
        was dropped)."""
        if stamp is None:
            return ()
        cut = bisect.bisect_left(self._droppable, stamp)
        dropped, later = self._droppable[:cut], self._droppable[cut:]
        if later and later[0] == stamp:  # a reference frame: decoded whatever it was told
            later = later[1:]
        self._droppable = later
        return tuple(s * self._base - self._offset for s in dropped)

    def _remember(self, stamp: int | None) -> None:
        if stamp is None:
            return
        self._recent.append(stamp)
        bisect.insort(self._sorted, stamp)
        if len(self._recent) > 2 * _REORDER_WINDOW + 1:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _decide(self, packet: av.Packet) -> av.Packet:
        stamp = packet.pts
        later = bisect.bisect_right(self._sorted, stamp) if stamp is not None else None
        drop = False
        if later is not None and later < len(self._sorted):  # the last frame is always kept
            time = stamp * self._base - self._offset
            drop = not self._wanted(time, self._sorted[later] * self._base - self._offset)
        self._context.skip_frame = "NONREF" if drop else "DEFAULT"
        if drop and not packet.is_discard:  # an edit list's hidden frame never comes out
            bisect.insort(self._droppable, stamp)
        return packet


def _decoded(container: av.container.InputContainer, stream: av.VideoStream,
             skipper: _Skipper | None = None) -> Iterator[av.VideoFrame]:
    """``container.decode(stream)`` without the empty packets Ogg Theora uses for "the previous
    frame again": FFmpeg 8 refuses them (EINVAL) where FFmpeg's own ffmpeg drops them, and the
    previous frame stays on screen until the next one's time either way. The demuxer's last,
    unstamped empty packet still flushes the decoder."""
    packets = (packet for packet in container.demux(stream)
               if packet.size or packet.pts is None)
    if skipper is not None:
        skipper.restart()
        packets = skipper.packets(packets)
    for packet in packets:
        yield from packet.decode()


def _from_keyframe_before(container: av.container.InputContainer, stream: av.VideoStream,
                          start: float, skipper: _Skipper | None = None
                          ) -> Iterator[av.VideoFrame]:
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
        frames = _decoded(container, stream, skipper)
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
