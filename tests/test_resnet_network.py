"""vidfeat's ResNet-152 and its preprocessing, rebuilt without torchvision (so that a worker
does not import it), are torchvision's bit for bit: the same parameters from the same seed, the
same rows from the same weights, the same model input from the same frame. The extractor runs
it with its batch norms folded into the convolutions: the same rows to float32 rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import with_real_statistics
from torch import nn
from torchvision.models import ResNet152_Weights

from vidfeat.extractors.resnet import ResNet152Extractor
from vidfeat.extractors.resnet_network import ResNet152, fold_batch_norms
from vidfeat.media.frames import Frame


@pytest.fixture(scope="module")
def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(5)
    ours = ResNet152().eval()
    torch.manual_seed(5)
    reference = torchvision.models.resnet152().eval()
    return ours, reference


def test_a_seeded_init_draws_torchvisions_parameters(networks: tuple[nn.Module, nn.Module]
                                                     ) -> None:
    ours, reference = (network.state_dict() for network in networks)
    assert list(ours) == list(reference)
    unequal = [key for key in ours if not torch.equal(ours[key], reference[key])]
    assert not unequal, f"{len(unequal)} tensors differ, the first {unequal[0]}"


def test_the_network_gives_torchvisions_outputs(networks: tuple[nn.Module, nn.Module]) -> None:
    ours, reference = networks
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(ours(batch), reference(batch))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("height,width", [(360, 640), (640, 360), (257, 301), (256, 256),
                                          (232, 500), (120, 160), (1080, 1920)])
def test_preprocessing_is_the_weights_preset(version: str, height: int, width: int) -> None:
    enum = ResNet152_Weights.IMAGENET1K_V1 if version == "v1" else ResNet152_Weights.IMAGENET1K_V2
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    ours = ResNet152Extractor(weights_version=version)._preprocess(Frame(0, 0.0, 0.04, image))
    reference = enum.transforms()(torch.from_numpy(image).permute(2, 0, 1))
    assert ours.shape == reference.shape == (3, 224, 224)
    assert torch.equal(ours, reference)


@pytest.fixture(scope="module")
def trained_like() -> tuple[nn.Module, nn.Module]:
    """The network with batch norms like trained ones', and a copy with them folded."""
    torch.manual_seed(7)
    network = with_real_statistics(ResNet152().eval(), seed=7)
    network.fc = nn.Identity()
    folded = copy.deepcopy(network)
    fold_batch_norms(folded)
    return network, folded


def test_folded_batch_norms_give_the_networks_rows(trained_like: tuple[nn.Module, nn.Module]
                                                    ) -> None:
    network, folded = trained_like
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    torch.manual_seed(2)
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        reference, ours = network(batch), folded(batch)
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= 1e-5 * scale  # float32 rounding: measured 6e-7


def test_folding_again_changes_nothing(trained_like: tuple[nn.Module, nn.Module]) -> None:
    folded = trained_like[1]
    before = {key: tensor.clone() for key, tensor in folded.state_dict().items()}
    fold_batch_norms(folded)
    after = folded.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], before[key]) for key in before)


@pytest.mark.parametrize("folded", [False, True], ids=["as-built", "folded"])
def test_a_row_is_the_same_in_any_batch(networks: tuple[nn.Module, nn.Module],
                                        trained_like: tuple[nn.Module, nn.Module],
                                        folded: bool) -> None:
    """With one torch thread (vidfeat's workers' default on a CPU) PyTorch computes a small
    batch's 1x1 convolutions with another kernel than a large one's, unless told otherwise:
    a segment's rows would then differ from the whole video's. (The features, fc left out;
    the folded network is the one the extractor runs.)"""
    if folded:
        features = nn.Sequential(trained_like[1], nn.Flatten(1))
    else:
        features = nn.Sequential(*list(networks[0].children())[:-1], nn.Flatten(1))
    threads = torch.get_num_threads()
    torch.manual_seed(1)
    batch = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            assert torch.equal(features(batch[:3]), features(batch)[:3])
    finally:
        torch.set_num_threads(threads)
