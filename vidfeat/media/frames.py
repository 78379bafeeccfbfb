"""Video frames with presentation times from one of several decoder backends (``--decoder``).

Each backend (``decode_pyav``, ``decode_decord``, ``decode_torchcodec``) yields ``Decoded``
frames in presentation order, from the first frame at or after a start time (or from the
keyframe before it) until it is closed. This module applies the window (start/stop with a
tolerance, frame numbering), wraps frames as ``Frame`` and checks that the decode reached the
end the container header promises, so every backend gives the same frames and the same errors.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.media.probe import MediaInfo
from vidfeat.media.timeline import video_end

DECODERS = ("pyav", "decord", "torchcodec")
DEFAULT_DECODER = "pyav"
# times are PTS * time_base in float64: two routes to the same frame may differ in the last bits
TIME_TOLERANCE = 1e-6
_PACKAGES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec"}


class Decoded(NamedTuple):
    """What a backend yields: ``image`` is an ``av.VideoFrame`` (converted lazily), an H x W x 3
    uint8 array or tensor, and ``rotation`` the clockwise degrees still to apply to it.
    ``skipped``: the times of the frames just before this one that were left undecoded (not
    wanted), so that frame numbers stay those of the whole video."""

    time: float
    duration: float
    image: Any
    rotation: int
    skipped: tuple[float, ...] = ()


#: ``wanted(time, next_time)``: whether the frame shown from ``time`` until ``next_time`` is
#: needed (a backend may then leave it undecoded where the codec allows)
Wanted = Callable[[float, float], bool]


_local = threading.local()


def _reformatter() -> Any:
    """One swscale context per thread, reused: ``VideoFrame.to_ndarray(format=...)`` builds a
    new one for every frame, which costs more than the conversion (same pixels either way)."""
    if not hasattr(_local, "reformatter"):
        from av.video.reformatter import VideoReformatter

        _local.reformatter = VideoReformatter()
    return _local.reformatter


class Frame:
    """One decoded frame. ``rgb`` is converted (and turned upright) only when first asked for,
    so frames that no extractor samples cost only their decode."""

    __slots__ = ("index", "time", "duration", "_image", "_rotation", "_rgb")

    def __init__(self, index: int, time: float, duration: float, image: Any,
                 rotation: int = 0) -> None:
        self.index = index
        self.time = time
        self.duration = duration
        self._image = image
        self._rotation = rotation
        self._rgb: np.ndarray | None = None

    @property
    def end(self) -> float:
        return self.time + self.duration

    @property
    def rgb(self) -> np.ndarray:
        """H x W x 3 uint8, RGB, upright, in host memory."""
        if self._rgb is None:
            image = self._image
            if hasattr(image, "to_ndarray"):  # av.VideoFrame
                image = _reformatter().reformat(image, format="rgb24").to_ndarray()
            elif hasattr(image, "cpu"):  # torch.Tensor, possibly on a GPU
                image = image.cpu().numpy()
            if self._rotation:
                image = np.ascontiguousarray(np.rot90(image, k=-self._rotation // 90))
            self._rgb = image
            self._image = None
        return self._rgb

    @property
    def tensor(self) -> Any:
        """H x W x 3 uint8 ``torch.Tensor``, upright, on the device that decoded it (a GPU for
        torchcodec with ``device="cuda"``, else the CPU, sharing memory with ``rgb``)."""
        if self._rgb is None and hasattr(self._image, "cpu") and not self._rotation:
            return self._image
        import torch

        return torch.from_numpy(self.rgb)


def last_line(error: BaseException) -> str:
    """A decoder library's error in one line: the last, where FFmpeg's message is."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def check_decoder(decoder: str) -> None:
    """Raise ConfigError unless ``decoder`` names a backend whose package is installed, found
    without importing it (torchcodec imports torch): for the driver, before any worker starts.
    A package that is installed yet does not import fails each video with the reason, from
    ``iter_frames`` when first iterated, on the workers."""
    _known(decoder)
    try:
        found = importlib.util.find_spec(_PACKAGES[decoder]) is not None
    except (ImportError, ValueError, AttributeError):  # set to None in sys.modules: blocked
        found = False
    if not found:
        raise _missing(decoder, "not installed")


