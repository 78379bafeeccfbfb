"""Codec start padding is not lost audio, and every sample keeps its presentation time.

Each file carries a 1 kHz tone that starts 0.5 s after the video's first frame (both sources
begin together), so where the onset lands on vidfeat's clock (``info.audio_start`` + sample
index / 16 kHz, what VGGish rows are timed by) shows whether the samples are placed right,
against the video the rows are aligned with. Real holes stay failures (the last tests here and
tests/test_audio_decode.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import ffmpeg
from vidfeat.media.audio import LostSamplesError, load_audio
from vidfeat.media.probe import probe
from vidfeat.media.timeline import frame_times
from vidfeat.media.tools import executable

VIDEO = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=3"]
ONSET_S = 0.5


def tone(rate: int) -> list[str]:
    """Silence, then from ONSET_S a 1 kHz tone: a transient whose time can be read back."""
    return ["-f", "lavfi", "-i", rf"aevalsrc=if(gte(t\,{ONSET_S})\,0.8*sin(2*PI*1000*t)\,0)"
            f":s={rate}:d=3"]


def onset(samples: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(samples) > 0.3)
    assert loud.size, "no tone decoded"
    return int(loud[0])


def audio_onset(info) -> float:
    """The tone's start on vidfeat's clock (seconds from the container's start)."""
    return info.audio_start + onset(load_audio(info)) / 16000


def cli_decode(path: Path) -> np.ndarray:
    raw = subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path),
                          "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, "<f4")


def test_wma_start_padding_is_silence_and_the_tone_is_in_sync(tmp_path: Path) -> None:
    # ffmpeg's WMA encoder pads one 2048-sample frame in front and the ASF muxer shifts both
    # streams by it (video at 0.046 s); the decoder gives nothing for the first two packets, so
    # its first frame is stamped 0.092 s. Before the fix: "audio lost at 0.000-0.092 s".
    path = tmp_path / "archive.wmv"
    ffmpeg(*VIDEO, *tone(44100), "-c:v", "wmv2", "-c:a", "wmav2", "-shortest", str(path))
    info = probe(path)
    samples = load_audio(info)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        first = next(frame for frame in container.decode(stream))
        first_time = float(first.pts * stream.time_base)
    assert first_time == pytest.approx(0.092, abs=0.002)
    lead = round(first_time * 16000)
    assert not samples[:lead].any()
    decoded = cli_decode(path)  # ffmpeg's own decode starts at the first decoded sample
    assert len(samples) == lead + len(decoded)
    np.testing.assert_allclose(samples[lead:], decoded, rtol=0, atol=1e-3)
    video_start = frame_times(path)[0]
    assert video_start == pytest.approx(0.046, abs=0.002)
    assert audio_onset(info) == pytest.approx(video_start + ONSET_S, abs=0.003)


@pytest.mark.parametrize("suffix", [".webm", ".ogv"])
def test_vorbis_is_exact_in_webm_and_ogg(tmp_path: Path, suffix: str) -> None:
    # WebM: the first packet decodes to nothing (first frame at 3 ms, the video shifted with
    # it). Ogg: the demuxer stamps packets around the tone's block-size switch 10 ms off and
    # the next one back, where the sample count is right. Both were "audio lost" before.
    path = tmp_path / f"clip{suffix}"
    video = ["-c:v", "libvpx"] if suffix == ".webm" else ["-c:v", "libtheora"]
    ffmpeg(*VIDEO, *tone(44100), *video, "-c:a", "libvorbis", "-shortest", str(path))
    info = probe(path)
    assert audio_onset(info) == pytest.approx(frame_times(path)[0] + ONSET_S, abs=0.002)


