"""Probe and decode on real files: rotation as ffmpeg shows it, PTS times, audio channels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ffmpeg, make_video
from vidfeat.errors import DecodeError
from vidfeat.media import iter_frames, load_audio, probe
from vidfeat.media.tools import executable


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotated_video_is_decoded_upright_as_ffmpeg_shows_it(tmp_path: Path, rotate: int) -> None:
    plain = make_video(tmp_path / "plain.mp4", seconds=0.5, size="96x64", audio=False)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(rotated))
    info = probe(rotated)
    assert info.rotation == (-rotate) % 360  # the tag is written as a counter-clockwise matrix
    ours = next(iter(iter_frames(info))).rgb
    height, width = (96, 64) if rotate in (90, 270) else (64, 96)
    raw = subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(rotated), "-frames:v",
                          "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # ffmpeg autorotates
    reference = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    assert ours.shape == reference.shape
    error = np.abs(ours.astype(int) - reference).mean()
    turned = np.abs(np.rot90(ours, 2).astype(int) - reference).mean()
    assert error < 6 and error < turned / 3


def test_times_are_presentation_times(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=1.0, fps=10, audio=False)
    times = [frame.time for frame in iter_frames(probe(video))]
    assert np.allclose(times, np.arange(10) / 10, atol=1e-6)


def test_multichannel_audio_is_an_equal_average(tmp_path: Path) -> None:
    video = tmp_path / "stereo.mkv"
    ffmpeg("-f", "lavfi", "-t", "1", "-i", "testsrc2=size=64x48:rate=5",
           "-f", "lavfi", "-t", "1", "-i", "sine=frequency=300:sample_rate=16000",
           "-f", "lavfi", "-t", "1", "-i", "anullsrc=sample_rate=16000:channel_layout=mono",
           "-filter_complex", "[1:a][2:a]join=inputs=2:channel_layout=stereo[a]",
           "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-c:a", "pcm_f32le", str(video))
    info = probe(video)
    assert info.audio_channels == 2 and info.audio_sample_rate == 16000
    mono = load_audio(info)
    t = np.arange(len(mono)) / 16000
    expected = 0.5 * 0.125 * np.sin(2 * np.pi * 300 * t)  # lavfi sine amplitude is 1/8
    np.testing.assert_allclose(mono, expected, atol=1e-3)


def test_not_a_video_is_a_one_line_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(DecodeError, match="junk.mp4") as caught:
        probe(junk)
    assert "\n" not in str(caught.value)

