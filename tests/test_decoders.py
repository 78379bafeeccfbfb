"""Decoder backends on real files: the same frames at the same times from every backend, windows
that stitch into exactly the unsplit decode, frame times without decoding, rotation, truncation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ffmpeg, make_video
from vidfeat.errors import ConfigError, DecodeError
from vidfeat.extractors.base import FrameSampler
from vidfeat.media import DECODERS, check_decoder, frame_times, iter_frames, probe
from vidfeat.media.tools import executable

# Largest difference of one RGB value between backends: 0 measured here (all use swscale's
# default YUV->RGB); 2 leaves room for another FFmpeg build's rounding.
PIXEL_TOLERANCE = 2


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    lavfi = ["-f", "lavfi", "-i"]
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    made = {"cfr": root / "cfr.mp4", "vfr": root / "vfr.mp4", "concat": root / "concat.mkv",
            "rotated": root / "rotated.mp4", "webm": root / "clip.webm",
            "edit_list": root / "edit_list.mp4", "open_gop": root / "open_gop.mp4",
            "ts": root / "mpegts.ts", "opus_mkv": root / "opus.mkv", "mpeg_ps": root / "mpeg2.mpg",
            "hevc": root / "hevc.mp4"}
    # keyframes every 5 frames with B-frames: windows start between keyframes
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=8", "-t", "3", *h264, "-g", "5", str(made["cfr"]))
    # 20 frames at 0.05 s, then 0.1 s apart up to 3 s
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=20", "-t", "3", "-vf",
           "setpts='if(lt(N,20),N,20+(N-20)*2)/(20*TB)'", "-fps_mode", "vfr", *h264, "-g", "7",
           str(made["vfr"]))
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=8", *lavfi, "mandelbrot=size=96x72:rate=25",
           "-filter_complex", "[0:v]trim=duration=1[a];[1:v]trim=duration=1[b];"
           "[a][b]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr", *h264, "-g", "6",
           str(made["concat"]))
    ffmpeg("-i", str(made["cfr"]), "-c", "copy", "-metadata:s:v:0", "rotate=90",
           str(made["rotated"]))
    make_video(made["webm"], seconds=2.0, fps=10, audio=False)
    long = make_video(root / "long.mp4", seconds=3.0, fps=10, audio=False)
    # a stream copy from a non-keyframe: the MP4 edit list hides the 13 frames before 1.25 s
    ffmpeg("-ss", "1.25", "-i", str(long), "-c", "copy", str(made["edit_list"]))
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=10", "-t", "3", *h264, "-g", "8",
           "-x264-params", "open-gop=1:keyint=8:min-keyint=8:scenecut=0", str(made["open_gop"]))
    # timestamps from 1.4 s; a seek to the first frame lands on the second keyframe
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=8", "-t", "3", *h264, "-g", "10", str(made["ts"]))
    # Opus in Matroska: FFmpeg 5.1 (a system ffprobe) puts the container's start at the codec
    # delay (-0.007 s), PyAV's FFmpeg at 0: frame times and frame_times must use one clock
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=25", *lavfi, "sine=sample_rate=48000", "-t", "2",
           *h264, "-c:a", "libopus", str(made["opus_mkv"]))
    # MPEG-2 in an MPEG program stream (timestamps from 0.5 s): decord returns it one GOP late
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=25", "-t", "2", "-c:v", "mpeg2video",
           str(made["mpeg_ps"]))
    ffmpeg(*lavfi, "testsrc2=size=96x72:rate=12", "-t", "3", "-c:v", "libx265", "-pix_fmt",
           "yuv420p", "-x265-params", "log-level=error", str(made["hevc"]))
    return made


def _decode(path: Path, decoder: str, **window: float) -> tuple[np.ndarray, np.ndarray, list]:
    frames = list(iter_frames(probe(path), decoder=decoder, **window))
    times = np.array([frame.time for frame in frames])
    pixels = np.stack([frame.rgb for frame in frames]) if frames else np.zeros((0,))
    return times, pixels, [frame.index for frame in frames]


# What a backend cannot decode, and the one-line error it gives instead of wrong frames:
# decord 0.6.0 misplaces frames behind an edit list (its index counts hidden frames that its
# decoder drops) and in MPEG-TS, and cannot open a variable-frame-rate MKV ("broken metadata");
# torchcodec stops in an MPEG-TS with B-frames.
REFUSED = {("decord", "edit_list"): "edit list", ("decord", "concat"): "broken metadata",
           ("decord", "ts"): "MPEG-TS", ("torchcodec", "ts"): "Requested next frame",
           ("decord", "mpeg_ps"): "MPEG program stream",
           ("torchcodec", "mpeg_ps"): "Requested next frame"}


@pytest.mark.parametrize("name", ["cfr", "vfr", "concat", "webm", "edit_list", "open_gop",
                                  "ts", "opus_mkv", "mpeg_ps"])
def test_frame_times_are_the_decoded_times_without_decoding(videos: dict, name: str) -> None:
    decoded, _, _ = _decode(videos[name], "pyav")
    np.testing.assert_array_equal(frame_times(videos[name]), decoded)
    if name == "edit_list":
        assert len(decoded) == 17 and decoded[0] == 0.0  # hidden frames are not listed
    if name == "vfr":
        steps = np.diff(decoded)
        assert np.allclose(steps[:20], 0.05) and np.allclose(steps[20:], 0.1) and len(steps) > 30


@pytest.mark.parametrize("decoder", [d for d in DECODERS if d != "pyav"])
@pytest.mark.parametrize("name", ["cfr", "vfr", "concat", "rotated", "webm", "edit_list",
                                  "open_gop", "ts", "opus_mkv", "mpeg_ps"])
def test_backends_give_pyavs_frames_at_the_same_times(videos: dict, decoder: str,
                                                      name: str) -> None:
    pytest.importorskip(decoder)
    if (decoder, name) in REFUSED:
        with pytest.raises(DecodeError, match=REFUSED[decoder, name]) as caught:
            _decode(videos[name], decoder)
        assert str(videos[name]) in str(caught.value) and "\n" not in str(caught.value)
        return
    times, pixels, _ = _decode(videos[name], "pyav")
    other_times, other_pixels, _ = _decode(videos[name], decoder)
    np.testing.assert_allclose(other_times, times, rtol=0, atol=1e-6)
    assert other_pixels.shape == pixels.shape
    assert np.abs(other_pixels.astype(int) - pixels).max() <= PIXEL_TOLERANCE


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", ["cfr", "vfr", "concat", "rotated", "webm", "open_gop", "ts",
                                  "opus_mkv"])
def test_windows_stitch_into_the_unsplit_decode(videos: dict, decoder: str, name: str) -> None:
    pytest.importorskip({"pyav": "av"}.get(decoder, decoder))
    if (decoder, name) in REFUSED:
        pytest.skip("refused, as tested above")
    times, pixels, indices = _decode(videos[name], decoder)
    # boundaries at the first frame, at frame times between keyframes, and between frames
    cuts = sorted({float(times[k]) for k in (0, 1, 3, 7, 11, len(times) // 2, len(times) - 2)}
                  | {float(times[9] + times[10]) / 2})
    edges = [None, *cuts, None]
    parts = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        window = {key: value for key, value in (("start_time", start), ("stop_time", stop))
                  if value is not None}
        first = sum(len(p[0]) for p in parts)
        parts.append(_decode(videos[name], decoder, first_index=first, **window))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), times)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts if len(p[0])]), pixels)
    assert [i for p in parts for i in p[2]] == indices == list(range(len(times)))


@pytest.mark.parametrize("name", ["cfr", "vfr", "concat", "edit_list", "open_gop", "ts", "hevc",
                                  "webm", "mpeg_ps"])
@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_frames_nobody_wants_are_left_undecoded_and_the_others_are_exact(
        videos: dict, name: str, fps: float) -> None:
    """A 1 fps sampler wants few frames: PyAV leaves H.264's and HEVC's non-reference frames
    it turns down undecoded (other codecs decode everything). Whatever it leaves out, every
    frame the sampler takes from the whole decode comes out with the same number, time and
    pixels, in windows too."""
    times, pixels, indices = _decode(videos[name], "pyav")
    taken = _taken(videos[name], fps)
    cuts = [None, float(times[len(times) // 3]), float(times[2 * len(times) // 3] + 0.01), None]
    decoded = 0
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        window = {key: value for key, value in (("start_time", start), ("stop_time", stop))
                  if value is not None}
        first = 0 if start is None else int(np.searchsorted(times, start - 1e-6))
        sampler = FrameSampler(lambda frame: None, fps=fps, start_time=start)  # wants() only
        frames = list(iter_frames(probe(videos[name]), first_index=first, wanted=sampler.wants,
                                  **window))
        decoded += len(frames)
        for frame in frames:
            assert frame.time == times[frame.index]
            np.testing.assert_array_equal(frame.rgb, pixels[frame.index])
        last = len(times) if stop is None else int(np.searchsorted(times, stop - 1e-6))
        assert {i for i in taken if first <= i < last} <= {frame.index for frame in frames}
    if name in ("cfr", "vfr", "ts", "hevc") and fps == 1.0:
        assert decoded < len(indices)  # B-frames left out
    if name in ("webm", "mpeg_ps"):
        assert decoded == len(indices)  # VP9, MPEG-2: every frame decoded


def _taken(path: Path, fps: float) -> set[int]:
    """The frames a sampler at ``fps`` takes from the whole decode."""
    sampler = FrameSampler(lambda frame: torch.tensor(frame.index), fps=fps)
    frames = list(iter_frames(probe(path)))
    items = [item for frame in frames for item in sampler.push(frame)]
    items += sampler.finish(frames[-1].end)
    return {int(item.tensor) for item in items}


@pytest.mark.parametrize("decoder", DECODERS)
def test_window_bounds_have_a_microsecond_tolerance(videos: dict, decoder: str) -> None:
    pytest.importorskip({"pyav": "av"}.get(decoder, decoder))
    times, _, _ = _decode(videos["cfr"], "pyav")
    start, stop = times[6] + 5e-7, times[12] + 5e-7  # as if computed as k / fps elsewhere
    window, _, indices = _decode(videos["cfr"], decoder, start_time=start, stop_time=stop,
                                 first_index=6)
    np.testing.assert_array_equal(window, times[6:12])
    assert indices == list(range(6, 12))


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotated_frames_are_upright_once(videos: dict, decoder: str) -> None:
    pytest.importorskip({"pyav": "av"}.get(decoder, decoder))
    rotated = videos["rotated"]
    raw = subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(rotated), "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # ffmpeg autorotates
    reference = np.frombuffer(raw, np.uint8).reshape(-1, 96, 72, 3)
    _, pixels, _ = _decode(rotated, decoder)
    assert pixels.shape == reference.shape
    assert np.abs(pixels.astype(int) - reference).max() <= PIXEL_TOLERANCE


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 % of an MKV: decoders stop early without an error of their own."""
    root = tmp_path_factory.mktemp("truncated")
    whole = root / "whole.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x72:rate=24", "-t", "2.5", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-g", "12", str(whole))
    cut = root / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    return cut


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_decode_that_ends_early_is_an_error_naming_the_missing_frames(
        truncated: Path, decoder: str) -> None:
    pytest.importorskip({"pyav": "av"}.get(decoder, decoder))
    with pytest.raises(DecodeError, match=r"cut\.mkv: decode stopped after \d+ of ~60 frames "
                                          r"\(t=1\.\d+ s of 2\.50 s\)") as caught:
        _decode(truncated, decoder)
    assert "\n" not in str(caught.value)
    with pytest.raises(DecodeError, match=r"of 2\.00 s"):
        _decode(truncated, decoder, start_time=1.0, stop_time=2.0)
    intact, _, _ = _decode(truncated, decoder, start_time=0.5, stop_time=1.0)
    assert len(intact) == 12


