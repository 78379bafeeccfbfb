"""Streamed audio decode on real files: the old ffmpeg path's samples, exact seeks, flat memory,
damaged audio named with its lost spans, audio-only files."""

from __future__ import annotations

import pickle
import subprocess
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import ffmpeg, make_video
from vidfeat.errors import DecodeError
from vidfeat.media.audio import LostSamplesError, iter_audio, load_audio
from vidfeat.media.probe import probe
from vidfeat.media.tools import executable


def _old_load_audio(path: Path, channels: int) -> np.ndarray:
    """What load_audio returned before it streamed: ffmpeg's executable to f32le, equal average."""
    raw = subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path),
                          "-map", "0:a:0", "-vn", "-ar", "16000", "-f", "f32le",
                          "-acodec", "pcm_f32le", "pipe:1"], capture_output=True, check=True).stdout
    samples = np.frombuffer(raw, dtype="<f4")
    return samples[:samples.size - samples.size % channels].reshape(-1, channels).mean(
        axis=1, dtype=np.float32)


def _pcm_video(path: Path, seconds: float = 3.0) -> Path:
    """Stereo 44.1 kHz pink noise as PCM in a MOV: no lossy decoder between us and the samples,
    and timestamps in samples, so seeks can be exact."""
    ffmpeg("-f", "lavfi", "-t", str(seconds), "-i", "testsrc2=size=96x72:rate=8",
           "-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:r=44100:a=0.3",
           "-ac", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le",
           "-shortest", str(path))
    return path


def _joined(info, **options) -> tuple[list[int], np.ndarray]:
    blocks = list(iter_audio(info, **options))
    starts = [first for first, _ in blocks]
    return starts, (np.concatenate([b for _, b in blocks]) if blocks else np.zeros(0))


def test_blocks_equal_the_old_ffmpeg_path_bit_for_bit(tmp_path: Path) -> None:
    info = probe(_pcm_video(tmp_path / "pcm.mov"))
    old = _old_load_audio(Path(info.path), info.audio_channels)
    for block in (1000, 16000, 10**6):
        starts, joined = _joined(info, block_samples=block)
        assert joined.dtype == np.float32 and np.array_equal(joined, old)
        assert starts == list(range(0, len(old), block))
    assert np.array_equal(load_audio(info), old)


def test_lossy_audio_matches_the_old_path_up_to_the_decoder_version(tmp_path: Path) -> None:
    # ffmpeg's executable (Debian's FFmpeg) and PyAV's bundled FFmpeg decode AAC 1 ulp apart
    info = probe(make_video(tmp_path / "v.mp4", seconds=2.0))
    old = _old_load_audio(Path(info.path), info.audio_channels)
    new = load_audio(info)
    assert len(new) == len(old)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)


@pytest.mark.parametrize("start", [8001, 12345, 31111])
def test_a_seek_cuts_at_the_exact_sample(tmp_path: Path, start: int) -> None:
    info = probe(_pcm_video(tmp_path / "pcm.mov"))
    full = load_audio(info)
    stop = start + 9000
    starts, part = _joined(info, start_sample=start, stop_sample=stop, block_samples=4000)
    assert starts == [start, start + 4000, start + 8000]
    assert np.array_equal(part, full[start:stop])  # measured: max abs error 0.0


def test_a_seek_in_aac_matches_a_full_decode_within_float_tolerance(tmp_path: Path) -> None:
    info = probe(make_video(tmp_path / "v.mp4", seconds=3.0))
    full = load_audio(info)
    for start in (12345, 31111):
        _, part = _joined(info, start_sample=start, stop_sample=start + 9000)
        assert len(part) == 9000
        # AAC decoders carry state across frames (noise substitution draws from a running
        # random generator), so a decode that starts later differs slightly: measured 1.3e-5
        np.testing.assert_allclose(part, full[start:start + 9000], rtol=0, atol=1e-4)


def test_stop_past_the_end_and_empty_ranges(tmp_path: Path) -> None:
    info = probe(_pcm_video(tmp_path / "pcm.mov", seconds=1.0))
    full = load_audio(info)
    assert np.array_equal(_joined(info, start_sample=100, stop_sample=10**9)[1], full[100:])
    assert _joined(info, start_sample=500, stop_sample=500)[1].size == 0
    with pytest.raises(ValueError):
        iter_audio(info, start_sample=10, stop_sample=5)


