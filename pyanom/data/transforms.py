"""Image and mask transforms without torchvision: resize, center crop, to tensor, normalise.

Images are resized with PIL's antialiased bilinear filter (it widens the kernel when shrinking,
so a 900 px photo does not alias at 256 px); masks with nearest neighbour, so they stay binary.
PyTorch is imported only where a tensor is made: `pyanom serve` runs exported models without it.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
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


def checked_image_size(size, *, minimum: int = 1, multiple: int = 1, power_of_two: bool = False,
                       name: str = "image_size") -> int | tuple[int, int]:
    """A detector's image_size as it is kept in its config: an int (square) or (height, width).

    One place for what networks cannot take: a side below `minimum`, not a multiple of `multiple`
    (a network's total stride), or not a power of two (networks that halve to a fixed bottom).
    A refused size names the nearest valid ones, so a user can pick one at once.
    """
    if isinstance(size, list):
        size = tuple(size)
    h, w = pair(name, size)
    if power_of_two:
        ok = lambda v: v >= minimum and v & (v - 1) == 0  # noqa: E731
        below = lambda v: max(minimum, 1 << (v.bit_length() - 1))  # noqa: E731
        above = lambda v: max(minimum, 1 << (v - 1).bit_length())  # noqa: E731
        rule = f"a power of two >= {minimum}"
    else:
        step = multiple * -(-minimum // multiple)  # the smallest valid side
        ok = lambda v: v >= minimum and v % multiple == 0  # noqa: E731
        below = lambda v: max(step, v // multiple * multiple)  # noqa: E731
        above = lambda v: max(step, -(-v // multiple) * multiple)  # noqa: E731
        rule = (f"a multiple of {multiple}" if multiple > 1 else "") + (f" >= {minimum}" if minimum > multiple else "")
    bad = [f"{side} {v}" for side, v in (("height", h), ("width", w)) if not ok(v)]
    if not bad:
        return size
    fix = lambda v, f: v if ok(v) else f(v)  # noqa: E731
    options = dict.fromkeys([(fix(h, below), fix(w, below)), (fix(h, above), fix(w, above))])
    shown = " or ".join(str(hw[0]) if isinstance(size, int) else f"[{hw[0]}, {hw[1]}]" for hw in options)
    what = f"{name} {size}" if isinstance(size, int) else f"{name} {list(size)}: {' and '.join(bad)}"
    raise ValueError(f"{what} must be {rule.strip()}; nearest valid: {shown}")


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


def to_array(img: Image.Image) -> np.ndarray:
    """An RGB or greyscale PIL image as float32 [C, H, W] in [0, 1] (numpy: `pyanom serve` runs
    exported models without PyTorch)."""
    values = np.asarray(img, dtype=np.uint8)
    if values.ndim == 2:
        values = values[:, :, None]
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def to_tensor(img: Image.Image) -> "torch.Tensor":
    """An RGB or greyscale PIL image as a float32 tensor [C, H, W] in [0, 1]."""
    import torch

    return torch.from_numpy(to_array(img))


def normalize(images: "torch.Tensor", mean: Sequence[float], std: Sequence[float]) -> "torch.Tensor":
    """(images - mean) / std per channel, for [C, H, W] or [B, C, H, W]; backbones call this, not the readers."""
    import torch

    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(shape)
    return (images - mean_t) / std_t


class Preprocess:
    """What every image and mask goes through before a detector sees it: resize, then an optional center crop.

    image_size None keeps each image's own resolution (for detectors that tile large images).
    """

    def __init__(self, image_size: Size | None = 256, crop_size: Size | None = None):
        self.image_size = pair("image_size", image_size)
        self.crop_size = pair("crop_size", crop_size)
        if (self.crop_size and self.image_size
                and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1])):
            raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None where it is each image's own."""
        return self.crop_size or self.image_size

    def image(self, img: Image.Image) -> "torch.Tensor":
        """An RGB image as float32 [3, H, W] in [0, 1] (not normalised)."""
        return to_tensor(self._geometry(self._resize(img)))

    def array(self, img: Image.Image) -> np.ndarray:
        """The same as :meth:`image`, as a numpy array."""
        return to_array(self._geometry(self._resize(img)))

    def mask(self, mask: np.ndarray | None, image_hw: tuple[int, int] | None = None) -> "torch.Tensor":
        """A bool mask [h, w] (or None: no defect pixels) as float32 [1, H, W] in {0, 1};
        image_hw: the source image's (height, width), which sizes an absent mask when
        output_size is None."""
        if mask is None:
            size = self.output_size or image_hw
            if size is None:
                raise ValueError("an absent mask needs its image's size when images keep their own size")
            import torch

            return torch.zeros((1, *size))
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        return (to_tensor(self._geometry(self._resize(img, nearest=True))) > 0.5).float()

    def source_hw(self, img: Image.Image) -> tuple[int, int] | None:
        """(height, width) of an image as read, which `Detector.predict` returns its anomaly map
        at; None under a crop (the map covers the crop only, so it stays at the crop's size)."""
        return None if self.crop_size else (img.height, img.width)

    def _resize(self, img: Image.Image, *, nearest: bool = False) -> Image.Image:
        return img if self.image_size is None else resize(img, self.image_size, nearest=nearest)

    def _geometry(self, img: Image.Image) -> Image.Image:
        return center_crop(img, self.crop_size) if self.crop_size else img

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, crop_size={self.crop_size})"
