"""A worker imports only the model modules its run uses, and never torchvision for the three
standard features (its import brings all of torchvision.models and torch._dynamo, 1.8 s of every
worker's start): neither a C3D + VGGish run nor a ResNet-152 run imports it, a torchvision video
model's run on the same worker does. Real `vidfeat extract` runs on a Dask LocalCluster started
with the preload every vidfeat worker gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from vidfeat import open_store
from vidfeat.cli import main
from vidfeat.jobs.worker_env import WARMUP

pytestmark = pytest.mark.slow


def test_a_worker_imports_only_the_models_its_run_uses(corpus: Path, tmp_path: Path) -> None:
    def imported() -> list[str]:
        import sys

        return sorted({name.split(".")[0] for name in sys.modules} & {"torch", "torchvision"})

    store = tmp_path / "store"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, preload=[WARMUP]) as cluster, \
            Client(cluster) as client:
        def extract(features: str) -> None:
            assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store),
                         "--features", features, "--random-weights", "--no-progress",
                         "--scheduler", cluster.scheduler_address]) == 0

        extract("c3d,vggish")
        assert list(client.run(imported).values()) == [["torch"]]
        extract("resnet152")
        assert list(client.run(imported).values()) == [["torch"]]
        extract("r3d_18")
        assert list(client.run(imported).values()) == [["torch", "torchvision"]]
    with open_store(store) as features:
        assert sorted(features.features("talk")) == ["c3d", "r3d_18", "resnet152", "vggish"]


def test_loading_resnet152s_weights_draws_nothing_and_imports_no_dynamo(
        corpus: Path, tmp_path: Path) -> None:
    """With a weights file the network is built on the meta device and takes the file's
    tensors: nn.init there would import torch._dynamo (1.4 s of each worker's start)."""
    import torch

    from vidfeat.extractors.resnet_network import ResNet152

    torch.manual_seed(3)
    weights = tmp_path / "resnet152.pth"
    torch.save(ResNet152().state_dict(), weights)

    def dynamo_imported() -> bool:
        import sys

        return "torch._dynamo" in sys.modules

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, preload=[WARMUP]) as cluster, \
            Client(cluster) as client:
        assert main(["extract", str(corpus / "talk.mp4"), "--store", str(tmp_path / "store"),
                     "--features", "resnet152", "--weights", f"resnet152={weights}",
                     "--no-progress", "--scheduler", cluster.scheduler_address]) == 0
        assert list(client.run(dynamo_imported).values()) == [False]
