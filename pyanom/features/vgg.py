"""VGG16's 13 convolutions (Simonyan & Zisserman 2015) with torchvision's parameter names
(`features.0.weight` .. `features.28.bias`), so its ImageNet file loads as it is, without
torchvision. Stage "convN" ends with the ReLU of the N-th convolution; a max pooling opens the
next stage. The last pooling and the classifier are not built."""

from __future__ import annotations

from typing import Optional

from torch import nn

from pyanom.features.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pyanom.features.weights import fetch, load_into, read_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG16_URL", "VGG16Features"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# Configuration "D": output channels of the 13 convolutions, "M" = 2x2 max pooling.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Features(nn.Module):
    """`features` (an nn.Sequential named as torchvision's) cut into stages "conv1".."conv13";
    `channels` and `strides` per stage, `aliases` "strideK" -> the last stage at that stride."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self):
        super().__init__()
        layers, self.stage_slices, self.channels, self.strides = [], [], {}, {}
        in_channels, stride, start, conv = 3, 1, 0, 0
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                stride *= 2
                continue
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels, conv = item, conv + 1
            self.stage_slices.append((f"conv{conv}", start, len(layers)))
            self.channels[f"conv{conv}"], self.strides[f"conv{conv}"] = item, stride
            start = len(layers)
        del layers[-1]  # the last pooling
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.aliases = {f"stride{s}": n for n, s in self.strides.items()}

    def stages(self):
        """(name, module) of each stage in order."""
        for name, start, end in self.stage_slices:
            yield name, self.features[start:end]

    def load_pretrained(self, weights: Optional[str] = None) -> None:
        """Load torchvision's VGG16 file (None: from the hub cache, downloaded if missing) or a
        file/URL with its names; the classifier's tensors in it are ignored."""
        if weights is None:
            path = fetch(VGG16_URL)
        else:
            path = fetch(weights) if "://" in str(weights) else weights
        state = read_state_dict(path)
        load_into(self, {k: v for k, v in state.items() if not k.startswith("classifier.")}, str(path))
