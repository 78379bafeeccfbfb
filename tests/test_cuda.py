"""The CUDA path: same features as the CPU path. Runs only where a GPU is visible (never in CI,
which has none; the CPU path is tested everywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vidfeat
from vidfeat.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_features_match_cpu(corpus: Path, tmp_path: Path) -> None:
    stores = {}
    for device in ("cpu", "cuda"):
        stores[device] = tmp_path / device
        assert main(["extract", str(corpus), "--store", str(stores[device]), "--device", device,
                     "--workers", "1", "--random-weights", "--no-progress", "--dtype",
                     "float32"]) == 0
    cpu, gpu = (vidfeat.open_store(str(stores[d])) for d in ("cpu", "cuda"))
    for video_id in cpu.videos():
        for name in cpu.features(video_id):
            assert gpu.attrs(video_id, name)["device"].startswith("cuda")
            reference = cpu.get(video_id, name)
            scale = np.abs(reference).max() + 1e-6
            # TF32/cuDNN kernels differ from CPU ones in the last bits only
            np.testing.assert_allclose(gpu.get(video_id, name) / scale, reference / scale,
                                       atol=2e-3)
            np.testing.assert_array_equal(gpu.times(video_id, name), cpu.times(video_id, name))


def test_cuda_requested_without_gpu_is_refused_on_cpu_machines() -> None:
    # on a GPU machine this documents the other side: cuda resolves, nothing is refused
    from vidfeat.host import resolve_device

    assert resolve_device("cuda").type == "cuda"


def test_nvdec_decode_feeds_the_gpu_models_and_is_recorded(corpus: Path, tmp_path: Path
                                                           ) -> None:
    pytest.importorskip("torchcodec")
    stores = {}
    for device, decoder in (("cpu", "pyav"), ("cuda", "torchcodec")):
        stores[device] = tmp_path / device
        assert main(["extract", str(corpus), "--store", str(stores[device]), "--device", device,
                     "--decoder", decoder, "--features", "resnet152,c3d", "--workers", "1",
                     "--random-weights", "--no-progress", "--dtype", "float32"]) == 0
    cpu, gpu = (vidfeat.open_store(str(stores[d])) for d in ("cpu", "cuda"))
    for video_id in cpu.videos():
        for name in cpu.features(video_id):
            attrs = gpu.attrs(video_id, name)
            # a GPU whose NVDEC cannot take a codec falls back to the CPU, and says so
            assert attrs["decoder"] == "torchcodec"
            assert attrs["decode_device"].startswith(("cuda", "cpu"))
            reference = cpu.get(video_id, name)
            scale = np.abs(reference).max() + 1e-6
            # NVDEC's YUV->RGB conversion is not swscale's (a few grey levels per pixel)
            np.testing.assert_allclose(gpu.get(video_id, name) / scale, reference / scale,
                                       atol=5e-2)
            np.testing.assert_array_equal(gpu.times(video_id, name), cpu.times(video_id, name))
    assert any(gpu.attrs(v, f)["decode_device"].startswith("cuda")
               for v in gpu.videos() for f in gpu.features(v))
