"""Shared helpers: real videos made with the ffmpeg executable from lavfi sources; a network's
batch norms given statistics like trained ones'."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from vidfeat.media.tools import executable


def ffmpeg(*args: str) -> None:
    subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-y", *args], check=True)


def make_video(path: Path, *, seconds: float = 2.0, size: str = "96x72", fps: int = 8,
               audio: bool = True, source: str = "testsrc2") -> Path:
    """H.264/AAC for .mp4, VP9/Opus for .webm; ``audio=False`` leaves the audio stream out."""
    inputs = ["-f", "lavfi", "-t", str(seconds), "-i", f"{source}=size={size}:rate={fps}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    if path.suffix == ".webm":
        codecs = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "100k"]
        codecs += ["-c:a", "libopus"] if audio else []
    else:
        codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p"] + (["-c:a", "aac"] if audio else [])
    ffmpeg(*inputs, *codecs, "-shortest", str(path))
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short videos: H.264+AAC, H.264 without audio, VP9+Opus in a subdirectory."""
    root = tmp_path_factory.mktemp("corpus")
    make_video(root / "talk.mp4", seconds=2.5)
    make_video(root / "silent.mp4", seconds=2.0, audio=False, source="mandelbrot")
    (root / "web").mkdir()
    make_video(root / "web" / "clip.webm", seconds=2.0, fps=10)
    (root / "notes.txt").write_text("not a video")
    return root


#: fixtures that run a whole extraction: a test using one is slow (left out of make test-fast)
EXTRACTING_FIXTURES = {"training"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if EXTRACTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def training(tmp_path_factory: pytest.TempPathFactory):
    """The store with learnable annotations of tests/training_corpus.py, extracted once for
    the datasets, trainers and export tests (a ``TrainingCorpus``, not a directory of videos
    like ``corpus``)."""
    from training_corpus import training_corpus  # it imports this module's helpers

    return training_corpus(tmp_path_factory.mktemp("training"))


def with_real_statistics(model: Any, seed: int) -> Any:
    """A seeded init leaves every batch norm an identity (mean 0, variance 1, scale 1, shift
    0); trained weights do not. (torch imported here: the torch-free driver's tests run
    without it.)"""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.2, 0.2),
                                          (module.running_var, 0.3, 1.5),
                                          (module.weight, 0.3, 1.2), (module.bias, -0.2, 0.2)):
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high,
                                                                   generator=generator))
    return model
