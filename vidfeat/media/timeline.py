"""Frame times read from the container without decoding (PyAV demux), and where the video ends.

Times follow ``Frame.time``: PTS * time_base minus the container's start time. Packets the
demuxer flags as discarded (frames an MP4 edit list hides, a VP9 alt-ref) are decoded by no
backend that honours the flag, and empty ones (Ogg Theora's "previous frame again") by none, so
they are listed apart: ``frame_times`` leaves them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from vidfeat.errors import DecodeError
from vidfeat.media.remote import open_input


@dataclass(frozen=True)
class PacketTimes:
    """Every video packet's presentation time, in presentation order, with its flags."""

    times: np.ndarray
    hidden: np.ndarray
    keyframe: np.ndarray
    container: str = ""  # FFmpeg's demuxer names, e.g. "mpegts", "mov,mp4,m4a,3gp,3g2,mj2"

    @property
    def shown(self) -> np.ndarray:
        return self.times[~self.hidden]


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(open_input(str(path)))
    except av.FFmpegError as error:
        raise DecodeError(f"{path}: cannot open: {error}") from error


def _origin(container: av.container.InputContainer) -> float:
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def starts(path: str | Path) -> tuple[float, float | None]:
    """The container's start and its first audio stream's, in seconds, as PyAV reads them:
    the origin of ``Frame.time`` and ``frame_times`` (an older FFmpeg, such as the system's
    ffprobe 5.1, can place it elsewhere: an Opus-in-Matroska file's at -0.007 s, where PyAV's
    8.x puts it at 0). The audio start is None where the stream gives none."""
    with _open(path) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_start = (float(audio.start_time * audio.time_base)
                       if audio is not None and audio.start_time is not None
                       and audio.time_base else None)
        return _origin(container), audio_start


def packet_times(path: str | Path) -> PacketTimes:
    """Presentation times of all video packets, discarded ones marked ``hidden``."""
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        base = float(stream.time_base)
        stamps: list[int] = []
        hidden: list[bool] = []
        keyframe: list[bool] = []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:  # the empty packet that ends the demux
                    continue
                stamps.append(stamp)
                # an empty packet (Ogg Theora's "previous frame again") decodes to no frame
                hidden.append(packet.is_discard or packet.size == 0)
                keyframe.append(packet.is_keyframe)
        except av.FFmpegError:
            pass  # a truncated file: keep what was read; decoding reports the loss
        origin = _origin(container)
        demuxer = container.format.name
    order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
    # the same float arithmetic as the decoders' frame.pts * base - start, so times compare equal
    times = np.array([stamps[i] * base - origin for i in order], dtype=np.float64)
    return PacketTimes(times=times, hidden=np.asarray(hidden, dtype=bool)[order],
                       keyframe=np.asarray(keyframe, dtype=bool)[order], container=demuxer)


def frame_times(path: str | Path) -> np.ndarray:
    """Presentation time (seconds from the container start) of every frame a decode yields,
    in presentation order, read from packet timestamps without decoding."""
    return packet_times(path).shown


_CLOCK = re.compile(r"(\d+):(\d+):(\d+(?:\.\d*)?)")


def video_end(path: str | Path) -> float | None:
    """Where the first video stream ends according to the container header (seconds from the
    container start), or None when the header does not say. Header values survive truncation,
    so a decode that stops before this time lost frames."""
    with _open(path) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        origin = _origin(container)
        if stream.duration and stream.time_base:
            begin = stream.start_time if stream.start_time is not None else 0
            return float((begin + stream.duration) * stream.time_base) - origin
        clock = _CLOCK.fullmatch(stream.metadata.get("DURATION", ""))  # Matroska's per-track tag
        if clock:
            hours, minutes, seconds = clock.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None
