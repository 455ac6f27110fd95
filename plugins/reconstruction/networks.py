"""The networks: a convolutional autoencoder, and the DCGAN-style generator, critic and izif
encoder of f-AnoGAN. Every one is built for a square power-of-two image size, halving or
doubling the side with 4x4 stride-2 convolutions (the DCGAN recipe); the autoencoder also takes
[height, width] (both powers of two): its bottom keeps the aspect."""

from __future__ import annotations

import math

import torch
from torch import nn

from pyanom.data.transforms import checked_image_size, pair


def check_power_of_two(name: str, value, smallest: int) -> None:
    """A square network's side: one int, a power of two >= smallest (the nearest valid in the error)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be one int (the networks are square), got {value!r}")
    checked_image_size(value, minimum=smallest, power_of_two=True, name=name)


def down_trunk(size: int, bottom: int, width: int, widest: int, norm: bool) -> tuple[nn.Sequential, int]:
    """4x4 stride-2 convolutions from 3 x size^2 down to bottom^2 pixels, channels doubling from
    `width` up to `widest`; returns the trunk and its output channels. LeakyReLU(0.2) as in DCGAN;
    BatchNorm only where asked (a WGAN-GP critic must not have it: the gradient penalty is per
    sample, BatchNorm mixes samples)."""
    layers, channels = [], 3
    for stage in range(int(math.log2(size // bottom))):
        out = min(width * 2 ** stage, widest)
        layers.append(nn.Conv2d(channels, out, 4, 2, 1, bias=not (norm and stage > 0)))
        if norm and stage > 0:  # DCGAN leaves the first layer unnormalised
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        channels = out
    return nn.Sequential(*layers), channels


def up_trunk(size: int, bottom: int, width: int, widest: int) -> tuple[nn.Sequential, int]:
    """The mirror of down_trunk: 4x4 stride-2 transposed convolutions from bottom^2 to size^2
    pixels ending in 3 channels and tanh (images are normalised to [-1, 1]); returns the trunk
    and the channels it expects."""
    stages = int(math.log2(size // bottom))
    widths = [min(width * 2 ** s, widest) for s in reversed(range(stages))]
    layers = []
    for i, channels in enumerate(widths):
        if i + 1 < stages:
            layers += [nn.ConvTranspose2d(channels, widths[i + 1], 4, 2, 1, bias=False),
                       nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
        else:
            layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers), widths[0]


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder with a dense bottleneck of `latent_dim` values: the image is
    squeezed to 8x8 pixels, its channels to 64 by a 1x1 convolution (so the dense layers stay
    small, 4096 x latent), then to the latent vector; the decoder mirrors it."""

    bottom, squeeze = 8, 64

    def __init__(self, image_size: int | tuple[int, int], latent_dim: int, width: int, widest: int = 256):
        super().__init__()
        h, w = pair("image_size", image_size)
        side = min(h, w)  # the short side halves down to `bottom`, the long one keeps the aspect
        grid = (self.bottom * h // side, self.bottom * w // side)
        trunk, channels = down_trunk(side, self.bottom, width, widest, norm=True)
        flat = self.squeeze * grid[0] * grid[1]
        self.encoder = nn.Sequential(trunk, nn.Conv2d(channels, self.squeeze, 1), nn.Flatten(),
                                     nn.Linear(flat, latent_dim))
        up, channels = up_trunk(side, self.bottom, width, widest)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True),
                                     nn.Unflatten(1, (self.squeeze, *grid)),
                                     nn.Conv2d(self.squeeze, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                     nn.ReLU(inplace=True), up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Generator(nn.Module):
    """WGAN-GP generator: latent z -> 4x4 map (linear layer) -> transposed convolutions -> image."""

    bottom = 4

    def __init__(self, image_size: int, latent_dim: int, width: int):
        super().__init__()
        up, channels = up_trunk(image_size, self.bottom, width, widest=2 ** 30)
        self.project = nn.Sequential(nn.Linear(latent_dim, channels * self.bottom ** 2, bias=False),
                                     nn.Unflatten(1, (channels, self.bottom, self.bottom)),
                                     nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.up = up

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z))


class Critic(nn.Module):
    """WGAN-GP critic (no normalisation). `features(x)` is f(x) of f-AnoGAN: the flattened
    output of the last convolution, before the linear layer that gives the critic value."""

    bottom = 4

    def __init__(self, image_size: int, width: int):
        super().__init__()
        self.trunk, channels = down_trunk(image_size, self.bottom, width, widest=2 ** 30, norm=False)
        self.head = nn.Linear(channels * self.bottom ** 2, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class Encoder(nn.Module):
    """izif encoder: the critic's convolutional layout (with BatchNorm) ending in tanh, since
    the latent space it maps into is the generator's uniform [-1, 1]^d."""

    bottom = 4

    def __init__(self, image_size: int, latent_dim: int, width: int):
        super().__init__()
        trunk, channels = down_trunk(image_size, self.bottom, width, widest=2 ** 30, norm=True)
        self.net = nn.Sequential(trunk, nn.Flatten(), nn.Linear(channels * self.bottom ** 2, latent_dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
