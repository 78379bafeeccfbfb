"""C3D (Tran et al., ICCV 2015) clip features, reproducing the Caffe reference
(facebookarchive/C3D, c3d_sport1m_feature_extractor_frm.prototxt).

The network's attribute names are those of the DavideA/c3d-pytorch port, so its ``c3d.pickle``
loads unchanged; only pool5 differs from the port: Caffe rounds pool5's output size up
(7 -> 4), which ``ceil_mode=True`` reproduces exactly, while the port's padding (0, 1, 1) gives
the same size from windows shifted by one row and column.

Input, as the reference's video data layer builds it: 16 consecutive frames, BGR, resized to
171x128 by OpenCV (bilinear, no antialias) and stored as uint8, minus the Sports-1M mean, then
the centre 112x112 crop at Caffe's offsets. Features are post-ReLU (Caffe's relu6/relu7 run in
place on the fc6/fc7 blobs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.errors import ConfigError, WeightsError
from vidfeat.extractors import checks
from vidfeat.extractors.base import ClipSampler, Extractor, Sampler
from vidfeat.extractors.checks import C3D_CLIP_LEN as CLIP_LEN
from vidfeat.extractors.checks import C3D_LAYERS as LAYERS
from vidfeat.extractors.weights import LoadedWeights, sha256_file
from vidfeat.media.frames import Frame
from vidfeat.media.probe import MediaInfo

RESIZE = (128, 171)  # height, width
CROP = 112
# the Caffe layer's test-time offsets use integer division: (128-112)//2 = 8 and
# (171-112)//2 = 29, where torchvision's center_crop would round 29.5 up to 30
CROP_TOP = (RESIZE[0] - CROP) // 2
CROP_LEFT = (RESIZE[1] - CROP) // 2
# per-channel average of sport1m_train16_128_mean, BGR
SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)
SPORTS1M_CLASSES = 487
FC_DIM = 4096
PCA_WEIGHTS = "c3d-pca-activitynet"
PCA_DIM = 500


def _conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)


class C3D(nn.Module):
    """The Sports-1M C3D network. Input [B, 3, 16, 112, 112] (BGR, mean-subtracted, 0-255
    scale); ``forward`` returns the post-ReLU ``fc6`` or ``fc7`` activations, or the ``fc8``
    class scores."""

    def __init__(self, num_classes: int = SPORTS1M_CLASSES) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = _conv(64, 128)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a = _conv(128, 256)
        self.conv3b = _conv(256, 256)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a = _conv(256, 512)
        self.conv4b = _conv(512, 512)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a = _conv(512, 512)
        self.conv5b = _conv(512, 512)
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True)
        self.fc6 = nn.Linear(512 * 1 * 4 * 4, FC_DIM)
        self.fc7 = nn.Linear(FC_DIM, FC_DIM)
        self.fc8 = nn.Linear(FC_DIM, num_classes)
        self.dropout = nn.Dropout(p=0.5)

    def pool5_features(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, 3, 16, 112, 112] -> [B, 512, 1, 4, 4]."""
        # in-place ReLUs, as Caffe's: a batch of clips' conv1 output alone is 50 MB a clip
        x = self.pool1(F.relu_(self.conv1(clips)))
        x = self.pool2(F.relu_(self.conv2(x)))
        x = self.pool3(F.relu_(self.conv3b(F.relu_(self.conv3a(x)))))
        x = self.pool4(F.relu_(self.conv4b(F.relu_(self.conv4a(x)))))
        return self.pool5(F.relu_(self.conv5b(F.relu_(self.conv5a(x)))))

    def forward(self, clips: torch.Tensor, *, layer: str = "fc8") -> torch.Tensor:
        if layer not in (*LAYERS, "fc8"):
            raise ValueError(f"C3D has no output layer {layer!r}")
        # flattened in C, D, H, W order, as Caffe's blob is laid out
        fc6 = F.relu(self.fc6(self.pool5_features(clips).flatten(1)))
        if layer == "fc6":
            return fc6
        fc7 = F.relu(self.fc7(self.dropout(fc6)))
        if layer == "fc7":
            return fc7
        return self.fc8(self.dropout(fc7))


class _C3DLayer(nn.Module):
    """C3D up to one output layer, as a module of the clips alone."""

    def __init__(self, model: C3D, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips, layer=self.layer)


