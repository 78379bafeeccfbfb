"""ResNet-152 and its ImageNet preprocessing exactly as torchvision 0.29 has them
(``torchvision.models.resnet152`` and the ``ImageClassification`` preset of its weights), in
torch alone.

Why not torchvision's own: importing any torchvision module runs the package's ``__init__``,
which imports all of ``torchvision.models`` and, through ``torchvision.ops``, ``torch._dynamo``:
1.8 s of every ResNet-152 worker's start on a 2-core CPU, for a network of three module kinds.
The modules, parameter names, construction order (so a seeded random init draws the same
numbers) and forward are torchvision's; tests/test_resnet_network.py holds the network, the
random init and the preprocessing to torchvision's bit for bit.

One thing differs, on purpose: on the CPU in fp32 every convolution runs on oneDNN
(``_Conv2d``). PyTorch sends a 1x1 convolution of fewer than 16 images in a single-threaded
process to its reference kernel instead (``ConvParams::use_mkldnn``), and ResNet-152 is mostly
1x1 convolutions: with one torch thread per worker a batch of 10 frames took 220 ms a frame
against 150 ms on oneDNN, and rows depended on the batch they were computed in (4.5e-7
relative). On oneDNN a row is the same in any batch, and the same as torchvision's wherever
torchvision's convolutions run on oneDNN too (16 images and more, or several threads).

For inference the extractor then folds each batch norm into the convolution before it
(``fold_batch_norms``): the same function, one pass over each activation less (ResNet-152 in
fp32 5-10 % faster on a CPU), rows within 1e-6 relative of the unfolded network's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import interpolate
from torch.nn.utils.fusion import fuse_conv_bn_weights

#: ImageNet's channel statistics, as the preset normalises with them
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
_STD = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)
_BLOCKS = (3, 8, 36, 3)
_ONEDNN = torch.backends.mkldnn.is_available()


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d``, on oneDNN whatever the batch where oneDNN can run it (see above);
    autocast (bf16/fp16), other devices and compilation take the usual path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and _ONEDNN
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding,
                                            self.stride, self.dilation, self.groups)
        return super().forward(x)


def _conv1x1(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return _Conv2d(inputs, outputs, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet V1.5: the stride is on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inputs: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inputs, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1,
                             bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet152(nn.Module):
    """torchvision's ``resnet152()``: the same children in the same order (``conv1`` ...
    ``layer4``, ``avgpool``, ``fc``) and the same initialisation."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._inputs = 64
        self.conv1 = _Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(64, _BLOCKS[0])
        self.layer2 = self._layer(128, _BLOCKS[1], stride=2)
        self.layer3 = self._layer(256, _BLOCKS[2], stride=2)
        self.layer4 = self._layer(512, _BLOCKS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        if self.fc.weight.is_meta:
            # built to take loaded weights: nothing to draw, and nn.init's normal_ on the
            # meta device imports torch._dynamo (1.4 s of a worker's start)
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        outputs = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inputs != outputs:
            # built before the block, as torchvision does: a seeded init draws in this order
            downsample = nn.Sequential(_conv1x1(self._inputs, outputs, stride),
                                       nn.BatchNorm2d(outputs))
        layers = [Bottleneck(self._inputs, planes, stride, downsample)]
        self._inputs = outputs
        layers += [Bottleneck(outputs, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fold_batch_norms(model: ResNet152) -> None:
    """Fold every batch norm of an eval-mode ``model`` into the convolution before it, in
    place: the convolution takes the scaled weights and a bias, the batch norm becomes an
    identity. Running it again changes nothing."""
    for parent in model.modules():
        if isinstance(parent, (ResNet152, Bottleneck)):
            pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        elif isinstance(parent, nn.Sequential) and len(parent) == 2:  # a downsample
            pairs = [("0", "1")]
        else:
            continue
        for conv_name, norm_name in pairs:
            if hasattr(parent, norm_name):
                _fold(parent, conv_name, norm_name)


def _fold(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
    if not isinstance(norm, nn.BatchNorm2d):
        return
    if norm.training:
        raise RuntimeError("batch norms fold into their convolutions in eval mode only")
    layout = (torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last)
              and not conv.weight.is_contiguous() else torch.contiguous_format)
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                        norm.running_var, norm.eps, norm.weight, norm.bias)
    conv.weight = nn.Parameter(weight.detach().contiguous(memory_format=layout),
                               requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    setattr(parent, norm_name, nn.Identity())


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The size torchvision's ``resize(image, [shorter])`` gives: the shorter side ``shorter``,
    the longer scaled and truncated."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 [C, H, W] image resized as torchvision's tensor ``resize`` does it (bilinear,
    antialiased, computed in float32, rounded back to uint8)."""
    if tuple(image.shape[-2:]) == size:
        return image
    resized = interpolate(image.unsqueeze(0).to(torch.float32), size=list(size),
                          mode="bilinear", align_corners=False, antialias=True)
    return torch.round(resized.squeeze(0)).to(torch.uint8)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of an image at least that large on both sides."""
    height, width = image.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} image has no central {size}x{size} crop")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[..., top:top + size, left:left + size]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """A uint8 [C, H, W] image as float32 in [0, 1], normalised with ImageNet's statistics."""
    return (image.to(torch.float32) / 255.0).sub_(_MEAN).div_(_STD)
