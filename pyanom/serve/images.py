"""Uploaded bytes -> a model's input tensor, refusing what would hurt the service.

Every refusal is an :class:`InputError` carrying the HTTP status and a sentence that says
why. The byte and pixel limits are checked before any pixel is decoded: the pixel count
comes from the image header, so a small file that would inflate to gigabytes (a
decompression bomb) is refused without being inflated.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from pyanom.data.files import read_image
from pyanom.data.transforms import Preprocess

MAX_ASPECT_CHANGE = 2.0  # how much the model's resize may stretch one side against the other


class InputError(ValueError):
    """An upload the service refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


def check_bytes(data: bytes, name: str, limits: Limits) -> None:
    if not data:
        raise InputError(400, f"{name}: empty upload")
    if len(data) > limits.max_bytes:
        raise InputError(413, f"{name}: {len(data)} bytes is over the limit of {limits.max_bytes} bytes")


def decode(data: bytes, name: str, preprocess: Preprocess, limits: Limits) -> np.ndarray:
    """The upload as the model's input [3, H, W] in [0, 1], exactly as `pyanom predict` reads a file."""
    check_bytes(data, name, limits)
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError as err:
        raise InputError(413, f"{name}: refused before decoding: {err}") from None
    except UnidentifiedImageError:
        raise InputError(415, f"{name}: not an image (unknown or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(400, f"{name}: corrupt image header ({err})") from None
    if width * height > limits.max_pixels:
        raise InputError(413, f"{name}: {width}x{height} = {width * height} pixels is over the limit of "
                              f"{limits.max_pixels} pixels (refused before decoding)")
    model_h, model_w = preprocess.image_size
    stretch = (width / height) / (model_w / model_h)
    if not 1 / MAX_ASPECT_CHANGE <= stretch <= MAX_ASPECT_CHANGE:
        raise InputError(422, f"{name}: {width}x{height} (width x height) cannot be resized to the model's "
                              f"{model_w}x{model_h} input without stretching it {max(stretch, 1 / stretch):.1f}x "
                              f"(at most {MAX_ASPECT_CHANGE:g}x); crop it to the model's aspect first")
    try:
        img = read_image(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(400, f"{name}: truncated or corrupt image ({err})") from None
    return preprocess.array(img)
