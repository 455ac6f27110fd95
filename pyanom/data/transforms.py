"""Image and mask transforms without torchvision: resize, center crop, to tensor, normalise.

Images are resized with PIL's antialiased bilinear filter (it widens the kernel when shrinking,
so a 900 px photo does not alias at 256 px); masks with nearest neighbour, so they stay binary.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

Size = Union[int, Tuple[int, int]]


def pair(name: str, size: Size | None) -> tuple[int, int] | None:
    """(height, width) from an int or a pair; None stays None."""
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return hw


def resize(img: Image.Image, size: Size, *, nearest: bool = False) -> Image.Image:
    """Resize to (height, width) (an int gives a square), bilinear antialiased or nearest."""
    h, w = pair("size", size)
    if img.size == (w, h):
        return img
    return img.resize((w, h), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: Size) -> Image.Image:
    """The central (height, width) window; the crop may not be larger than the image."""
    h, w = pair("size", size)
    if h > img.height or w > img.width:
        raise ValueError(f"crop {h}x{w} is larger than the image {img.height}x{img.width}")
    top, left = (img.height - h) // 2, (img.width - w) // 2
    return img.crop((left, top, left + w, top + h))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB or greyscale PIL image as float32 [C, H, W] in [0, 1]."""
    values = np.asarray(img, dtype=np.uint8)
    if values.ndim == 2:
        values = values[:, :, None]
    return torch.from_numpy(values.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(images - mean) / std per channel, for [C, H, W] or [B, C, H, W]; backbones call this, not the readers."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(shape)
    return (images - mean_t) / std_t


class Preprocess:
    """What every image and mask goes through before a detector sees it: resize, then an optional center crop."""

    def __init__(self, image_size: Size = 256, crop_size: Size | None = None):
        self.image_size = pair("image_size", image_size)
        self.crop_size = pair("crop_size", crop_size)
        if self.crop_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop_size or self.image_size

    def image(self, img: Image.Image) -> torch.Tensor:
        """An RGB image as float32 [3, H, W] in [0, 1] (not normalised)."""
        return to_tensor(self._geometry(resize(img, self.image_size)))

    def mask(self, mask: np.ndarray | None) -> torch.Tensor:
        """A bool mask [h, w] (or None: no defect pixels) as float32 [1, H, W] in {0, 1}."""
        if mask is None:
            return torch.zeros((1, *self.output_size))
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        return (to_tensor(self._geometry(resize(img, self.image_size, nearest=True))) > 0.5).float()

    def _geometry(self, img: Image.Image) -> Image.Image:
        return center_crop(img, self.crop_size) if self.crop_size else img

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, crop_size={self.crop_size})"