def test_a_truncated_mp4_is_an_error_with_pyav(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x72:rate=24", "-t", "2.5", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(whole))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    with pytest.raises(DecodeError, match=r"cut\.mp4: decode stopped after \d+ of 60 frames"):
        _decode(cut, "pyav")


def test_an_unknown_decoder_is_a_one_line_config_error(videos: dict) -> None:
    with pytest.raises(ConfigError, match="unknown decoder 'opencv': choose one of pyav, decord"):
        check_decoder("opencv")
    with pytest.raises(ConfigError, match="unknown decoder 'opencv'"):
        next(iter_frames(probe(videos["cfr"]), decoder="opencv"))
    for decoder in DECODERS:
        check_decoder(decoder)


def test_a_missing_backend_package_names_what_to_install(videos: dict) -> None:
    # a None entry in sys.modules makes the import fail as for a package that is not installed
    script = ("import sys; sys.modules['decord'] = None\n"
              "from vidfeat.media import iter_frames, probe\n"
              f"next(iter_frames(probe({str(videos['cfr'])!r}), decoder='decord'))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vidfeat.errors.ConfigError: decoder 'decord' needs the decord")
    assert "pip install decord" in last


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_threads_do_not_change_frames(videos: dict, decoder: str) -> None:
    pytest.importorskip({"pyav": "av"}.get(decoder, decoder))
    times, pixels, _ = _decode(videos["vfr"], decoder)
    one = list(iter_frames(probe(videos["vfr"]), decoder=decoder, threads=1))
    np.testing.assert_array_equal([frame.time for frame in one], times)
    np.testing.assert_array_equal(np.stack([frame.rgb for frame in one]), pixels)


def test_torchcodec_decodes_on_cuda_to_gpu_tensors(videos: dict) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchcodec")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    times, pixels, _ = _decode(videos["rotated"], "pyav")
    frames = list(iter_frames(probe(videos["rotated"]), decoder="torchcodec", device="cuda"))
    assert all(frame.tensor.is_cuda for frame in frames)
    np.testing.assert_allclose([frame.time for frame in frames], times, rtol=0, atol=1e-6)
    gpu = np.stack([frame.tensor.cpu().numpy() for frame in frames]).astype(int)
    assert gpu.shape == pixels.shape
    assert np.abs(gpu - pixels).mean() < 3  # NVDEC's YUV->RGB is not swscale's
