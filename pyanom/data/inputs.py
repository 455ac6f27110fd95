"""What users pass to `predict`, as images: a path, a PIL image, a numpy array (H x W x 3 uint8, or
H x W grey), or a list of them. Each is read exactly as `pyanom predict` reads a file (to_rgb, then
the detector's resize), so an array of a decoded file scores like the file. No PyTorch here: the
runtime of exported models takes the same inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from pyanom.data.files import read_image, to_rgb

__all__ = ["ImageSource", "as_sources", "is_batch_array", "read_source", "source_name"]

ImageSource = Union[Path, Image.Image, np.ndarray]


def is_batch_array(images: Any) -> bool:
    """A prepared float batch [B, 3, H, W] (numpy or tensor), taken as given rather than read."""
    return hasattr(images, "ndim") and hasattr(images, "shape") and images.ndim == 4


def as_sources(images: Any) -> list[ImageSource]:
    """One image or a list of them as a list of paths, PIL images and arrays; a TypeError names
    what is not an image."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    elif isinstance(images, (set, dict)) or not hasattr(images, "__iter__"):
        raise TypeError(f"images must be a path, a PIL image, a numpy array, a list of them, a tensor "
                        f"[B, 3, H, W] or a data set; got {type(images).__name__}")
    sources = [_source(item, i) for i, item in enumerate(images)]
    if not sources:
        raise ValueError("no images given")
    return sources


def _source(item: Any, index: int) -> ImageSource:
    if isinstance(item, (str, os.PathLike)):
        return Path(item)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        _check_array(item, index)
        return item
    raise TypeError(f"images[{index}] must be a path, a PIL image or a numpy array, got {type(item).__name__}")


def _check_array(a: np.ndarray, index: int) -> None:
    shape_ok = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))
    if not shape_ok or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"images[{index}]: a numpy image is H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (grey), "
                         f"got shape {a.shape}; pass a prepared batch as a tensor [B, 3, H, W]")
    if a.dtype != np.uint8 and not (a.dtype == np.uint16 and a.ndim == 2):
        raise ValueError(f"images[{index}]: a numpy image is uint8 (or uint16 grey) as a file holds it, got "
                         f"{a.dtype}; pass prepared floats in [0, 1] as a tensor [B, 3, H, W]")


def read_source(source: ImageSource) -> Image.Image:
    """An image source as 8-bit RGB, the same conversion for each kind."""
    if isinstance(source, Path):
        return read_image(source)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    a = source[..., 0] if source.ndim == 3 and source.shape[-1] == 1 else source
    return to_rgb(Image.fromarray(np.ascontiguousarray(a)))  # uint16 grey becomes mode I;16


def source_name(source: ImageSource, index: int) -> str:
    """How errors and results name a source: its path, or its place in the list."""
    return str(source) if isinstance(source, Path) else f"<image {index}>"
