"""ResNet-18 and Wide ResNet-50-2 (He et al., 2016; Zagoruyko & Komodakis, 2016).

Module and parameter names match torchvision's (`conv1`, `bn1`, `layer1.0.conv1`,
`layer1.0.downsample.0`, `fc`, ...) so torchvision's published ImageNet weights load as they
are, without torchvision. Bottlenecks stride in the 3x3 convolution (ResNet v1.5), as
torchvision does.
"""

from __future__ import annotations

import torch
from torch import nn

from pyanom.features.imagenet import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _block_pairs(block: nn.Module, convs: int):
    """(module, conv, BatchNorm) of a residual block's convN/bnN and its downsample, for folding."""
    for i in range(1, convs + 1):
        yield block, f"conv{i}", f"bn{i}"
    if block.downsample is not None:
        yield block.downsample, "0", "1"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; `base_width` is accepted (and ignored) so both blocks build alike."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None,
                 base_width: int = 64):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)

    def conv_bn_pairs(self):
        return _block_pairs(self, 2)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand; `base_width` 128 makes the Wide ResNet."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None,
                 base_width: int = 64):
        super().__init__()
        width = planes * base_width // 64
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)

    def conv_bn_pairs(self):
        return _block_pairs(self, 3)


class ResNet(nn.Module):
    """ResNet with named feature taps "layer1" .. "layer4" (strides 4, 8, 16, 32)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, int, int, int],
                 base_width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels, self.strides = {}, {}
        in_channels, stride = 64, 4
        for index, (name, depth) in enumerate(zip(LAYERS, depths)):
            planes, layer_stride = 64 * 2**index, 1 if index == 0 else 2
            out_channels = planes * block.expansion
            downsample = None
            if layer_stride != 1 or in_channels != out_channels:
                downsample = nn.Sequential(_conv1x1(in_channels, out_channels, layer_stride),
                                           nn.BatchNorm2d(out_channels))
            blocks = [block(in_channels, planes, layer_stride, downsample, base_width)]
            blocks += [block(out_channels, planes, 1, None, base_width) for _ in range(depth - 1)]
            setattr(self, name, nn.Sequential(*blocks))
            in_channels, stride = out_channels, stride * layer_stride
            self.channels[name], self.strides[name] = out_channels, stride
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.aliases = {"stride8": "layer2", "stride16": "layer3"}

    def conv_bn_pairs(self):
        """(module, conv, BatchNorm) of every convolution followed by a BatchNorm, for folding."""
        yield self, "conv1", "bn1"
        for name in LAYERS:
            for block in getattr(self, name):
                yield from block.conv_bn_pairs()

    def features(self, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """Feature maps of the named layers of a normalised batch; stops after the deepest one."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in LAYERS:
            x = getattr(self, name)(x)
            if name in names:
                out[name] = x
                if len(out) == len(names):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of a normalised batch."""
        x = self.features(x, {"layer4"})["layer4"]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


def wide_resnet50_2() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), base_width=128)