class C3DExtractor(Extractor):
    """One row per 16-frame clip, a clip every ``stride`` frames (16 as the reference; 8 for
    ActivityNet's features). ``layer`` "fc6" (default; "fc7" with ``pca``) or "fc7";
    ``mean_file`` a .npy mean volume (3, 16, 128, 171), BGR, instead of the per-channel mean;
    ``pca`` projects fc7 to ActivityNet's 500-d PCA space."""

    name = "c3d"
    modality = "clips"
    default_weights = "c3d-sports1m"
    batch_size = 8

    def __init__(self, *, layer: str | None = None, stride: int = CLIP_LEN,
                 mean_file: str | Path | None = None, pca: bool = False) -> None:
        super().__init__()
        checked = checks.c3d(layer=layer, stride=stride, mean_file=mean_file, pca=pca)
        self.layer = checked["layer"]
        self.stride = checked["stride"]
        self.pca = checked["pca"]
        if mean_file is None:
            mean = torch.tensor(SPORTS1M_MEAN_BGR).view(3, 1, 1, 1).expand(3, CLIP_LEN, *RESIZE)
            self._mean_identity: dict[str, Any] = {"mean": list(SPORTS1M_MEAN_BGR)}
        else:
            mean = _read_mean_volume(Path(mean_file))
            self._mean_identity = {"mean_file_sha256": sha256_file(Path(mean_file))}
        # subtracting before or after the crop is the same per pixel: crop the mean once
        self._cropped_mean = mean[:, :, CROP_TOP:CROP_TOP + CROP,
                                  CROP_LEFT:CROP_LEFT + CROP].contiguous()
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def feature_dim(self) -> int:
        return PCA_DIM if self.pca else FC_DIM

    def options(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "clip_len": CLIP_LEN,
            "stride": self.stride,
            "channels": "BGR 0-255",
            "resize_size": list(RESIZE),
            "interpolation": "bilinear, no antialias, rounded to uint8",
            **self._mean_identity,
            "crop_size": CROP,
            "crop_offset": [CROP_TOP, CROP_LEFT],
            "pca": PCA_WEIGHTS if self.pca else None,
        }

    def build_model(self) -> nn.Module:
        return C3D()

    def load(self, weights: LoadedWeights, device: torch.device | str = "cpu") -> None:
        super().load(weights, device)
        if self.pca:
            components, centre = _activitynet_pca(weights)
            self._projection = (components.to(self.device), centre.to(self.device))

    def network(self) -> nn.Module:
        return _C3DLayer(super().network(), self.layer)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        features = self.run_network(batch)
        if self._projection is not None:
            components, centre = self._projection
            features = (features.float() - centre) @ components.T
        return features.float().cpu().numpy()

    def sampler(self, info: MediaInfo, start_time: float | None = None) -> Sampler:
        return ClipSampler(self._preprocess, clip_len=CLIP_LEN, stride=self.stride,
                           assemble=self._assemble)

    def _preprocess(self, frame: Frame) -> torch.Tensor:
        """RGB frame -> [3, 1, 128, 171] uint8 BGR, as the reference stores it (on the device
        the frame was decoded on)."""
        rgb = frame.tensor.permute(2, 0, 1).unsqueeze(0)
        # OpenCV's INTER_LINEAR: half-pixel centres, no antialias (antialias would differ
        # from it by 10-50 grey levels when shrinking); rounding reproduces its uint8 result
        # to within one grey level. Channels are resized independently, so one at a time (a
        # 4K frame in float32 is 100 MB, one channel 33 MB) gives the same values, and turning
        # RGB into BGR on the small result is 3x faster than on the frame.
        resized = torch.cat([
            F.interpolate(rgb[:, channel:channel + 1].float(), size=RESIZE, mode="bilinear",
                          align_corners=False, antialias=False)
            for channel in (2, 1, 0)
        ], dim=1)
        return resized.round().to(torch.uint8).permute(1, 0, 2, 3)

    def _assemble(self, clip: torch.Tensor) -> torch.Tensor:
        """[3, 16, 128, 171] uint8 -> [3, 16, 112, 112] float32, mean subtracted."""
        crop = clip[:, :, CROP_TOP:CROP_TOP + CROP, CROP_LEFT:CROP_LEFT + CROP]
        if self._cropped_mean.device != crop.device:  # frames decoded on a GPU: moved once
            self._cropped_mean = self._cropped_mean.to(crop.device)
        return crop.float() - self._cropped_mean


def _read_mean_volume(path: Path) -> torch.Tensor:
    shape = (3, CLIP_LEN, *RESIZE)
    try:
        volume = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"c3d: cannot read mean_file {path}: {error}") from error
    if volume.shape != shape or not np.issubdtype(volume.dtype, np.number):
        raise ConfigError(f"c3d: mean_file {path} holds {volume.dtype} {volume.shape}; "
                          f"expected a BGR mean volume of shape {shape}")
    return torch.from_numpy(volume.astype(np.float32))


def _activitynet_pca(weights: LoadedWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 500 principal components [500, 4096] and the mean [4096] of ActivityNet's C3D
    fc7 PCA, applied as ``(x - x_mean) @ U[:500].T``."""
    path = weights.auxiliary(PCA_WEIGHTS)
    if path is None:
        # random weights (smoke tests): a seeded random orthonormal basis and a zero mean
        # stand in for the real PCA, so outputs keep their shape and scale
        generator = torch.Generator().manual_seed(weights.seed)
        basis, _ = torch.linalg.qr(torch.randn(FC_DIM, PCA_DIM, generator=generator))
        return basis.T.contiguous(), torch.zeros(FC_DIM)
    try:
        with h5py.File(path, "r") as handle:
            components = np.asarray(handle["data/U"][:PCA_DIM], dtype=np.float32)
            centre = np.asarray(handle["data/x_mean"], dtype=np.float32).reshape(-1)
    except (OSError, KeyError) as error:
        raise WeightsError(f"{path}: not an ActivityNet PCA file (data/U, data/x_mean): "
                           f"{error}") from error
    if components.shape != (PCA_DIM, FC_DIM) or centre.shape != (FC_DIM,):
        raise WeightsError(f"{path}: U[:{PCA_DIM}] is {components.shape} and x_mean "
                           f"{centre.shape}; expected ({PCA_DIM}, {FC_DIM}) and ({FC_DIM},)")
    return torch.from_numpy(components), torch.from_numpy(centre)
