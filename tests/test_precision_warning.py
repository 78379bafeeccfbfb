"""A reduced precision on a CPU without instructions for it is emulated by PyTorch, slower than
fp32 (ResNet-152 in bf16 6.7x slower on an AVX2 CPU): `vidfeat extract` says so before the
run, for the models that run on this machine's CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_video
from vidfeat.cli import _emulated_precision_warnings, build_parser, extract_job, main
from vidfeat.host import emulated_precision

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx fma avx2 f16c\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16\n"
GRAVITON3 = "Features\t: fp asimd evtstrm aes sha1 fphp asimdhp bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo,bf16,fp16", [(AVX2_ONLY, True, True),
                                               (SAPPHIRE_RAPIDS, False, False),
                                               (GRAVITON3, False, False)],
                         ids=["avx2", "sapphire-rapids", "graviton3"])
def test_the_cpus_flags_say_which_precisions_are_emulated(tmp_path: Path, cpuinfo: str,
                                                          bf16: bool, fp16: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert emulated_precision("bf16", str(path)) is bf16
    assert emulated_precision("fp16", str(path)) is fp16
    assert emulated_precision("fp32", str(path)) is False


def test_an_unknown_cpu_is_not_called_slow(tmp_path: Path) -> None:
    assert emulated_precision("bf16", str(tmp_path / "missing")) is False
    (tmp_path / "empty").write_text("")
    assert emulated_precision("bf16", str(tmp_path / "empty")) is False


def _warnings(tmp_path: Path, cpuinfo: str, *flags: str) -> list[str]:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    job = extract_job(build_parser().parse_args(["extract", "videos", "--store", "store",
                                                 *flags]))
    return _emulated_precision_warnings(job, job.options(), str(path))


def test_each_feature_in_an_emulated_precision_is_named(tmp_path: Path) -> None:
    warnings = _warnings(tmp_path, AVX2_ONLY, "--features", "resnet152,vggish",
                         "--precision", "bf16", "--set", "vggish.precision=fp32")
    assert len(warnings) == 1
    assert warnings[0].startswith("WARNING: resnet152: precision bf16 on a CPU without bf16 "
                                  "instructions (avx512_bf16, amx_bf16, bf16)")
    assert _warnings(tmp_path, SAPPHIRE_RAPIDS, "--precision", "bf16") == []
    assert _warnings(tmp_path, AVX2_ONLY) == []  # fp32, the default


def test_a_remote_cluster_is_not_judged_by_this_cpu(tmp_path: Path) -> None:
    assert _warnings(tmp_path, AVX2_ONLY, "--precision", "bf16",
                     "--scheduler", "tcp://127.0.0.1:8786") == []


@pytest.mark.slow
def test_extract_warns_on_this_machine_as_its_cpu_says(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    video = make_video(tmp_path / "tone.mp4", seconds=1.0)
    assert main(["extract", str(video), "--store", str(tmp_path / "store"), "--features",
                 "vggish", "--precision", "bf16", "--random-weights", "--no-progress",
                 "--workers", "1"]) == 0
    warned = "vggish: precision bf16 on a CPU without bf16 instructions" in capsys.readouterr().err
    assert warned is emulated_precision("bf16")
