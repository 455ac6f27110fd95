"""Uploaded bytes -> a model's input, and its anomaly map -> a heatmap PNG at the image's size.

Every refusal is an :class:`InputError` carrying the HTTP status and one line that says what
happened and what to do. The byte and pixel limits are checked before any pixel is decoded:
the pixel count comes from the image header, so a small file that would inflate to gigabytes
(a decompression bomb) is refused without being inflated.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from pyanom.data.files import read_image
from pyanom.data.transforms import Preprocess
from pyanom.visualize import PNG_LEVEL, draw_heatmap, heatmap_scale

MAX_ASPECT_CHANGE = 2.0  # how much the model's resize may stretch one side against the other
_KNOWN = "a PNG, JPEG, BMP or TIFF image"


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
        raise InputError(400, f"{name} is an empty upload (0 bytes): send the image file's contents")
    if len(data) > limits.max_bytes:
        raise InputError(413, f"{name} is {len(data)} bytes, over the limit of {limits.max_bytes} bytes: send a "
                              "smaller file, or start the service with a larger --max-bytes")


def decode(data: bytes, name: str, preprocess: Preprocess, limits: Limits, *,
           keep_picture: bool = False) -> tuple[np.ndarray, Optional[Image.Image]]:
    """The upload as the model's input [3, H, W] in [0, 1], exactly as `pyanom predict` reads a
    file, and with ``keep_picture`` the decoded picture (RGB, its own size) to draw a heatmap on."""
    check_bytes(data, name, limits)
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError as err:
        raise InputError(413, f"{name} was refused before decoding ({err}): send a smaller image") from None
    except UnidentifiedImageError:
        raise InputError(415, f"{name} is not an image pyanom can read (unknown or corrupt header): "
                              f"send {_KNOWN}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(400, f"{name} has a corrupt image header ({err}): send the file again, or "
                              f"{_KNOWN}") from None
    if width * height > limits.max_pixels:
        raise InputError(413, f"{name} is {width}x{height} = {width * height} pixels, over the limit of "
                              f"{limits.max_pixels} pixels (refused before decoding): send a smaller image, or "
                              "start the service with a larger --max-pixels")
    model_h, model_w = preprocess.image_size
    stretch = (width / height) / (model_w / model_h)
    if not 1 / MAX_ASPECT_CHANGE <= stretch <= MAX_ASPECT_CHANGE:
        raise InputError(422, f"{name} is {width}x{height} (width x height) and cannot be resized to the model's "
                              f"{model_w}x{model_h} input without stretching it {max(stretch, 1 / stretch):.1f}x "
                              f"(at most {MAX_ASPECT_CHANGE:g}x): crop it to the model's aspect first")
    try:
        picture = read_image(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(400, f"{name} is truncated or corrupt ({err}): send the whole file again") from None
    return preprocess.array(picture), (picture if keep_picture else None)


def heatmap_png(picture: Image.Image, anomaly_map, threshold: float, longest: Optional[int] = None) -> str:
    """The anomaly map over the picture as a base64 PNG, drawn as `pyanom predict` draws its
    heatmaps (`pyanom.visualize.draw_heatmap`: red from 1.5x the threshold up, in strips of rows)
    at the picture's own size or ``longest`` pixels on its longest side."""
    low, high = heatmap_scale(threshold, float(np.min(anomaly_map)))
    buf = io.BytesIO()
    draw_heatmap(picture, anomaly_map, vmin=low, vmax=high, max_side=longest).save(buf, format="PNG",
                                                                                   compress_level=PNG_LEVEL)
    return base64.b64encode(buf.getvalue()).decode("ascii")
