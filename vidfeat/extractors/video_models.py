"""torchvision's Kinetics-400 video classifiers as clip feature extractors: R(2+1)D-18, R3D-18
and S3D.

Each runs torchvision's own network with its weights file unchanged, and the preprocessing of
its weights' ``transforms()`` (``VideoClassification``: bilinear resize without antialias,
centre crop, scale to [0, 1], Kinetics mean/std). That transform resizes and crops every frame
on its own, so it is applied to each frame as it is decoded: a clip then holds only small
preprocessed frames, and the result is the same as transforming the assembled clip.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.models import video
from torchvision.transforms._presets import VideoClassification
from torchvision.transforms.functional import resize

from vidfeat.extractors import checks
from vidfeat.extractors.base import (
    ClipSampler,
    Extractor,
    FeatureNode,
    Sampler,
    resize_per_channel,
)
from vidfeat.media.frames import Frame
from vidfeat.media.probe import MediaInfo


class _TorchvisionVideoExtractor(Extractor):
    """Clips of ``clip_len`` consecutive frames, a new one every ``stride`` frames."""

    modality = "clips"
    batch_size = 8
    feature_node: ClassVar[str]  # the traced graph node whose output the feature is made of
    resize_size: ClassVar[tuple[int, int]]
    crop_size: ClassVar[tuple[int, int]]
    feature_size: ClassVar[int]
    builder: ClassVar[Callable[[], nn.Module]]  # torchvision's model builder, no weights

    def __init__(self, *, clip_len: int = 16, stride: int = 16) -> None:
        super().__init__()
        checked = checks.video_model(self.name, clip_len=clip_len, stride=stride)
        self.clip_len = checked["clip_len"]
        self.stride = checked["stride"]
        self.transform = VideoClassification(crop_size=self.crop_size,
                                             resize_size=self.resize_size)

    @property
    def feature_dim(self) -> int:
        return self.feature_size

    def build_model(self) -> nn.Module:
        return type(self).builder()

    def options(self) -> dict[str, Any]:
        return {
            "clip_len": self.clip_len,
            "stride": self.stride,
            "resize_size": self.transform.resize_size,
            "crop_size": self.transform.crop_size,
            "interpolation": self.transform.interpolation.value,
            "antialias": False,
            "mean": self.transform.mean,
            "std": self.transform.std,
            "layer": self.feature_node,
        }

    def network(self) -> nn.Module:
        return FeatureNode(super().network(), self.feature_node)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        return self._rows(self.run_network(batch)).float().cpu().numpy()

    def _rows(self, output: torch.Tensor) -> torch.Tensor:
        """The feature node's output as [B, feature_dim]."""
        return output

    def sampler(self, info: MediaInfo, start_time: float | None = None) -> Sampler:
        return ClipSampler(self._preprocess, clip_len=self.clip_len, stride=self.stride)

    def _preprocess(self, frame: Frame) -> torch.Tensor:
        """One uint8 frame as a one-frame video (T=1, C, H, W) -> [C, 1, crop, crop]; shrunk
        first one channel at a time (same values, less memory)."""
        image = resize_per_channel(frame.tensor.permute(2, 0, 1).unsqueeze(0),
                                   partial(resize, size=list(self.transform.resize_size),
                                           interpolation=self.transform.interpolation,
                                           antialias=False))
        return self.transform(image)


class R2Plus1D18Extractor(_TorchvisionVideoExtractor):
    """R(2+1)D-18: ``flatten(avgpool(layer4))``, the 512 values fed to ``fc``."""

    name = "r2plus1d_18"
    default_weights = "r2plus1d_18-kinetics400"
    feature_node = "flatten"
    resize_size = (128, 171)
    crop_size = (112, 112)
    feature_size = 512
    builder = video.r2plus1d_18


class R3D18Extractor(_TorchvisionVideoExtractor):
    """R3D-18: ``flatten(avgpool(layer4))``, the 512 values fed to ``fc``."""

    name = "r3d_18"
    default_weights = "r3d_18-kinetics400"
    feature_node = "flatten"
    resize_size = (128, 171)
    crop_size = (112, 112)
    feature_size = 512
    builder = video.r3d_18


class S3DExtractor(_TorchvisionVideoExtractor):
    """S3D: the ``avgpool`` output (1024 channels; kernel 2x7x7, stride 1) averaged over time
    and space. torchvision's ``S3D.forward`` applies the 1x1x1 classifier convolution before
    that average; the convolution is linear, so this average is exactly what the classifier
    sees. A 16-frame clip leaves a 1x1x1 map; longer clips leave several, all averaged."""

    name = "s3d"
    default_weights = "s3d-kinetics400"
    feature_node = "avgpool"
    resize_size = (256, 256)
    crop_size = (224, 224)
    feature_size = 1024
    builder = video.s3d

    def _rows(self, output: torch.Tensor) -> torch.Tensor:
        return output.mean(dim=(2, 3, 4))
