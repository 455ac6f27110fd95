"""The twin network of the Siamese detector: a trainable backbone, an attention module after one
of its layers, and a 512-d embedding head (Takimoto et al. 2022).

Both twins are the same module: a pair is embedded by calling it on each image, so the weights
are shared by construction. Backbones run stage by stage so the attention module can sit between
any two stages; stage names are the backbone's own ("conv1".."conv13" for VGG16, "blocks.0"..
"blocks.6" for EfficientNet-Lite0) or "strideK" for the last stage at that stride.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pyanom.features import create_network, efficientnet_lite
from pyanom.features.vgg import VGG16Features

EMBEDDING_DIM = 512


class Trunk(nn.Module):
    """A backbone cut into named stages: `stages()` yields (name, callable) in order, each
    taking the previous one's output; the first takes images normalised with `mean`/`std`."""

    channels: dict[str, int]
    strides: dict[str, int]
    aliases: dict[str, str]
    out_channels: int

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def stages(self) -> Iterator[tuple[str, nn.Module]]:
        raise NotImplementedError

    def resolve(self, layer: str) -> str:
        """The stage name of `layer` (an alias like "stride8" or a stage name)."""
        name = self.aliases.get(layer, layer)
        if name not in self.channels:
            raise ValueError(f"attention_layer {layer!r} is not a stage of this backbone; choose one of "
                             f"{sorted(self.aliases)} or {list(self.channels)}")
        return name


class VGG16Trunk(Trunk):
    """VGG16 from `pyanom.features.vgg` (torchvision's names, so its ImageNet file loads as it
    is), trainable. The embedding is the global average of conv13's features."""

    stages = VGG16Features.stages
    load_pretrained = VGG16Features.load_pretrained

    def __init__(self):
        vgg = VGG16Features()
        super().__init__(vgg.mean, vgg.std)
        self.features, self.stage_slices = vgg.features, vgg.stage_slices
        self.channels, self.strides, self.aliases = vgg.channels, vgg.strides, vgg.aliases
        self.out_channels = vgg.out_channels


class EfficientNetLite0Trunk(Trunk):
    """EfficientNet-Lite0 from `pyanom.features` (its weights, names and TF conventions), made
    trainable, in stages "stem", "blocks.0".."blocks.6" and "head" (the 1280-channel last conv).
    Its ImageNet classifier is dropped."""

    def __init__(self, weights=None, pretrained: bool = True):
        super().__init__(list(efficientnet_lite.MEAN), list(efficientnet_lite.STD))
        network = create_network("efficientnet_lite0", weights if pretrained else False)
        del network._fc
        self.network = network.requires_grad_(True)
        self.channels = {"stem": network._bn0.num_features, **network.channels,
                         "head": network._bn1.num_features}
        self.strides = {"stem": 2, **network.strides, "head": network.strides["blocks.6"]}
        self.aliases = {f"stride{s}": n for n, s in self.strides.items() if n.startswith("blocks.")}
        self.out_channels = self.channels["head"]

    def stages(self):
        net = self.network
        yield "stem", lambda x: F.relu6(net._bn0(net._conv_stem(x)))
        start = 0
        for index, end in enumerate(net._stage_ends):
            yield f"blocks.{index}", nn.Sequential(*net._blocks[start:end])
            start = end
        yield "head", lambda x: F.relu6(net._bn1(net._conv_head(x)))


BACKBONES = ("efficientnet_lite0", "vgg16")


def build_trunk(name: str, weights=None, pretrained: bool = True) -> Trunk:
    """A trainable trunk; `pretrained=False` builds random weights (to be overwritten by a load)."""
    if name == "vgg16":
        trunk = VGG16Trunk()
        if pretrained:
            trunk.load_pretrained(weights)
        return trunk
    if name == "efficientnet_lite0":
        return EfficientNetLite0Trunk(weights, pretrained)
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")


class AttentionModule(nn.Module):
    """The attention mechanism of Takimoto et al.: a-1 conv3x3, a-2 conv3x3, BN, a-3 conv1x1,
    ReLU, then two branches. The map branch, a-4 conv1x1 to one channel, BN, sigmoid, gives
    M in (0, 1) that re-weights the features as the attention branch network (Fukui et al.
    2019) does, (1 + M) * features: M can only amplify, so a blank map leaves the pretrained
    features intact. The attention branch, conv1x1 to 2 channels and global average pooling,
    gives output-2, a 2-d embedding that the attention branch loss (ABL) trains, so the map
    learns what tells normal from defective."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.to_map = nn.Conv2d(channels, 1, 1)
        self.map_bn = nn.BatchNorm2d(1)
        self.branch = nn.Conv2d(channels, 2, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(re-weighted features, attention map [B, 1, h, w], output-2 [B, 2])."""
        hidden = F.relu(self.conv3(self.bn(self.conv2(self.conv1(features)))))
        attention = torch.sigmoid(self.map_bn(self.to_map(hidden)))
        output2 = self.branch(hidden).mean(dim=(2, 3))
        return (1 + attention) * features, attention, output2


class SiameseNetwork(nn.Module):
    """One twin: images [B, 3, H, W] in [0, 1] -> output-1, the 512-d embedding (global average
    of the last conv features, through a linear map to 512 where the backbone is wider), plus
    output-2 and the attention map when the attention module is on."""

    def __init__(self, backbone: str = "efficientnet_lite0", attention_layer: Optional[str] = "stride8",
                 weights=None, pretrained: bool = True):
        super().__init__()
        self.trunk = build_trunk(backbone, weights, pretrained)
        self.attention_layer = None if attention_layer is None else self.trunk.resolve(attention_layer)
        if self.attention_layer is not None:
            self.attention = AttentionModule(self.trunk.channels[self.attention_layer])
        if self.trunk.out_channels != EMBEDDING_DIM:
            self.projection = nn.Linear(self.trunk.out_channels, EMBEDDING_DIM)

    def forward(self, images: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """{"embedding": [B, 512], "output2": [B, 2] or None, "attention": [B, 1, h, w] or None}."""
        x = (images - self.trunk.mean) / self.trunk.std
        output2 = attention = None
        for name, stage in self.trunk.stages():
            x = stage(x)
            if name == self.attention_layer:
                x, attention, output2 = self.attention(x)
        embedding = x.mean(dim=(2, 3))
        if hasattr(self, "projection"):
            embedding = self.projection(embedding)
        return {"embedding": embedding, "output2": output2, "attention": attention}

    def train(self, mode: bool = True) -> SiameseNetwork:
        """The backbone's BatchNorm statistics stay those of its pretraining (batches of a few
        images would only add noise to them); the attention module's BatchNorm trains."""
        super().train(mode)
        for module in self.trunk.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
