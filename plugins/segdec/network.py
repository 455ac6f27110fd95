"""The segmentation and decision networks of Wang et al. (2022), built from Table 1's layer list.

The table leaves some widths and wirings open; this is the reading implemented here.

Segmentation network (input [B, 3, S, S], S a multiple of 8):
  S1-S7   the encoder exactly as listed: conv3x3 blocks of 2 x 16, 3 x 32, 4 x 48 and 5 x 64
          channels with 2x2 max pooling (S2, S4, S6) between them. Each conv is followed by
          batch norm and ReLU (the table names no normalisation; GroupNorm, free of the batch,
          is much slower on CPU). Batch norm statistics from batches of 2 (the paper's) are
          noisy: prefer 8 or more.
  S8-S11  the "e-features": one transposed convolution per stage, taken before each max
          pooling (S1, S3, S5) and after the last block (S7), with kernel = stride = 1, 2, 4, 8,
          each giving ONE channel at the input resolution.
  S12-S14 integration, deep to shallow: S12 = conv3x3(S11, S10), S13 = conv3x3(S12, S9),
          S14 = conv3x3(S13, S8), each 2 -> 1 channel, so coarse evidence is refined by
          finer-stage detail.
  S15     conv3x3 fusing "the four" maps (S11, S12, S13, S14: one per scale of integration)
          into the segmentation logits [B, 1, S, S]. S12-S15 are linear (no ReLU on a
          one-channel map, which would erase its negative half).

Decision network: the table's D1 (conv1x1 to 512 channels) followed by 5x5 convolutions at full
resolution would cost ~7 GMAC per 128 px image for a one-channel input, so D1 is read as
working at the encoder's 1/8 resolution, on the S7 features (64 channels) concatenated with the
segmentation logits max-pooled 8x8 (so a one-pixel defect survives): 65 channels in.
  D1 conv1x1 512, D2 maxpool 2x2, D3 conv5x5 128, D4 maxpool 2x2, D5 conv5x5 16, D6 conv5x5 32
  (each conv with ReLU), D7 global max and D8 global mean of D6 (32 + 32), D9 concatenated with
  the global max and mean of the segmentation logits (2): 66 features, D10 fully connected to one
  decision logit. The table's "54" for the D9 width follows from no combination of the listed
  widths (32 + 32 = 64, plus the two segmentation statistics = 66), so it is taken as a misprint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Table 1, segmentation network: (layer, operation, number of convolutions, output channels).
SEGMENTATION_LAYERS = (
    ("S1", "conv3x3", 2, 16),
    ("S2", "maxpool2x2", 0, 16),
    ("S3", "conv3x3", 3, 32),
    ("S4", "maxpool2x2", 0, 32),
    ("S5", "conv3x3", 4, 48),
    ("S6", "maxpool2x2", 0, 48),
    ("S7", "conv3x3", 5, 64),
)
# e-features: (layer, the block it reads, transposed-conv kernel = stride); one channel each.
E_FEATURES = (("S8", "S1", 1), ("S9", "S3", 2), ("S10", "S5", 4), ("S11", "S7", 8))
# Integration (conv3x3, 2 -> 1 channel): (layer, its two inputs), deep to shallow.
INTEGRATION = (("S12", ("S11", "S10")), ("S13", ("S12", "S9")), ("S14", ("S13", "S8")))
FUSION = ("S15", ("S11", "S12", "S13", "S14"))  # conv3x3, 4 -> 1: the segmentation logits

# Table 1, decision network: (layer, operation, output channels).
DECISION_LAYERS = (
    ("D1", "conv1x1", 512),
    ("D2", "maxpool2x2", 512),
    ("D3", "conv5x5", 128),
    ("D4", "maxpool2x2", 128),
    ("D5", "conv5x5", 16),
    ("D6", "conv5x5", 32),
)
DECISION_POOLING = ("D7 global max", "D8 global mean", "D9 concat")  # then D10: fully connected
STRIDE = 8  # the encoder's total downsampling; S must be a multiple of it
DEFECT_PRIOR = 0.01  # initial defect probability of every pixel

def _conv_block(in_channels: int, width: int, count: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SegmentationNetwork(nn.Module):
    """S1-S15: encoder, e-features at every scale, integration and fusion into one logit per pixel."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.blocks = nn.ModuleDict()
        widths: dict[str, int] = {}
        channels = in_channels
        for name, op, count, width in SEGMENTATION_LAYERS:
            if op == "conv3x3":
                self.blocks[name] = _conv_block(channels, width, count)
                channels = widths[name] = width
        self.e_features = nn.ModuleDict({name: nn.ConvTranspose2d(widths[source], 1, k, stride=k)
                                         for name, source, k in E_FEATURES})
        self.integration = nn.ModuleDict({name: nn.Conv2d(len(inputs), 1, 3, padding=1)
                                          for name, inputs in INTEGRATION})
        self.fusion = nn.Conv2d(len(FUSION[1]), 1, 3, padding=1)
        self.feature_channels = widths[SEGMENTATION_LAYERS[-1][0]]
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # Start at the defect share of a typical pixel, not at p = 0.5 everywhere: otherwise the
        # first epochs are spent only on pushing the background down.
        nn.init.constant_(self.fusion.bias, -math.log((1 - DEFECT_PRIOR) / DEFECT_PRIOR))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(segmentation logits [B, 1, S, S], S7 features [B, 64, S/8, S/8])."""
        maps: dict[str, torch.Tensor] = {}
        x = images
        for name, op, _, _ in SEGMENTATION_LAYERS:
            x = self.blocks[name](x) if op == "conv3x3" else F.max_pool2d(x, 2)
            maps[name] = x
        for name, source, _ in E_FEATURES:
            maps[name] = self.e_features[name](maps[source])
        for name, inputs in INTEGRATION:
            maps[name] = self.integration[name](torch.cat([maps[i] for i in inputs], dim=1))
        logits = self.fusion(torch.cat([maps[i] for i in FUSION[1]], dim=1))
        return logits, maps[SEGMENTATION_LAYERS[-1][0]]


def decision_inputs(logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decision network reads from the (frozen) segmentation network: the S7 features
    with the logits max-pooled to their grid [B, 65, S/8, S/8], and the logits' global max and
    mean [B, 2]."""
    pooled = F.max_pool2d(logits, STRIDE)
    flat = logits.flatten(1)
    return torch.cat([features, pooled], dim=1), torch.stack([flat.amax(1), flat.mean(1)], dim=1)


class DecisionNetwork(nn.Module):
    """D1-D10: convolutions on the segmentation network's output, global max and mean, one logit."""

    def __init__(self, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _, op, width in DECISION_LAYERS:
            if op == "maxpool2x2":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            k = int(op[-1])
            layers += [nn.Conv2d(channels, width, k, padding=k // 2), nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * channels + 2, 1)  # D10 on D9 = [max, mean of D6, logit stats]

    def forward(self, features: torch.Tensor, logit_stats: torch.Tensor) -> torch.Tensor:
        """Decision logits [B]."""
        x = self.convs(features).flatten(2)
        pooled = torch.cat([x.amax(2), x.mean(2), logit_stats], dim=1)
        return self.classifier(pooled)[:, 0]
