"""Audio decoding with PyAV, streamed: 16 kHz mono float32 blocks at exact sample positions.

PyAV rather than the ffmpeg executable: every packet's decode result and every frame's
timestamp are visible here, so samples the decoder lost (a damaged packet, a hole in the
timestamps, a stream that ends early) are found with their exact time spans, where ffmpeg's
command line skips them, joins the rest and exits 0; seeking is explicit; and the decoder is
the one pinned by the ``av`` wheel, the same one that decodes the video frames.

Memory stays flat in the length of the audio: frames are resampled as they are decoded and
handed out in blocks of ``block_samples``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import islice

import av
import numpy as np

from vidfeat.errors import DecodeError
from vidfeat.media.probe import MediaInfo
from vidfeat.media.remote import open_input

SAMPLE_RATE = 16000
BLOCK_SAMPLES = 10 * SAMPLE_RATE
# containers round timestamps (Matroska to 1 ms): a smaller jump is no discontinuity
GAP_TOLERANCE_S = 0.002
# decoded before a seek target so that the resampler's filter has settled at the target
SEEK_MARGIN_S = 0.25
SPANS_NAMED = 5


class LostSamplesError(DecodeError):
    """Audio samples the stream holds could not be decoded, or the timestamps jump: rows placed
    by counting samples would carry wrong times after the first lost span."""

    def __init__(self, path: str, spans: list[tuple[float, float]], undecodable: int) -> None:
        self.path, self.spans, self.undecodable = path, spans, undecodable
        named = ", ".join(f"{start:.3f}-{end:.3f} s" for start, end in spans[:SPANS_NAMED])
        more = f" and {len(spans) - SPANS_NAMED} more" if len(spans) > SPANS_NAMED else ""
        packets = f" ({undecodable} undecodable packets)" if undecodable else ""
        lost = sum(end - start for start, end in spans)
        super().__init__(f"{path}: audio lost at {named}{more}{packets}, {lost:.3f} s in all")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.spans, self.undecodable)


def load_audio(info: MediaInfo, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream resampled to ``sample_rate``, mono, float32 in [-1, 1]: the
    blocks of ``iter_audio`` joined. LostSamplesError if any sample was lost."""
    blocks = [block for _, block in iter_audio(info, sample_rate=sample_rate)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def iter_audio(info: MediaInfo, *, sample_rate: int = SAMPLE_RATE,
               block_samples: int = BLOCK_SAMPLES, start_sample: int = 0,
               stop_sample: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_sample_index, block)`` for samples ``[start_sample, stop_sample)`` of the first
    audio stream resampled to ``sample_rate``, channels averaged with equal weights (as VGGish's
    reference does; ffmpeg's ``-ac 1`` would weight 5.1's centre and surround channels and drop
    the LFE). Sample 0 is at ``info.audio_start`` seconds and every sample at its frame's
    presentation time: the codec's start padding before the first decoded frame is silence.

    Blocks hold ``block_samples`` samples, the last one fewer. A ``start_sample`` past
    ``SEEK_MARGIN_S`` seeks and cuts at the exact sample where the container's timestamps are
    sample-accurate (MP4/MOV, MPEG-TS); otherwise it decodes from the start and drops samples.
    Lost samples (undecodable packets, timestamp jumps, a stream ending before its duration)
    stop the blocks and raise LostSamplesError naming every lost span up to ``stop_sample``.
    """
    if block_samples < 1 or sample_rate < 1:
        raise ValueError("block_samples and sample_rate must be positive")
    if start_sample < 0 or (stop_sample is not None and stop_sample < start_sample):
        raise ValueError(f"want 0 <= start_sample <= stop_sample, got {start_sample}, "
                         f"{stop_sample}")
    if not info.has_audio:
        raise DecodeError(f"{info.path}: no audio stream")
    return _AudioDecode(info, sample_rate, start_sample, stop_sample).blocks(block_samples)


class _Continuity:
    """Finds lost samples: undecodable packets, and frames that do not start where the previous
    one ended. Times are seconds on the stream's clock.

    Not lost: the codec's start padding. Packets that decode to nothing or to a trimmed frame
    before the first output (WMA's two, Vorbis's first, Opus's pre-skip in a file cut
    mid-stream) leave the first frame after the stream's start by at most their duration:
    that span is ``leading`` (the decode fills it with silence so every sample keeps its
    presentation time). Nor is a frame stamped off the line its neighbours keep: Ogg stamps
    Vorbis packets around a block-size switch up to ~10 ms off and the next frame is back on
    the sample count, where after a real hole the timestamps stay shifted."""

    def __init__(self, time_base: float, expected_start: float | None) -> None:
        self.time_base = time_base
        self.expected = expected_start
        self.spans: list[tuple[float, float]] = []
        self.undecodable = 0
        self.longest_frame = 0.0
        self.leading = 0.0
        self.decoded_end: float | None = None
        self.packets_end: float | None = None
        self._before_first: list[float | None] = []  # durations of packets demuxed so far
        self._first_seen = False
        # a jump the next frame may take back: (the span it would lose, where counting puts
        # the next frame)
        self._suspect: tuple[tuple[float, float], float] | None = None

    def packet(self, packet: av.Packet) -> None:
        if packet.pts is None:
            return
        duration = (packet.duration or 0) * self.time_base
        end = packet.pts * self.time_base + duration
        self.packets_end = end if self.packets_end is None else max(self.packets_end, end)
        if not self._first_seen:
            self._before_first.append(duration or None)

    def frame(self, frame: av.AudioFrame) -> None:
        length = frame.samples / frame.sample_rate
        self.longest_frame = max(self.longest_frame, length)
        start = frame.pts * self.time_base if frame.pts is not None else self.expected
        if start is None:
            start = 0.0
        if not self._first_seen:
            self._first_seen = True
            self._first(start)
        elif self._suspect is not None:
            span, counted = self._suspect
            self._suspect = None
            if abs(start - counted) > GAP_TOLERANCE_S:
                self.spans.append(span)
                self._check(start, length)
        else:
            self._check(start, length)
        self.expected = start + length
        self.decoded_end = self.expected

    def _first(self, start: float) -> None:
        if self.expected is None:  # after a seek: nothing to compare with
            return
        gap = start - self.expected
        primed = sum(d if d is not None else self.longest_frame for d in self._before_first)
        if 0 < gap <= primed + GAP_TOLERANCE_S and not self.undecodable:
            self.leading = gap
        elif abs(gap) > GAP_TOLERANCE_S:
            self.spans.append((min(start, self.expected), max(start, self.expected)))

    def _check(self, start: float, length: float) -> None:
        if self.expected is not None and abs(start - self.expected) > GAP_TOLERANCE_S:
            span = (min(start, self.expected), max(start, self.expected))
            self._suspect = (span, self.expected + length)

    def packet_failed(self, packet: av.Packet) -> None:
        self.undecodable += 1
        if packet.pts is not None:
            start = packet.pts * self.time_base
            self.spans.append((start, start + (packet.duration or 0) * self.time_base))

    def stream_ended(self, end: float | None, slack: float = 0.0) -> None:
        """``end``: where the stream says it ends; a shortfall of more than a frame is lost,
        beyond what the decoder trimmed from the last packet (Opus's end padding) and
        ``slack``."""
        if self._suspect is not None:
            self.spans.append(self._suspect[0])
            self._suspect = None
        if end is not None and self.expected is not None:
            trimmed = 0.0
            if self.packets_end is not None:
                trimmed = min(max(self.packets_end - self.expected, 0.0), self.longest_frame)
            if end - self.expected > max(GAP_TOLERANCE_S, self.longest_frame) + trimmed + slack:
                self.spans.append((self.expected, end))

    def merged(self, offset: float) -> list[tuple[float, float]]:
        """The lost spans, overlapping ones joined, in seconds from ``offset``."""
        joined: list[list[float]] = []
        for start, end in sorted(self.spans):
            if joined and start <= joined[-1][1] + GAP_TOLERANCE_S:
                joined[-1][1] = max(joined[-1][1], end)
            else:
                joined.append([start, end])
        return [(round(start - offset, 6), round(end - offset, 6)) for start, end in joined]


class _AudioDecode:
    """One pass over the first audio stream, from ``start_sample`` to ``stop_sample``."""

    def __init__(self, info: MediaInfo, sample_rate: int, start_sample: int,
                 stop_sample: int | None) -> None:
        self.info = info
        self.path = info.path
        self.sample_rate = sample_rate
        self.start_sample = start_sample
        self.stop_sample = stop_sample

    def blocks(self, block_samples: int) -> Iterator[tuple[int, np.ndarray]]:
        pending: list[np.ndarray] = []
        pending_first = self.start_sample
        pending_count = 0
        for first, samples in self._cut():
            if not pending:
                pending_first = first
            pending.append(samples)
            pending_count += len(samples)
            while pending_count >= block_samples:
                joined = np.concatenate(pending)
                yield pending_first, joined[:block_samples]
                rest = joined[block_samples:]
                pending = [rest] if len(rest) else []
                pending_first += block_samples
                pending_count = len(rest)
        if pending_count:
            yield pending_first, np.concatenate(pending)

    def _cut(self) -> Iterator[tuple[int, np.ndarray]]:
        """Resampled mono samples with their index, cut to [start_sample, stop_sample)."""
        stop = self.stop_sample
        for first, samples in self._resampled():
            end = first + len(samples)
            if end <= self.start_sample:
                continue
            if stop is not None and first >= stop:
                return
            low = max(self.start_sample - first, 0)
            high = len(samples) if stop is None else min(len(samples), stop - first)
            if high > low:
                yield first + low, samples[low:high]
            if stop is not None and end >= stop:
                return

    def _resampled(self) -> Iterator[tuple[int, np.ndarray]]:
        try:
            yield from self._decode(seek=True)
        except _SeekLandedLate:
            yield from self._decode(seek=False)

    def _decode(self, seek: bool) -> Iterator[tuple[int, np.ndarray]]:
        try:
            container = av.open(open_input(self.path))
        except av.FFmpegError as error:
            raise DecodeError(f"{self.path}: cannot open: {error}") from error
        with container:
            stream = container.streams.audio[0]
            time_base = float(stream.time_base)
            origin = stream.start_time * time_base if stream.start_time is not None else None
            first_output = self._seek(container, stream, origin) if seek else None
            continuity = _Continuity(time_base, origin if first_output is None else None)
            stop_time = (None if self.stop_sample is None
                         else (origin or 0.0) + self.stop_sample / self.sample_rate)
            frames = self._frames(container, stream, continuity)
            if first_output is None:
                resampled = self._resample_all(frames, continuity)
            else:
                resampled = self._resample_from(frames, origin, first_output)
            for first, samples in resampled:
                if continuity.spans:
                    break
                yield first, samples
                if self.stop_sample is not None and first + len(samples) >= self.stop_sample:
                    break
            if continuity.spans:  # decode on without resampling: name every lost span
                for _ in frames:
                    if stop_time is not None and (continuity.expected or 0.0) > stop_time:
                        break
            continuity.stream_ended(self._stream_end(stream, time_base),
                                    _unstamped_shift(container, stream))
            if continuity.spans:
                raise LostSamplesError(self.path, continuity.merged(self.info.start_time),
                                       continuity.undecodable)

    def _seek(self, container: av.container.InputContainer, stream: av.AudioStream,
              origin: float | None) -> int | None:
        """Seek to ``SEEK_MARGIN_S`` before ``start_sample`` when the timestamps place samples
        exactly; returns the output index the decode may start at, or None (decode all)."""
        source_rate = stream.codec_context.sample_rate
        margin = round(SEEK_MARGIN_S * self.sample_rate)
        if (self.start_sample <= 2 * margin or origin is None or not source_rate
                or float(stream.time_base) * source_rate > 1.000001):
            return None
        first_output = self.start_sample - margin
        target = origin + first_output / self.sample_rate
        container.seek(int(target / float(stream.time_base)), stream=stream, backward=True)
        return first_output

    def _frames(self, container: av.container.InputContainer, stream: av.AudioStream,
                continuity: _Continuity) -> Iterator[av.AudioFrame]:
        try:
            for packet in container.demux(stream):
                continuity.packet(packet)
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    continuity.packet_failed(packet)
                    continue
                for frame in decoded:
                    continuity.frame(frame)
                    yield frame
        except av.FFmpegError as error:
            raise DecodeError(f"{self.path}: audio demux failed at "
                              f"{continuity.expected or 0:.3f} s: {error}") from error

    def _resample_all(self, frames: Iterator[av.AudioFrame], continuity: _Continuity
                      ) -> Iterator[tuple[int, np.ndarray]]:
        """From the stream's start: output sample k is k / sample_rate after it. The codec's
        start padding before the first decoded frame (``continuity.leading``) is silence."""
        resampler = av.AudioResampler(format="flt", rate=self.sample_rate)
        position = 0
        for frame in frames_or_none(frames):
            if position == 0 and continuity.leading:
                silence = round(continuity.leading * self.sample_rate)
                if silence:
                    yield 0, np.zeros(silence, np.float32)
                    position = silence
            for samples in _mono(resampler.resample(frame)):
                yield position, samples
                position += len(samples)

    def _resample_from(self, frames: Iterator[av.AudioFrame], origin: float,
                       first_output: int) -> Iterator[tuple[int, np.ndarray]]:
        """After a seek: drop the source samples before the first one that falls exactly on an
        output sample at or after ``first_output``, so that the resampler runs in the same
        phase as in a decode from the start, and count the output from there."""
        resampler = av.AudioResampler(format="flt", rate=self.sample_rate)
        position: int | None = None
        for frame in frames_or_none(frames):
            if frame is not None and position is None:
                if frame.pts is None:
                    raise _SeekLandedLate
                common = math.gcd(frame.sample_rate, self.sample_rate)
                source_step = frame.sample_rate // common
                output_step = self.sample_rate // common
                at = round((frame.pts * frame.time_base - origin) * frame.sample_rate)
                aligned = -(-first_output // output_step) * source_step
                if at > aligned:
                    raise _SeekLandedLate
                if aligned - at >= frame.samples:
                    continue
                frame = _tail(frame, aligned - at)
                position = aligned // source_step * output_step
            for samples in _mono(resampler.resample(frame)):
                yield position, samples
                position += len(samples)

    def _stream_end(self, stream: av.AudioStream, time_base: float) -> float | None:
        """Where the stream's own duration says it ends (not the container's: the audio track
        may rightly be shorter than the video); None when unknown or for a partial decode."""
        if self.stop_sample is not None:
            return None
        start = stream.start_time * time_base if stream.start_time is not None else 0.0
        if stream.duration:
            return start + stream.duration * time_base
        tag = {k.upper(): v for k, v in stream.metadata.items()}.get("DURATION")
        if tag:  # Matroska: "HH:MM:SS.nnnnnnnnn"
            try:
                hours, minutes, seconds = tag.split(":")
                length = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            except ValueError:
                return None
            # FFmpeg writes the track's end time here, mkvmerge its length (end - start): the
            # two agree only for a track starting at 0; the earlier reading is the one that
            # cannot call a complete late-starting track short
            return min(length, start + length)
        return None


def _unstamped_shift(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """How far an AVI's audio header may overstate its length: AVI places audio by position,
    not timestamp, and FFmpeg's muxer counts in the header the delay it gave the video (its
    first frame shown at 0.1 s after B-frame reordering: 97 MP3 packets, a header of 100).
    0 elsewhere."""
    if container.format.name != "avi" or stream.start_time is None:
        return 0.0
    audio_start = float(stream.start_time * stream.time_base)
    with av.open(open_input(container.name)) as again:
        if not again.streams.video:
            return 0.0
        video = again.streams.video[0]
        shown = [packet.pts for packet in islice(again.demux(video), 16)
                 if packet.pts is not None]
        return max(0.0, min(shown) * float(video.time_base) - audio_start) if shown else 0.0


def _mono(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        channels = frame.layout.nb_channels
        samples = frame.to_ndarray().reshape(-1, channels)
        yield samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0].copy()


def _tail(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """``frame`` without its first ``skip`` samples."""
    if not skip:
        return frame
    array = frame.to_ndarray()
    if frame.format.is_planar:
        array = array[:, skip:]
    else:
        array = array[:, skip * frame.layout.nb_channels:]
    tail = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=frame.format.name,
                                      layout=frame.layout.name)
    tail.sample_rate = frame.sample_rate
    return tail


def frames_or_none(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    """The frames, then None: the resampler's signal to flush what it holds."""
    yield from frames
    yield None


class _SeekLandedLate(Exception):
    """The container's seek went past the wanted start: decode from the beginning instead."""
