"""The driver checks extractor options and decoders without torch: a job file's feature
options, ``--set`` options (``compile`` among them, which checks for a C++ compiler) and
``--decoder torchcodec`` are refused or accepted in a process that never imports torch or
torchvision, by the same rules the extractors apply."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.extractors.checks import BUILTIN_CHECKS
from vidfeat.extractors.registry import BUILTIN, check_options, get_extractor

TORCH_MODULES = ("import sys; print(sorted(m for m in sys.modules "
                 "if m.split('.')[0] in ('torch', 'torchvision')))")
JOB = """\
sources: [{videos}]
store: {store}
features:
  resnet152: {{fps: 2, weights_version: v2}}
  c3d: {{layer: fc7, stride: 8, precision: bf16}}
  vggish: {{hop: 1.0, relu: true}}
  r2plus1d_18: {{stride: 4}}
  r3d_18: {{clip_len: 8, compile: true}}
  s3d: {{clip_len: 16, stride: 8, compile: false}}
decoder: torchcodec
"""


def test_a_job_file_and_set_options_are_checked_without_torch(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(videos=tmp_path / "videos", store=tmp_path / "store"))
    script = (
        "from vidfeat.jobs.jobfile import load_job\n"
        "from vidfeat.options import RunOptions\n"
        "from vidfeat.pipeline.prepare import extractor_specs\n"
        f"job = load_job({str(job)!r})\n"
        "options = RunOptions(features=job.run['features'], decoder=job.run['decoder'],\n"
        "                     extractor_options=job.run['extractor_options'])\n"
        "options.check()\n"
        "assert sorted(extractor_specs(options)) == sorted(job.run['features'])\n"
        f"{TORCH_MODULES}\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("name", "options", "message"), [
    ("resnet152", {"fps": 0}, "resnet152: fps must be a positive number, got 0"),
    ("resnet152", {"fps": 1, "frames": 4}, "resnet152: give fps or frames, not both"),
    ("resnet152", {"weights_version": "v3"}, "resnet152: weights_version must be one of v1, v2"),
    ("c3d", {"layer": "fc8"}, "c3d: layer must be one of fc6, fc7, got 'fc8'"),
    ("c3d", {"pca": True, "layer": "fc6"}, "c3d: the ActivityNet PCA was fitted to fc7"),
    ("c3d", {"stride": True}, "c3d: stride must be a positive integer, got True"),
    ("vggish", {"hop": 0.5}, "vggish hop must be 0.96 or 1.0 seconds, got 0.5"),
    ("vggish", {"relu": "yes"}, "vggish relu must be true or false, got 'yes'"),
    ("r3d_18", {"stride": 0}, "r3d_18: stride must be a positive integer, got 0"),
    ("s3d", {"clip_len": 8}, "s3d needs clips of at least 14 frames, got clip_len=8"),
    ("r2plus1d_18", {"depth": 3}, "unknown option 'depth' for extractor r2plus1d_18; valid "
                                  "options: clip_len, stride, precision, compile"),
])
def test_bad_options_are_refused_by_the_same_rules_as_the_extractors(
        name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as checked:
        check_options(name, options)
    assert message in str(checked.value)
    if "unknown option" not in message:  # the extractor itself says the same
        with pytest.raises(ConfigError) as built:
            get_extractor(name)(**options)
        assert str(built.value) == str(checked.value)


def test_each_builtin_rule_takes_its_extractors_options_with_the_same_defaults() -> None:
    assert set(BUILTIN_CHECKS) == set(BUILTIN)
    for name, rules in BUILTIN_CHECKS.items():
        init = inspect.signature(get_extractor(name).__init__).parameters.values()
        expected = [(p.name, p.kind, p.default) for p in init if p.name != "self"]
        assert [(p.name, p.kind, p.default) for p in inspect.signature(rules).parameters.values()
                ] == expected, name


def test_the_cli_checks_set_options_of_every_builtin_and_the_decoder_without_torch(
        tmp_path: Path) -> None:
    """The real ``vidfeat extract`` path: ``--set`` parsed, the run options (``--decoder
    torchcodec``) and each feature's options checked in order; the last one is bad, so the
    run stops (exit 2) once every other was accepted, before the store or a cluster exists."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not a video: never opened")
    settings = ["resnet152.frames=4", "resnet152.weights_version=v2", "c3d.pca=true",
                "c3d.stride=8", "c3d.precision=bf16", "vggish.hop=1", "vggish.postprocess=true",
                "r2plus1d_18.clip_len=8", "r2plus1d_18.compile=true", "r3d_18.stride=4",
                "r3d_18.compile=false",
                "s3d.stride=8", "s3d.clip_len=8"]
    argv = ["extract", str(video), "--store", str(tmp_path / "store"), "--no-progress",
            "--features", ",".join(BUILTIN), "--decoder", "torchcodec",
            *[arg for setting in settings for arg in ("--set", setting)]]
    assert list(BUILTIN)[-1] == "s3d"
    script = (f"from vidfeat.cli import main\ncode = main({argv!r})\n{TORCH_MODULES}\n"
              "raise SystemExit(code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr.strip().splitlines()[-1] == (
        "vidfeat: error: s3d needs clips of at least 14 frames, got clip_len=8")
    assert not (tmp_path / "store").exists()


