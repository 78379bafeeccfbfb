"""ResNet-152 frame features: torchvision's network, its ImageNet weights file unchanged, and the
preprocessing preset of those weights, both written out in torch alone (``resnet_network.py``
says why).

The feature is ``flatten(avgpool(layer4))``, the 2048 values fed to ``fc``: the model keeps every
layer (so the weights file loads with its ``fc.*`` keys) and the network runs its layers in
``ResNet.forward``'s order up to the ``flatten`` node.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from vidfeat.extractors import checks
from vidfeat.extractors.base import (
    Extractor,
    FrameSampler,
    Sampler,
    resize_per_channel,
)
from vidfeat.extractors.checks import RESNET_VERSIONS
from vidfeat.extractors.resnet_network import (
    MEAN,
    STD,
    ResNet152,
    center_crop,
    fold_batch_norms,
    normalize,
    resize_bilinear,
    resized_size,
)
from vidfeat.media.frames import Frame
from vidfeat.media.probe import MediaInfo, count_frames

CROP_SIZE = 224
FEATURE_NODE = "flatten"


class ResNet152Extractor(Extractor):
    """One 2048-d row per sampled frame: ``fps`` frames per second (default 1.0) by
    presentation time, or ``frames`` frames spread uniformly over the video (S2VT style)."""

    name = "resnet152"
    modality = "frames"
    default_weights = "resnet152-imagenet1k-v1"
    batch_size = 32

    def __init__(self, *, weights_version: str = "v1", fps: float | None = None,
                 frames: int | None = None) -> None:
        super().__init__()
        checked = checks.resnet152(weights_version=weights_version, fps=fps, frames=frames)
        self.weights_version = checked["weights_version"]
        self.fps = checked["fps"]
        self.frames = checked["frames"]
        #: the shorter side before the central crop (the weights' preset: V1 256, V2 232)
        self.resize_size = RESNET_VERSIONS[weights_version][1]

    @property
    def weights_name(self) -> str:
        """The weights registry entry these options need (v1 and v2 differ)."""
        return RESNET_VERSIONS[self.weights_version][0]

    @property
    def feature_dim(self) -> int:
        return 2048

    def options(self) -> dict[str, Any]:
        sampling = {"fps": self.fps} if self.frames is None else {"frames": self.frames}
        return {
            "weights_version": self.weights_version,
            **sampling,
            "resize_size": self.resize_size,
            "crop_size": CROP_SIZE,
            "interpolation": "bilinear",
            "antialias": True,
            "mean": list(MEAN),
            "std": list(STD),
            "layer": FEATURE_NODE,
        }

    def build_model(self) -> nn.Module:
        return ResNet152()

    def network(self) -> nn.Module:
        # the layers in ResNet.forward's order, fc left out: the same module calls as
        # FeatureNode's graph cut at "flatten", without its 0.6 s of tracing per worker;
        # batch norms folded into the convolutions (resnet_network says why)
        model = super().network()
        fold_batch_norms(model)
        return nn.Sequential(*(layer for name, layer in model.named_children() if name != "fc"),
                             nn.Flatten(1))

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        return self.run_network(batch).float().cpu().numpy()

    def sampler(self, info: MediaInfo, start_time: float | None = None) -> Sampler:
        if self.frames is None:
            return FrameSampler(self._preprocess, fps=self.fps, start_time=start_time)
        frame_count = info.frame_count or count_frames(info.path)
        return FrameSampler(self._preprocess, count=self.frames, frame_count=frame_count,
                            start_time=start_time)

    def _preprocess(self, frame: Frame) -> torch.Tensor:
        # the weights' preset on the uint8 image, as torchvision's own pipeline applies it;
        # the frame is shrunk one channel at a time (same values, less memory)
        image = frame.tensor.permute(2, 0, 1)
        size = resized_size(*image.shape[-2:], self.resize_size)
        image = resize_per_channel(image, partial(resize_bilinear, size=size))
        return normalize(center_crop(image, CROP_SIZE))
