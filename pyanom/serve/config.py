"""What `pyanom serve` lets the operator set (the command reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ServeSettings:
    """What `pyanom serve` lets the operator set; the defaults suit one line PC."""

    api_key: Optional[str] = None  # when set, /v1 needs "Authorization: Bearer <key>"
    max_batch: int = 8  # images per predict call
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_queue: int = 64  # images admitted per model (being received, decoded or waiting) before 503
    max_bytes: int = 20 * 1024 * 1024  # per image: an uncompressed 6-megapixel RGB frame fits
    max_pixels: int = 40_000_000  # per image, read from the header before decoding
    max_images: int = 16  # per request
    body_timeout_s: float = 30.0  # a request's whole body must arrive within this: 20 MB at 10 Mbit/s fits
