"""Video decoding with PyAV: each frame once, with its presentation time, converted on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from vidfeat.errors import DecodeError
from vidfeat.media.probe import MediaInfo


class Frame:
    """One decoded frame. ``rgb`` is converted (and turned upright) only when first asked for,
    so frames that no extractor samples cost only their decode."""

    __slots__ = ("index", "time", "duration", "_frame", "_rotation", "_rgb")

    def __init__(self, index: int, time: float, duration: float, frame: av.VideoFrame,
                 rotation: int) -> None:
        self.index = index
        self.time = time
        self.duration = duration
        self._frame = frame
        self._rotation = rotation
        self._rgb: np.ndarray | None = None

    @property
    def end(self) -> float:
        return self.time + self.duration

    @property
    def rgb(self) -> np.ndarray:
        """H x W x 3 uint8, RGB, upright."""
        if self._rgb is None:
            image = self._frame.to_ndarray(format="rgb24")
            if self._rotation:
                image = np.ascontiguousarray(np.rot90(image, k=-self._rotation // 90))
            self._rgb = image
            self._frame = None
        return self._rgb


def iter_frames(info: MediaInfo) -> Iterator[Frame]:
    """Decode every frame of the first video stream of ``info.path``, in presentation order.

    Times are seconds from the container start, read from each frame's PTS (right for variable
    frame rate); a frame without PTS gets the previous time plus one nominal frame duration.
    A decode error mid-file raises DecodeError naming the file and the frame it stopped at.
    """
    path = Path(info.path)
    nominal = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise DecodeError(f"{path}: cannot open: {error}") from error
    index = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = float(stream.time_base) if stream.time_base else 0.0
        previous: float | None = None
        for frame in container.decode(stream):
            if frame.pts is not None and base:
                time = frame.pts * base - info.start_time
            else:
                time = (previous + nominal) if previous is not None else 0.0
            duration = frame.duration * base if frame.duration and base else nominal
            previous = time
            yield Frame(index, time, duration, frame, info.rotation)
            index += 1
    except av.FFmpegError as error:
        raise DecodeError(f"{path}: decode failed after {index} frames: {error}") from error
    finally:
        container.close()
    if index == 0:
        raise DecodeError(f"{path}: no decodable video frames")
