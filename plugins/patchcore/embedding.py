"""Locally aware patch features: the two backbone taps pooled, aligned and concatenated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyanom.ops import self_attention


def patch_embedding(features: dict[str, torch.Tensor], layers: tuple[str, str], *,
                    self_attend: bool) -> torch.Tensor:
    """[B, C8 + C16, h, w] patch features at the stride-8 grid.

    PatchCore: 3x3 average pooling of both maps (each patch sees its neighbourhood), the
    stride-16 map upsampled onto the stride-8 grid. SA-PatchCore: the stride-16 map is
    max-pooled instead and passed through parameter-free self-attention, so every patch also
    carries the context of the whole object (what makes wrong arrangements visible).
    """
    fine, coarse = (features[name] for name in layers)
    fine = F.avg_pool2d(fine, 3, stride=1, padding=1)
    if self_attend:
        coarse = self_attention(F.max_pool2d(coarse, 3, stride=1, padding=1))
    else:
        coarse = F.avg_pool2d(coarse, 3, stride=1, padding=1)
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], dim=1)
