"""The media matrix (tests/media_matrix.py): every container/codec pair of real corpora the
system ffmpeg can encode, extracted by `vidfeat extract` with each decoder backend that accepts
it, in one run per backend; a backend that does not accept a pair fails it with a reason.
README's media table is this file's result."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import vidfeat
from tests.media_matrix import BACKENDS, CASES, SECONDS, TONE_AT, Case, make, missing_encoders
from vidfeat.cli import main
from vidfeat.errors import DecodeError
from vidfeat.media import iter_frames
from vidfeat.media.audio import load_audio
from vidfeat.media.probe import probe
from vidfeat.media.timeline import frame_times
from vidfeat.media.tools import executable

EXAMPLE, HOP = 15600, 15360  # VGGish: samples per row and between rows at 16 kHz


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """Each case's file, or why this ffmpeg cannot make it."""
    directory = tmp_path_factory.mktemp("matrix")
    files: dict[str, Path | str] = {}
    for case in CASES:
        missing = missing_encoders(case)
        files[case.name] = (f"this ffmpeg has no encoder {', '.join(missing)}" if missing
                            else make(case, directory))
    return files


def _file(made: dict[str, Path | str], case: Case) -> Path:
    path = made[case.name]
    if isinstance(path, str):
        pytest.skip(f"{case.file}: {path}")
    return path


class Runs:
    """One `vidfeat extract` per backend over every file it accepts, run when first asked."""

    def __init__(self, made: dict[str, Path | str], root: Path) -> None:
        self.made, self.root = made, root
        self.done: dict[str, tuple[int, Path, str]] = {}

    def __call__(self, backend: str, capsys: pytest.CaptureFixture) -> tuple[int, Path, str]:
        if backend not in self.done:
            files = [str(self.made[c.name]) for c in CASES
                     if backend in c.backends and not isinstance(self.made[c.name], str)]
            store = self.root / backend
            # audio does not go through the video decoder: VGGish once, with the default
            features = "resnet152,vggish" if backend == "pyav" else "resnet152"
            capsys.readouterr()
            code = main(["extract", *files, "--store", str(store), "--workers", "2",
                         "--random-weights", "--no-progress", "--dtype", "float32",
                         "--features", features, "--decoder", backend])
            self.done[backend] = code, store, capsys.readouterr().out
        return self.done[backend]


