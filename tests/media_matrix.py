"""The media matrix: one short file for each container/codec pair of real corpora, made with
the system ffmpeg (tests/test_media_matrix.py extracts them; README's media table is its
result). Each file's audio is silence with a 1 kHz tone from 0.5 s after the audio's start, so
timing can be checked on the stored rows."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vidfeat.media.tools import executable

SECONDS = 2.5
TONE_AT = 0.5
BACKENDS = ("pyav", "decord", "torchcodec")


@dataclass(frozen=True)
class Case:
    """``name`` is the video id; ``video``/``audio`` the encoder arguments; ``backends`` those
    that decode it right (the others refuse it with a failure that says why)."""

    name: str
    container: str
    codecs: str
    video: tuple[str, ...]
    audio: tuple[str, ...] = ()
    size: str = "64x48"
    fps: int = 10
    filters: str = ""
    extra: tuple[str, ...] = ()
    video_offset: float = 0.0
    audio_rate: int = 48000
    backends: tuple[str, ...] = BACKENDS
    rotate: int = 0  # display matrix rotation, set by a stream copy (ffmpeg 5.1 drops it
    # from an encode)
    # where the tone's onset lands against the video, as this ffmpeg muxes it (0: in sync)
    sync: float = 0.0
    second_audio: tuple[str, ...] = ()

    @property
    def file(self) -> str:
        return f"{self.name}.{self.container}"

    @property
    def encoders(self) -> list[str]:
        args = [*self.video, *self.audio, *self.second_audio]
        return [args[i + 1] for i, arg in enumerate(args) if arg.startswith("-c:")]


X264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")
NO_DECORD = ("pyav", "torchcodec")
# ffmpeg 5.1's WebM puts Opus its pre-skip (6.5 ms) early against the video
WEBM_OPUS = -0.0065

CASES = [
    Case("vp9_opus_webm", "webm", "VP9 + Opus",
         ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "100k"), ("-c:a", "libopus"),
         sync=WEBM_OPUS),
    Case("av1_opus_webm", "webm", "AV1 + Opus",
         ("-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "-b:v", "100k"),
         ("-c:a", "libopus"), backends=NO_DECORD, sync=WEBM_OPUS),
    Case("vp9_opus_mp4", "mp4", "VP9 + Opus",
         ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "100k"), ("-c:a", "libopus")),
    Case("av1_opus_mp4", "mp4", "AV1 + Opus",
         ("-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "-b:v", "100k"),
         ("-c:a", "libopus"), backends=NO_DECORD),
    Case("hevc10_rotated_mov", "mov", "HEVC 10-bit (rotated 90) + AAC",
         ("-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error",
          "-tag:v", "hvc1"), ("-c:a", "aac"), size="128x96", rotate=90),
    Case("mpeg2i_ac3_mp2_ts", "ts", "MPEG-2 interlaced + AC-3 (+ MP2 track)",
         ("-c:v", "mpeg2video", "-flags", "+ilme+ildct", "-top", "1", "-b:v", "500k"),
         ("-c:a", "ac3"), size="128x96", fps=25, second_audio=("-c:a:1", "mp2"),
         backends=("pyav",)),
    Case("mpeg2_mp2_ts", "ts", "MPEG-2 + MP2",
         ("-c:v", "mpeg2video", "-b:v", "500k"), ("-c:a", "mp2"), size="128x96", fps=25,
         backends=("pyav",)),
    Case("mjpeg_pcm_avi", "avi", "MJPEG + PCM", ("-c:v", "mjpeg", "-q:v", "5"),
         ("-c:a", "pcm_s16le")),
    # AVI cannot delay audio: the video's B-frame delay (0.1 s) less MP3's own (25 ms, which
    # no field of AVI records) puts the tone 75 ms early; decord's frame index and torchcodec
    # (no frames at all) fail on the B-frames
    Case("xvid_mp3_avi", "avi", "MPEG-4 part 2 (B-frames) + MP3",
         ("-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID", "-q:v", "5"), ("-c:a", "libmp3lame"),
         audio_rate=44100, backends=("pyav",), sync=-0.075),
    Case("flv1_mp3_flv", "flv", "FLV1 (Sorenson H.263) + MP3", ("-c:v", "flv"),
         ("-c:a", "libmp3lame"), audio_rate=44100),
    Case("theora_vorbis_ogv", "ogv", "Theora + Vorbis", ("-c:v", "libtheora", "-q:v", "5"),
         ("-c:a", "libvorbis"), audio_rate=44100, backends=NO_DECORD),
    Case("wmv2_wma2_wmv", "wmv", "WMV2 + WMA2", ("-c:v", "wmv2"), ("-c:a", "wmav2"),
         audio_rate=44100),
    Case("prores_pcm_mov", "mov", "ProRes 422 + PCM",
         ("-c:v", "prores_ks", "-profile:v", "2"), ("-c:a", "pcm_s16le"), size="128x96"),
    Case("dv_pal_dv", "dv", "DV (PAL 720x576) + PCM", ("-c:v", "dvvideo", "-pix_fmt", "yuv420p"),
         ("-c:a", "pcm_s16le", "-ac", "2"), size="720x576", fps=25),
    Case("h263_aac_3gp", "3gp", "H.263 + AAC", ("-c:v", "h263"), ("-c:a", "aac", "-ac", "1"),
         size="128x96", audio_rate=16000),
    Case("h264_eac3_mkv", "mkv", "H.264 + E-AC-3", X264, ("-c:a", "eac3")),
    Case("h264_flac_mkv", "mkv", "H.264 + FLAC", X264, ("-c:a", "flac")),
    Case("h264_late_video_mkv", "mkv", "H.264 + AAC, video 1.5 s after the audio", X264,
         ("-c:a", "aac"), video_offset=1.5),
    Case("h264_vfr_phone_mov", "mov", "H.264 VFR 30/15 fps (rotated 270) + AAC",
         (*X264, "-fps_mode", "vfr"), ("-c:a", "aac"), size="128x96", fps=30,
         filters="select='lt(n\\,30)+not(mod(n\\,2))'", rotate=270),
]


@functools.cache
def encoders() -> frozenset[str]:
    listing = subprocess.run([executable("ffmpeg"), "-hide_banner", "-encoders"],
                             capture_output=True, text=True, check=True).stdout
    return frozenset(line.split()[1] for line in listing.splitlines()
                     if len(line.split()) > 1 and line.startswith(" ") and "=" not in line)


def missing_encoders(case: Case) -> list[str]:
    return [name for name in case.encoders if name not in encoders()]


def make(case: Case, directory: Path) -> Path:
    """The case's file in ``directory``; the tone starts TONE_AT after the audio's start."""
    path = directory / case.file
    video_source = f"testsrc2=size={case.size}:rate={case.fps}:duration={SECONDS}"
    if case.filters:
        video_source += "," + case.filters
    tone = (rf"aevalsrc=if(gte(t\,{TONE_AT})\,0.8*sin(2*PI*1000*t)\,0)"
            f":s={case.audio_rate}:d={SECONDS}")
    inputs = []
    if case.video_offset:
        inputs += ["-itsoffset", str(case.video_offset)]
    inputs += ["-f", "lavfi", "-i", video_source, "-f", "lavfi", "-i", tone]
    maps = ["-map", "0:v", "-map", "1:a"] + (["-map", "1:a"] if case.second_audio else [])
    encoded = path.with_name(f"encoded-{case.file}") if case.rotate else path
    _ffmpeg(*inputs, *maps, *case.video, *case.audio, *case.second_audio, *case.extra,
            str(encoded))
    if case.rotate:
        _ffmpeg("-i", str(encoded), "-map", "0", "-c", "copy", "-metadata:s:v:0",
                f"rotate={case.rotate}", str(path))
        encoded.unlink()
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-y", *args], check=True)
