"""Container and stream facts from ffprobe."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from vidfeat.errors import DecodeError
from vidfeat.media.timeline import starts
from vidfeat.media.tools import executable

#: seconds an ffprobe may take before its file is failed: reading a container's header takes
#: well under a second, so only a stalled file system or a pathological file gets near it;
#: ``VIDFEAT_PROBE_TIMEOUT`` overrides (set it on the workers, which probe)
PROBE_TIMEOUT_S = 60.0


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


def _ratio(text: str | None) -> float:
    if not text or text in ("0/0", "N/A"):
        return 0.0
    return float(Fraction(text))


def _float(value: object, default: float = 0.0) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _rotation(stream: dict) -> int:
    """Degrees to turn decoded frames clockwise to show them upright, as ffmpeg's autorotate."""
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            # the display matrix angle is counter-clockwise
            return int(round(-_float(side["rotation"]))) % 360
    return int(_float(stream.get("tags", {}).get("rotate", 0))) % 360


def _ffprobe(args: list[str], path: Path) -> dict:
    command = [executable("ffprobe"), "-v", "error", "-of", "json", *args, str(path)]
    timeout = _float(os.environ.get("VIDFEAT_PROBE_TIMEOUT"), PROBE_TIMEOUT_S) or None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise DecodeError(f"{path}: ffprobe did not finish in {timeout:g} s") from None
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unreadable"
        raise DecodeError(f"{path}: ffprobe failed: {reason}")
    return json.loads(result.stdout or "{}")


def count_frames(path: str | Path) -> int:
    """Number of video packets (= frames for every codec we decode), read without decoding."""
    data = _ffprobe(
        ["-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets"],
        Path(path),
    )
    streams = data.get("streams", [])
    if not streams:
        raise DecodeError(f"{path}: no video stream")
    return int(streams[0].get("nb_read_packets", 0))


def probe(path: str | Path) -> MediaInfo:
    """Probe ``path`` with ffprobe; raise DecodeError naming the file if it has neither a video
    nor an audio stream. An audio-only file has ``has_video=False`` and zero video fields."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    data = _ffprobe(["-show_format", "-show_streams"], path)
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise DecodeError(f"{path}: no video or audio stream")
    has_video = video is not None
    video = video or {}
    container = data.get("format", {})
    start = _float(container.get("start_time"))
    audio_offset = _float((audio or {}).get("start_time"), start) - start
    # the decoder's clock (PyAV's FFmpeg), not an older ffprobe's, where PyAV opens the file
    try:
        start, decoder_audio_start = starts(path)
    except DecodeError:
        pass
    else:
        if decoder_audio_start is not None:
            audio_offset = decoder_audio_start - start
    duration = (_float(container.get("duration")) or _float(video.get("duration"))
                or _float((audio or {}).get("duration")))
    fps = _ratio(video.get("avg_frame_rate")) or _ratio(video.get("r_frame_rate"))
    nb_frames = video.get("nb_frames")
    return MediaInfo(
        path=str(path.resolve()),
        duration=duration,
        fps=fps,
        width=int(video.get("width", 0)),
        height=int(video.get("height", 0)),
        rotation=_rotation(video),
        frame_count=int(nb_frames) if nb_frames and str(nb_frames).isdigit() else None,
        video_codec=str(video.get("codec_name", "")),
        start_time=start,
        has_audio=audio is not None,
        audio_sample_rate=int(_float(audio.get("sample_rate"))) if audio else 0,
        audio_channels=int(audio.get("channels", 0)) if audio else 0,
        # to the microsecond, as ffprobe prints it (90 kHz and microsecond clocks differ by ~1e-7)
        audio_start=round(audio_offset, 6) if audio else 0.0,
        has_video=has_video,
    )