def test_the_decoder_check_finds_torchcodec_without_importing_it() -> None:
    script = ("from vidfeat.media import check_decoder\n"
              "from vidfeat.options import RunOptions\n"
              "check_decoder('torchcodec')\n"
              "RunOptions(decoder='torchcodec').check()\n"
              f"{TORCH_MODULES}\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    # a None entry in sys.modules: as for a package that is not installed
    missing = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torchcodec'] = None\n" + script],
        capture_output=True, text=True)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == (
        "vidfeat.errors.ConfigError: decoder 'torchcodec' needs the torchcodec package, which "
        "does not import (not installed): pip install torchcodec (or pip install "
        "'vidfeat[decoders]')")


#: one bad value for each built-in extractor, as ``--set`` gives it, and what is said of it
BAD_VALUES = [
    ("resnet152", "fps", "-1", "resnet152: fps must be a positive number, got -1"),
    ("c3d", "layer", "fc8", "c3d: layer must be one of fc6, fc7, got 'fc8'"),
    ("vggish", "hop", "2", "vggish hop must be 0.96 or 1.0 seconds, got 2"),
    ("r2plus1d_18", "clip_len", "0", "r2plus1d_18: clip_len must be a positive integer, got 0"),
    ("r3d_18", "stride", "1.5", "r3d_18: stride must be a positive integer, got 1.5"),
    ("s3d", "clip_len", "8", "s3d needs clips of at least 14 frames, got clip_len=8"),
]


def test_bad_values_cover_every_builtin() -> None:
    assert sorted(name for name, *_ in BAD_VALUES) == sorted(BUILTIN)


@pytest.mark.parametrize(("name", "option", "value", "message"), BAD_VALUES)
def test_a_bad_set_option_is_a_usage_error_before_the_store_exists(
        name: str, option: str, value: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not a video: never opened")
    code = main(["extract", str(video), "--store", str(tmp_path / "store"),
                 "--features", name, "--set", f"{name}.{option}={value}", "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vidfeat: error: {message}"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("name", "option", "value", "message"), BAD_VALUES)
def test_a_bad_job_file_option_names_its_key(
        name: str, option: str, value: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"sources: [{tmp_path}]\nstore: {tmp_path / 'store'}\n"
                   f"features:\n  {name}: {{{option}: {value}}}\n")
    for command in (["extract", "--config", str(job), "--no-progress"],
                    ["submit", "--dry-run", str(job)]):
        assert main(command) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"vidfeat: error: {job}: features.{name}: {message}")
    assert not (tmp_path / "store").exists()