@pytest.fixture(scope="module")
def runs(made: dict[str, Path | str], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(made, tmp_path_factory.mktemp("stores"))


def expected_frame_rows(path: Path) -> tuple[np.ndarray, float]:
    """Start times of resnet152's 1 fps rows by the documented rule (for each k, the frame on
    screen at k s, each frame once; before the first frame, the first), and the video's end."""
    times = frame_times(path)
    end = times[-1] + (np.median(np.diff(times)) if len(times) > 1 else 0.0)
    shown = {max(int(np.searchsorted(times, k + 1e-6, side="right")) - 1, 0)
             for k in range(math.ceil(end - 1e-6))}
    return times[sorted(shown)], end


PAIRS = [(case, backend) for case in CASES for backend in BACKENDS]


@pytest.mark.parametrize(("case", "backend"), [p for p in PAIRS if p[1] in p[0].backends],
                         ids=lambda v: v.name if isinstance(v, Case) else v)
def test_accepted_pair_gives_its_rows_and_times(made: dict[str, Path | str], runs: Runs,
                                                case: Case, backend: str,
                                                capsys: pytest.CaptureFixture) -> None:
    path = _file(made, case)
    code, store_dir, out = runs(backend, capsys)
    assert code == 0, out
    store = vidfeat.open_store(str(store_dir))
    starts, end = expected_frame_rows(path)
    data, times = store.get(case.name, "resnet152"), store.times(case.name, "resnet152")
    assert data.shape == (len(starts), 2048) and np.isfinite(data).all()
    np.testing.assert_allclose(times[:, 0], starts, atol=1e-3)
    np.testing.assert_allclose(times[1:, 0], times[:-1, 1], atol=1e-6)
    # the last row ends with the last frame: its own duration (pyav) or 1 / fps (decord)
    assert times[-1, 1] == pytest.approx(end, abs=0.05)
    assert store.attrs(case.name, "resnet152")["decoder"] == backend
    if backend != "pyav":
        return
    info = probe(path)
    samples = len(load_audio(info))
    rows = (samples - EXAMPLE) // HOP + 1
    audio, audio_times = store.get(case.name, "vggish"), store.times(case.name, "vggish")
    assert audio.shape == (rows, 128) and np.isfinite(audio).all()
    np.testing.assert_allclose(audio_times[:, 0], info.audio_start + 0.96 * np.arange(rows),
                               atol=1e-6)


@pytest.mark.parametrize(("case", "backend"), [p for p in PAIRS if p[1] not in p[0].backends],
                         ids=lambda v: v.name if isinstance(v, Case) else v)
def test_refused_pair_fails_naming_the_file(made: dict[str, Path | str], case: Case,
                                            backend: str) -> None:
    path = _file(made, case)
    with pytest.raises(DecodeError, match=str(path)):
        for _ in iter_frames(probe(path), decoder=backend):
            pass


def test_dv_frame_rate_is_not_its_time_base(made: dict[str, Path | str]) -> None:
    """FFmpeg 7 gives a DV stream an average rate of 60000 fps (its time base); decord's
    frames have no duration, so a decode would wait for ~148800 frames."""
    dv = next(case for case in CASES if case.container == "dv")
    info = probe(_file(made, dv))
    assert info.fps == pytest.approx(25)
    assert len(list(iter_frames(info, decoder="decord"))) == 62


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_audio_is_where_the_video_says(made: dict[str, Path | str], case: Case) -> None:
    # the tone starts TONE_AT after the first source frame, which shows at the video's first
    # frame time less any offset the case gave the video
    path = _file(made, case)
    info = probe(path)
    samples = load_audio(info)
    onset = info.audio_start + int(np.flatnonzero(np.abs(samples) > 0.3)[0]) / 16000
    source_start = frame_times(path)[0] - case.video_offset
    assert onset - source_start - TONE_AT == pytest.approx(case.sync, abs=0.003)


@pytest.mark.parametrize(("case", "backend"),
                         [p for p in PAIRS if p[0].rotate and p[1] in p[0].backends],
                         ids=lambda v: v.name if isinstance(v, Case) else v)
def test_rotated_frames_are_upright_as_ffmpeg_shows_them(made: dict[str, Path | str],
                                                         case: Case, backend: str) -> None:
    path = _file(made, case)
    width, height = (int(v) for v in case.size.split("x"))
    raw = subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(path), "-frames:v",
                          "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # ffmpeg autorotates
    shown = np.frombuffer(raw, np.uint8).reshape(width, height, 3).astype(int)
    first = next(iter(iter_frames(probe(path), decoder=backend)))
    image = np.asarray(first.rgb).astype(int)
    assert image.shape == shown.shape
    # 10-bit input: three FFmpeg versions convert to RGB differently (docs/decoders.md)
    assert np.abs(image - shown).mean() < 8 < np.abs(image[::-1, ::-1] - shown).mean()


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
def test_theora_repeat_packets_are_no_frames(made: dict[str, Path | str], backend: str) -> None:
    # Ogg Theora writes an empty packet for "the previous frame again": PyAV's FFmpeg 8 refused
    # it (the decode stopped after 3-5 frames), and counted as a frame it put torchcodec's frame
    # index off the packet times after a seek
    theora = next(case for case in CASES if case.container == "ogv")
    path = _file(made, theora)
    info = probe(path)
    times = frame_times(path)
    assert len(times) < round(SECONDS * theora.fps)  # the empty packets are no frames
    full = [frame.time for frame in iter_frames(info, decoder=backend)]
    np.testing.assert_allclose(full, times, atol=1e-6)
    tail = [frame.time for frame in iter_frames(info, decoder=backend, start_time=1.0)]
    np.testing.assert_allclose(tail, times[times >= 1.0 - 1e-6], atol=1e-6)


def test_every_case_was_made_or_says_why(made: dict[str, Path | str]) -> None:
    assert len({case.name for case in CASES}) == len(CASES)
    if shutil.which(executable("ffmpeg")):
        made_here = [name for name, path in made.items() if not isinstance(path, str)]
        assert made_here, made
