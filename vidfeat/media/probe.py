"""Container and stream facts, read in this process with PyAV (the decoders' FFmpeg)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import av

from vidfeat.errors import DecodeError
from vidfeat.media.remote import is_remote, open_input
from vidfeat.media.timeline import packet_times


@dataclass(frozen=True)
class MediaInfo:
    """What a video file holds. Times are seconds from the container's start."""

    path: str
    duration: float
    fps: float
    width: int
    height: int
    rotation: int
    frame_count: int | None
    video_codec: str
    start_time: float
    has_audio: bool
    audio_sample_rate: int
    audio_channels: int
    audio_start: float
    has_video: bool = True  # False: an audio-only file (no decodable video stream)

    def as_attrs(self) -> dict:
        """Attributes to store beside a video's features (HDF5-friendly: no None)."""
        attrs = asdict(self)
        attrs["source_path"] = attrs.pop("path")
        attrs["frame_count"] = -1 if self.frame_count is None else self.frame_count
        return attrs


def count_frames(path: str | Path) -> int:
    """Number of video packets (= frames for every codec we decode), read without decoding."""
    return len(packet_times(path).times)


def probe(path: str | Path) -> MediaInfo:
    """Probe ``path`` in this process (PyAV: the decoders' own FFmpeg, a few milliseconds where
    an ffprobe process costs ~70); raise DecodeError naming the file if it cannot be opened or
    has neither a video nor an audio stream. An audio-only file has ``has_video=False`` and
    zero video fields."""
    if is_remote(str(path)):  # by URL or in a tar: read through a RemoteFile, not resolved
        name = str(path)
    else:
        path = Path(path)
        if not path.is_file():
            raise DecodeError(f"{path}: no such file")
        name = str(path.resolve())
    try:
        container = av.open(open_input(name))
    except av.FFmpegError as error:
        raise DecodeError(f"{path}: cannot open: {_one_line(error)}") from error
    with container:
        video = next((s for s in container.streams.video
                      if not s.disposition & av.stream.Disposition.attached_pic), None)
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise DecodeError(f"{path}: no video or audio stream")
        start = (container.start_time / av.time_base if container.start_time is not None
                 else 0.0)
        duration = ((container.duration / av.time_base if container.duration else 0.0)
                    or _seconds(video) or _seconds(audio))
        audio_start = _start(audio, start) - start if audio is not None else 0.0
        fields = dict(
            path=name, duration=duration, start_time=start,
            has_audio=audio is not None,
            audio_sample_rate=audio.sample_rate or 0 if audio is not None else 0,
            audio_channels=audio.channels or 0 if audio is not None else 0,
            # to the microsecond: a 90 kHz and a microsecond clock differ by ~1e-7
            audio_start=round(audio_start, 6),
        )
        if video is None:
            return MediaInfo(fps=0.0, width=0, height=0, rotation=0, frame_count=None,
                             video_codec="", has_video=False, **fields)
        context = video.codec_context
        return MediaInfo(
            fps=_frame_rate(video),
            width=context.width, height=context.height,
            rotation=_rotation(container, video),
            frame_count=video.frames or None,
            video_codec=context.codec.canonical_name, **fields)


def _frame_rate(video: av.video.stream.VideoStream) -> float:
    """The average frame rate (ffprobe's avg_frame_rate), or the stream's base rate where the
    average is only the time base (FFmpeg 7 gives a DV stream 60000 fps: its 1/60000 s)."""
    average, base = video.average_rate, video.base_rate
    if average and video.time_base and average == 1 / video.time_base and base != average:
        average = None
    return float(average or base or 0.0)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _seconds(stream: av.stream.Stream | None) -> float:
    if stream is None or not stream.duration or not stream.time_base:
        return 0.0
    return float(stream.duration * stream.time_base)


def _start(stream: av.stream.Stream, default: float) -> float:
    if stream.start_time is None or not stream.time_base:
        return default
    return float(stream.start_time * stream.time_base)


def _rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream
              ) -> int:
    """Degrees to turn decoded frames clockwise to show them upright, as ffmpeg's autorotate.
    PyAV exposes the display matrix on frames only: the first frame is decoded (one thread,
    a few milliseconds); a file that cannot decode it gets 0, and its decode says why."""
    video.thread_type = "SLICE"
    video.codec_context.thread_count = 1
    try:
        frame = next(container.decode(video), None)
    except av.FFmpegError:
        return 0
    # the display matrix angle is counter-clockwise
    return int(round(-frame.rotation)) % 360 if frame is not None else 0