def _known(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")


def _missing(decoder: str, why: str) -> ConfigError:
    package = _PACKAGES[decoder]
    return ConfigError(f"decoder {decoder!r} needs the {package} package, which does not "
                       f"import ({why}): pip install {package} (or pip install "
                       f"'vidfeat[decoders]')")


def _backend(decoder: str) -> Any:
    _known(decoder)
    try:
        importlib.import_module(_PACKAGES[decoder])
    except ImportError as error:
        raise _missing(decoder, str(error)) from error
    return importlib.import_module(f"vidfeat.media.decode_{decoder}")


def iter_frames(info: MediaInfo, *, decoder: str = DEFAULT_DECODER,
                start_time: float | None = None, stop_time: float | None = None,
                first_index: int = 0, threads: int | None = None,
                device: str = "cpu", wanted: Wanted | None = None) -> Iterator[Frame]:
    """The frames of the first video stream of ``info.path`` in presentation order.

    ``start_time``/``stop_time`` (seconds from the container start, as ``Frame.time``) keep the
    frames with ``start_time <= time < stop_time`` (tolerance ``TIME_TOLERANCE``); the decoder
    seeks to the keyframe at or before ``start_time``, so a video cut into windows gives exactly
    the frames of an unsplit decode. The first frame kept is numbered ``first_index``.
    ``threads``: decoder threads (None: the backend's choice, usually one per core).
    ``device``: "cpu", or "cuda"/"cuda:N" for torchcodec (frames stay on the GPU: ``tensor``).
    ``wanted``: frames it turns down may be left out, where the backend can skip decoding
    them (PyAV, non-reference H.264/HEVC frames); the others keep their numbers.

    Raises DecodeError naming the file when the decode fails or ends before the time the
    container header gives for the video's end (or before ``stop_time``), saying which frames
    are missing; ConfigError for an unknown decoder or one whose package is not installed.
    """
    backend = _backend(decoder)
    if threads is not None and threads < 0:
        raise ConfigError(f"decoder threads must be >= 0 (0: automatic), not {threads}")
    lower = -np.inf if start_time is None else start_time - TIME_TOLERANCE
    upper = np.inf if stop_time is None else stop_time - TIME_TOLERANCE
    decoded = backend.decode(info, start_time=start_time, threads=threads, device=device,
                             wanted=wanted)
    nominal = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
    index = first_index
    reached = start_time or 0.0
    try:
        with closing(decoded):
            for item in decoded:
                index += sum(1 for time in item.skipped if lower <= time < upper)
                if item.time < lower:
                    continue
                if item.time >= upper:
                    if index == first_index and start_time is not None \
                            and upper - lower > 2 * nominal:  # a seek that landed past the window
                        raise DecodeError(_shortfall(
                            info, 0, start_time, start_time, stop_time,
                            f"the decoder's first frame shows at {item.time:.2f} s"))
                    return
                duration = item.duration if item.duration > 0 else nominal
                yield Frame(index, item.time, duration, item.image, item.rotation)
                index += 1
                reached = item.time + duration
    except backend.ERRORS as error:
        raise DecodeError(_shortfall(info, index - first_index, reached, start_time, stop_time,
                                     last_line(error))) from error
    if index == first_index and start_time is None:
        raise DecodeError(f"{info.path}: no decodable video frames")
    _check_reached(info, index - first_index, reached, start_time, stop_time)


def _expected_end(info: MediaInfo) -> tuple[float, float]:
    """The video's end from the header and how far short of it a complete decode may stop:
    two frame intervals (rounding, a last frame without duration), half a second more when only
    the container's duration is known and an audio stream may outlast the video."""
    interval = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
    end = video_end(info.path)
    if end is not None:
        return end, 2 * interval
    return info.duration, 2 * interval + (0.5 if info.has_audio else 0.0)


def _target(info: MediaInfo, stop_time: float | None) -> tuple[float, float]:
    end, slack = _expected_end(info)
    return (end if stop_time is None else min(stop_time, end)), slack


def _check_reached(info: MediaInfo, count: int, reached: float, start_time: float | None,
                   stop_time: float | None) -> None:
    target, slack = _target(info, stop_time)
    if reached < target - slack:
        raise DecodeError(_shortfall(info, count, reached, start_time, stop_time,
                                     "the decoder returned no more frames"))


def _shortfall(info: MediaInfo, count: int, reached: float, start_time: float | None,
               stop_time: float | None, reason: str) -> str:
    target, _ = _target(info, stop_time)
    begin = start_time or 0.0
    if start_time is None and stop_time is None and info.frame_count:
        expected = f"{info.frame_count}"
    else:
        expected = f"~{max(round((target - begin) * info.fps), count)}"
    return (f"{Path(info.path)}: decode stopped after {count} of {expected} frames "
            f"(t={reached:.2f} s of {target:.2f} s); frames from {reached:.2f} s to "
            f"{target:.2f} s are missing: {reason}")
