"""ResNet-152 frame features: torchvision's network, its ImageNet weights file unchanged, and the
preprocessing preset of those weights.

The feature is ``flatten(avgpool(layer4))``, the 2048 values fed to ``fc``: the model keeps every
layer (so the weights file loads with its ``fc.*`` keys) and a graph cut at the ``flatten`` node
computes the feature.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet152
from torchvision.transforms._presets import ImageClassification
from torchvision.transforms.functional import resize

from vidfeat.errors import ConfigError
from vidfeat.extractors.base import (
    Extractor,
    FeatureNode,
    FrameSampler,
    Sampler,
    resize_per_channel,
)
from vidfeat.media.frames import Frame
from vidfeat.media.probe import MediaInfo, count_frames

# weights version -> (weights registry name, resize of the shorter side), from torchvision's
# ResNet152_Weights.IMAGENET1K_V1 / _V2 transforms(); both centre-crop 224
_VERSIONS = {
    "v1": ("resnet152-imagenet1k-v1", 256),
    "v2": ("resnet152-imagenet1k-v2", 232),
}
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
        if weights_version not in _VERSIONS:
            raise ConfigError(
                f"resnet152: weights_version must be one of {', '.join(_VERSIONS)}, "
                f"got {weights_version!r}"
            )
        if fps is not None and frames is not None:
            raise ConfigError("resnet152: give fps or frames, not both")
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                                   or frames < 1):
            raise ConfigError(f"resnet152: frames must be a positive integer, got {frames!r}")
        if frames is None:
            fps = 1.0 if fps is None else fps
            if (isinstance(fps, bool) or not isinstance(fps, (int, float))
                    or not math.isfinite(fps) or fps <= 0):
                raise ConfigError(f"resnet152: fps must be a positive number, got {fps!r}")
            fps = float(fps)
        self.weights_version = weights_version
        self.fps = fps
        self.frames = frames
        resize_size = _VERSIONS[weights_version][1]
        self.transform = ImageClassification(crop_size=CROP_SIZE, resize_size=resize_size)

    @property
    def weights_name(self) -> str:
        """The weights registry entry these options need (v1 and v2 differ)."""
        return _VERSIONS[self.weights_version][0]

    @property
    def feature_dim(self) -> int:
        return 2048

    def options(self) -> dict[str, Any]:
        sampling = {"fps": self.fps} if self.frames is None else {"frames": self.frames}
        return {
            "weights_version": self.weights_version,
            **sampling,
            "resize_size": self.transform.resize_size[0],
            "crop_size": self.transform.crop_size[0],
            "interpolation": self.transform.interpolation.value,
            "antialias": self.transform.antialias,
            "mean": self.transform.mean,
            "std": self.transform.std,
            "layer": FEATURE_NODE,
        }

    def build_model(self) -> nn.Module:
        return resnet152()

    def network(self) -> nn.Module:
        return FeatureNode(super().network(), FEATURE_NODE)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        return self.run_network(batch).float().cpu().numpy()

    def sampler(self, info: MediaInfo, start_time: float | None = None) -> Sampler:
        if self.frames is None:
            return FrameSampler(self._preprocess, fps=self.fps, start_time=start_time)
        frame_count = info.frame_count or count_frames(info.path)
        return FrameSampler(self._preprocess, count=self.frames, frame_count=frame_count,
                            start_time=start_time)

    def _preprocess(self, frame: Frame) -> torch.Tensor:
        # the preset takes the uint8 image as is, as torchvision's own pipeline does; the
        # frame is shrunk first one channel at a time (same values, less memory)
        transform = self.transform
        image = resize_per_channel(frame.tensor.permute(2, 0, 1), partial(
            resize, size=transform.resize_size, interpolation=transform.interpolation,
            antialias=transform.antialias))
        return transform(image)