def test_memory_is_flat_in_the_length_of_the_audio(tmp_path: Path) -> None:
    long = tmp_path / "long.mov"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=60",
           "-c:a", "pcm_s16le", str(long))
    info = probe(long)
    tracemalloc.start()
    try:
        total = sum(len(block) for _, block in iter_audio(info, block_samples=16000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 60 * 16000
    assert peak < 1_000_000, f"peak {peak} bytes while the whole waveform is {total * 4}"


def _damage(path: Path, seed: int = 8) -> Path:
    """20 kB of random bytes written into the middle of the file, as `dd conv=notrunc` does."""
    noise = path.with_suffix(".noise")
    noise.write_bytes(np.random.default_rng(seed).bytes(20_000))
    offset = path.stat().st_size // 2 - 10_000
    subprocess.run(["dd", f"if={noise}", f"of={path}", "bs=1", f"seek={offset}",
                    "conv=notrunc", "status=none"], check=True)
    return path


def _packet_times_in(path: Path, low: int, high: int) -> tuple[float, float]:
    """First start and last end of the audio packets stored in bytes [low, high)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        spans = [(float(p.pts * stream.time_base), float((p.pts + p.duration) * stream.time_base))
                 for p in container.demux(stream)
                 if p.pos is not None and p.pos + p.size > low and p.pos < high]
    return spans[0][0], spans[-1][1]


def test_damaged_audio_names_the_file_and_the_lost_spans(tmp_path: Path) -> None:
    video = make_video(tmp_path / "damaged.mp4", seconds=4.0)
    size = video.stat().st_size
    first, last = _packet_times_in(video, size // 2 - 10_000, size // 2 + 10_000)
    info = probe(_damage(video))
    with pytest.raises(LostSamplesError) as caught:
        load_audio(info)
    error = caught.value
    assert isinstance(error, DecodeError) and str(video) in str(error)
    assert "\n" not in str(error) and "audio lost at" in str(error)
    assert error.undecodable > 0
    lost = sum(end - start for start, end in error.spans)
    assert lost > 0.5
    for start, end in error.spans:  # inside the damaged bytes' packets, give or take a frame
        assert first - 0.05 <= start < end <= last + 0.05
    with pytest.raises(LostSamplesError):  # a segment over the damage fails too
        list(iter_audio(info, start_sample=0, stop_sample=int(last * 16000)))
    assert len(_joined(info, stop_sample=int(first * 16000) - 2000)[1]) > 0  # before it: fine
    copy = pickle.loads(pickle.dumps(error))  # crosses from a worker to the driver
    assert copy.spans == error.spans and str(copy) == str(error)


def test_a_timestamp_jump_is_lost_audio(tmp_path: Path) -> None:
    gap = tmp_path / "gap.mkv"
    ffmpeg("-f", "lavfi", "-t", "3", "-i", "sine=frequency=440:sample_rate=16000",
           "-af", r"asetpts=PTS+if(gte(T\,1)\,0.5/TB\,0)", "-c:a", "pcm_s16le", str(gap))
    with pytest.raises(LostSamplesError) as caught:
        load_audio(probe(gap))
    [(start, end)] = caught.value.spans
    assert start == pytest.approx(1.0, abs=0.03) and end - start == pytest.approx(0.5, abs=0.002)


def test_a_stream_that_ends_early_is_lost_audio(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    ffmpeg("-f", "lavfi", "-t", "3", "-i", "testsrc2=size=96x72:rate=8", "-f", "lavfi",
           "-i", "sine=frequency=440:sample_rate=44100:duration=3", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-movflags", "+faststart",
           str(whole))
    cut = tmp_path / "cut.mp4"
    content = whole.read_bytes()
    cut.write_bytes(content[:len(content) * 7 // 10])  # the index at the front stays whole
    with pytest.raises(LostSamplesError) as caught:
        load_audio(probe(cut))
    assert caught.value.spans[-1][1] == pytest.approx(3.0, abs=0.05)


def test_an_audio_only_file_is_probed_and_decoded(tmp_path: Path) -> None:
    audio_only = tmp_path / "podcast.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000:duration=2.5",
           "-ac", "2", "-c:a", "aac", str(audio_only))
    info = probe(audio_only)
    assert not info.has_video and info.has_audio
    assert info.duration == pytest.approx(2.5, abs=0.05) and info.width == info.height == 0
    assert info.as_attrs()["has_video"] is False
    assert len(load_audio(info)) == pytest.approx(2.5 * 16000, abs=1100)
    assert probe(make_video(tmp_path / "v.mp4", seconds=1.0)).has_video


def test_a_file_without_audio_or_video_is_a_decode_error(tmp_path: Path) -> None:
    subtitles = tmp_path / "only.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(DecodeError, match="no video or audio stream"):
        probe(subtitles)
    silent = probe(make_video(tmp_path / "silent.mp4", seconds=1.0, audio=False))
    with pytest.raises(DecodeError, match="no audio stream"):
        load_audio(silent)
