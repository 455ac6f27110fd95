"""Locally aware patch features: the two backbone taps pooled, aligned and concatenated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyanom.ops import channel_self_attention, self_attention


def patch_embedding(features: dict[str, torch.Tensor], layers: tuple[str, str], *,
                    self_attend: bool, attention=self_attention) -> torch.Tensor:
    """[B, C8 + C16, h, w] patch features at the stride-8 grid.

    PatchCore: 3x3 average pooling of both maps (each patch sees its neighbourhood), the
    stride-16 map upsampled onto the stride-8 grid. SA-PatchCore: the stride-16 map is
    max-pooled instead and passed through parameter-free self-attention, so every patch also
    carries the context of the whole object (what makes wrong arrangements visible).
    `attention`: the op that does it (pyanom.export passes its plain-torch twin).
    """
    fine, coarse = (features[name] for name in layers)
    fine = F.avg_pool2d(fine, 3, stride=1, padding=1)
    if self_attend:
        coarse = attention(F.max_pool2d(coarse, 3, stride=1, padding=1))
    else:
        coarse = F.avg_pool2d(coarse, 3, stride=1, padding=1)
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], dim=1)


def context_input(feature: torch.Tensor) -> torch.Tensor:
    """What the channel attention reads: the 3x3 max-pooled map, rectified (the authors' WRN-50
    layer 3 is post-ReLU; a Lite0 block output is signed, and a negative value would make its
    patch attend to the channel's minimum)."""
    return F.relu(F.max_pool2d(feature, 3, stride=1, padding=1))


def channel_context(feature: torch.Tensor, scale: torch.Tensor, temperature: float, *,
                    attention=channel_self_attention) -> torch.Tensor:
    """[B, C, h, w] at the feature's own grid: per-channel self-attention (the authors' released
    form) of the pooled map, each channel divided by its spread over normal images (`scale`, [C])
    and multiplied by `temperature`. A patch near 0 in a channel gets that channel's mean over
    the image, a high one its maximum: every patch carries what the whole part holds (how many
    nuts, not where). `attention`: the op that does it (pyanom.export passes its plain-torch twin).
    """
    z = context_input(feature) * (temperature / scale).view(1, -1, 1, 1)
    return attention(z)


def context_descriptor(feature: torch.Tensor, scale: torch.Tensor, temperature: float, *,
                       attention=channel_self_attention) -> torch.Tensor:
    """[B, C]: the channel context averaged over the image, what the whole part holds in one
    vector. Averaging keeps how much of each channel the image holds (two nuts or none, one
    part more or fewer), which no single patch's context shows as clearly; it does not depend on
    where the part lies or how it is turned."""
    return channel_context(feature, scale, temperature, attention=attention).mean(dim=(2, 3))
