"""`--compile`: models run as cached AOTInductor packages give the eager rows within
rounding, a package is built once and reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

import vidfeat
from tests.conftest import make_video
from vidfeat.cli import main
from vidfeat.errors import ExitCode
from vidfeat.extractors.base import FeatureNode
from vidfeat.extractors.compiled import CompiledNetwork
from vidfeat.extractors.pool import ExtractorSpec

# compiled kernels fold batch norms and reorder sums: rows differ from eager ones by ~5e-7
TOLERANCE = 2e-5


def _relative_error(rows: np.ndarray, reference: np.ndarray) -> float:
    return float((np.linalg.norm(rows - reference, axis=1)
                  / np.linalg.norm(reference, axis=1)).max())


@pytest.mark.slow  # builds an AOTInductor package: a C++ compile of tens of seconds
def test_compiled_vggish_matches_eager_at_every_batch_size_and_is_built_once(
        tmp_path: Path) -> None:
    spec = ExtractorSpec("vggish", random_weights=True)
    eager = spec.load(torch.device("cpu"))
    compiled = spec.load(torch.device("cpu"))
    compiled.compile(tmp_path)
    examples = torch.randn(7, 1, 96, 64, generator=torch.Generator().manual_seed(0))
    # the first batch fixes the package; later batches of any size, one row included, use it
    for rows in (examples[:3], examples, examples[:1]):
        assert _relative_error(compiled.embed(rows), eager.embed(rows)) < TOLERANCE
    assert compiled.compiled and not eager.compiled
    packages = list(tmp_path.glob("*.pt2"))
    assert len(packages) == 1 and compiled._network.built

    again = spec.load(torch.device("cpu"))
    again.compile(tmp_path)
    np.testing.assert_array_equal(again.embed(examples), compiled.embed(examples))
    assert not again._network.built and list(tmp_path.glob("*.pt2")) == packages


@pytest.mark.slow  # builds an AOTInductor package: a C++ compile of tens of seconds
def test_a_model_cut_at_a_node_compiles(tmp_path: Path) -> None:
    # ResNet-152 and the video models are cut with torchvision's feature extraction; a small
    # ResNet checks the same path in a fraction of the build time
    torch.manual_seed(0)
    network = FeatureNode(resnet18().eval().to(memory_format=torch.channels_last), "flatten")
    compiled = CompiledNetwork(network, "resnet18-test", tmp_path)
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        reference = network(images).numpy()
        assert _relative_error(compiled(images).numpy(), reference) < TOLERANCE


def test_compile_without_a_compiler_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    video = make_video(tmp_path / "a.mp4", seconds=1.0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ nor clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    code = main(["extract", str(video), "--store", str(tmp_path / "store"), "--features",
                 "vggish", "--random-weights", "--compile", "--no-progress"])
    assert code == ExitCode.USAGE
    error = capsys.readouterr().err.strip().splitlines()
    assert any("--compile needs a C++ compiler" in line for line in error)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow  # builds an AOTInductor package: a C++ compile of tens of seconds
def test_a_different_configuration_gets_its_own_package(tmp_path: Path) -> None:
    examples = torch.randn(2, 1, 96, 64)
    for relu in (True, False):
        extractor = ExtractorSpec("vggish", {"relu": relu}, random_weights=True).load(
            torch.device("cpu"))
        extractor.compile(tmp_path)
        extractor.embed(examples)
    assert len(list(tmp_path.glob("*.pt2"))) == 2


@pytest.mark.slow  # builds an AOTInductor package: a C++ compile of tens of seconds
def test_compiled_bf16_has_autocast_in_the_package(tmp_path: Path) -> None:
    spec = ExtractorSpec("vggish", random_weights=True, precision="bf16")
    compiled, eager = spec.load(torch.device("cpu")), spec.load(torch.device("cpu"))
    compiled.compile(tmp_path)
    examples = torch.randn(4, 1, 96, 64, generator=torch.Generator().manual_seed(1))
    # bf16 rounding differs between fused and eager kernels, not by autocast's 0.3 % error
    assert _relative_error(compiled.embed(examples), eager.embed(examples)) < 0.01


@pytest.mark.slow
def test_extract_with_compile_stores_the_eager_rows(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path / "home"))  # inherited by the workers
    (tmp_path / "videos").mkdir()
    video = make_video(tmp_path / "videos" / "a.mp4", seconds=2.5, fps=8)
    stores = {}
    for mode in ("eager", "compiled"):
        stores[mode] = tmp_path / mode
        flags = ["--compile", "--set", "vggish.compile=false"] if mode == "compiled" else []
        code = main(["extract", str(video.parent), "--store", str(stores[mode]), "--features",
                     "c3d,vggish", "--random-weights", "--dtype", "float32", "--workers", "1",
                     "--no-progress", *flags])
        assert code == 0
    eager, compiled = (vidfeat.open_store(str(stores[mode])) for mode in ("eager", "compiled"))
    rows = compiled.get("a", "c3d")
    assert rows.shape == (1, 4096)
    assert _relative_error(rows, eager.get("a", "c3d")) < TOLERANCE
    np.testing.assert_array_equal(compiled.times("a", "c3d"), eager.times("a", "c3d"))
    assert compiled.attrs("a", "c3d")["compiled"] and not eager.attrs("a", "c3d")["compiled"]
    # a feature can opt out; its rows are then the eager ones exactly
    assert not compiled.attrs("a", "vggish")["compiled"]
    np.testing.assert_array_equal(compiled.get("a", "vggish"), eager.get("a", "vggish"))
    assert len(list((tmp_path / "home" / "compiled").glob("*.pt2"))) == 1