@pytest.mark.parametrize("how", ["cut", "negative"])
def test_opus_pre_skip_of_a_cut_or_negative_start_is_not_lost(tmp_path: Path, how: str) -> None:
    # a copy cut mid-stream keeps the first packet's pre-skip trimmed, so the first frame
    # starts 6.5 ms after the stream ("audio lost at 0.000-0.006 s" before); a WebM kept with
    # its negative start (-0.013 s) had "audio lost at -0.000-0.007 s"
    whole = tmp_path / "whole.mp4"
    ffmpeg(*VIDEO, *tone(48000), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "libopus",
           "-shortest", str(whole))
    if how == "cut":
        path = tmp_path / "cut.mp4"
        ffmpeg("-i", str(whole), "-ss", "1.003", "-c", "copy", str(path))
        expected = 2.0
    else:
        path = tmp_path / "negative.webm"
        ffmpeg(*VIDEO, *tone(48000), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a",
               "libopus", "-avoid_negative_ts", "disabled", "-shortest", str(path))
        expected = 3.0
    samples = load_audio(probe(path))
    assert len(samples) / 16000 == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_audio_starting_late_in_matroska_is_complete(tmp_path: Path, suffix: str) -> None:
    # FFmpeg's Matroska DURATION tag is the track's end time, not its length: read as a length,
    # audio starting 1.5 s in was "lost" for its last 1.5 s
    path = tmp_path / f"late{suffix}"
    codecs = (["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"] if suffix == ".mkv"
              else ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"])
    ffmpeg(*VIDEO, "-itsoffset", "1.5", *tone(48000), *codecs, str(path))
    info = probe(path)
    assert info.audio_start == pytest.approx(1.5, abs=0.03)
    assert len(load_audio(info)) / 16000 == pytest.approx(3.0, abs=0.04)
    # ffmpeg 5.1's WebM puts Opus 6.5 ms (its pre-skip) early against the video, as at a start
    # at 0 (docs/decoders.md, "Audio timing")
    assert audio_onset(info) == pytest.approx(1.5 + ONSET_S, abs=0.003 if suffix == ".mkv"
                                              else 0.008)


def test_damaged_first_packets_are_still_lost_audio(tmp_path: Path) -> None:
    # start padding is packets that decode to nothing without an error; packets that fail are
    # a hole, at the start as anywhere
    path = tmp_path / "damaged.mp4"
    ffmpeg(*VIDEO, *tone(44100), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-shortest", str(path))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [(p.pos, p.size) for p in container.demux(stream) if p.pts is not None][:5]
    content = bytearray(path.read_bytes())
    noise = np.random.default_rng(1)
    for position, size in packets:
        content[position:position + size] = noise.bytes(size)
    path.write_bytes(bytes(content))
    with pytest.raises(LostSamplesError) as caught:
        load_audio(probe(path))
    start, end = caught.value.spans[0]
    assert start <= 0.0 and end == pytest.approx(5 * 1024 / 44100 - 1024 / 44100, abs=0.03)
    assert caught.value.undecodable == 5


def test_a_truncated_late_starting_matroska_track_is_still_lost(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mkv"
    ffmpeg(*VIDEO, "-itsoffset", "1.5", *tone(48000), "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-c:a", "pcm_s16le", str(whole))
    cut = tmp_path / "cut.mkv"
    content = whole.read_bytes()
    cut.write_bytes(content[:len(content) * 6 // 10])
    with pytest.raises(LostSamplesError) as caught:
        load_audio(probe(cut))
    assert caught.value.spans[-1][1] == pytest.approx(4.5, abs=0.05)


def test_avi_audio_header_counting_the_video_delay_is_not_lost(tmp_path: Path) -> None:
    # MPEG-4 with B-frames: its first frame shows at 0.1 s, and FFmpeg's AVI muxer counts that
    # delay into the audio's header length (100 MP3 frames for 97 packets), which AVI, placing
    # audio by position, cannot store: "audio lost at 2.534-2.612 s" before
    whole = tmp_path / "xvid.avi"
    ffmpeg(*VIDEO, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3",
           "-c:v", "mpeg4", "-bf", "2", "-c:a", "libmp3lame", "-shortest", str(whole))
    assert frame_times(whole)[0] == pytest.approx(0.1)
    assert len(load_audio(probe(whole))) / 16000 == pytest.approx(3.03, abs=0.01)
    cut = tmp_path / "cut.avi"
    content = whole.read_bytes()
    cut.write_bytes(content[:len(content) * 6 // 10])
    with pytest.raises(LostSamplesError):
        load_audio(probe(cut))
