"""Tiling of large images: cut each image into overlapping tiles, score the tiles, stitch their
maps back into one map at the image's full resolution.

A defect of a few pixels in a 2k-5k pixel inspection image vanishes when the image is shrunk to
a backbone's usual 256 px; tiles keep the pixels. Any detector that scores maps may use it.
"""

from __future__ import annotations

import math

import torch

from pyanom.data.transforms import pair


def tile_positions(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    """(top, left) of every tile of a (height, width) image: rows and columns of tiles at most
    tile - overlap apart, spread evenly so that the last one ends at the image's edge (an image
    smaller than the tile is an error: pad or resize it first)."""
    (h, w), (th, tw) = size, tile
    if th > h or tw > w:
        raise ValueError(f"tile_size {th}x{tw} is larger than the image {h}x{w}; "
                         "use a smaller tile_size or a larger image_size")
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"tile_overlap must lie in [0, {min(th, tw)}) for tiles of {th}x{tw}, got {overlap}")

    def starts(side: int, length: int) -> list[int]:
        n = 1 if side == length else 1 + math.ceil((side - length) / (length - overlap))
        return [round(i * (side - length) / (n - 1)) if n > 1 else 0 for i in range(n)]

    return [(top, left) for top in starts(h, th) for left in starts(w, tw)]


def cut_tiles(image: torch.Tensor, positions: list[tuple[int, int]], tile: tuple[int, int]) -> torch.Tensor:
    """The tiles [T, C, th, tw] of one image [C, H, W] at positions."""
    th, tw = tile
    return torch.stack([image[:, top:top + th, left:left + tw] for top, left in positions])


def blend_window(tile: tuple[int, int], overlap: int, device=None) -> torch.Tensor:
    """Weights [th, tw] of a tile's map in the stitched map: 1 inside, ramping down linearly across
    the overlap at each side, so overlapping tiles fade into each other instead of meeting at a seam."""
    def ramp(length: int) -> torch.Tensor:
        x = torch.arange(length, dtype=torch.float32, device=device)
        edge = torch.minimum(x + 1, length - x)  # 1 at the border, growing inwards
        return (edge / (overlap + 1)).clamp(max=1.0) if overlap > 0 else torch.ones(length, device=device)

    return ramp(tile[0])[:, None] * ramp(tile[1])[None, :]


def stitch(tile_maps: torch.Tensor, positions: list[tuple[int, int]], size: tuple[int, int],
           overlap: int) -> torch.Tensor:
    """One map [H, W] from the maps [T, th, tw] of an image's tiles: the blend-weighted mean where
    tiles overlap, each tile's own values elsewhere."""
    th, tw = tile_maps.shape[-2:]
    weight = blend_window((th, tw), overlap, tile_maps.device)
    total = torch.zeros(size, dtype=tile_maps.dtype, device=tile_maps.device)
    norm = torch.zeros(size, dtype=tile_maps.dtype, device=tile_maps.device)
    for m, (top, left) in zip(tile_maps, positions):
        total[top:top + th, left:left + tw] += weight * m
        norm[top:top + th, left:left + tw] += weight
    return total / norm


def checked_tiling(tile_size, tile_overlap) -> tuple[int | tuple[int, int] | None, int]:
    """tile_size (None: no tiling; an int or [height, width]) and tile_overlap (pixels) as a
    detector's config keeps them; a ValueError naming the argument otherwise."""
    if tile_size is None:
        return None, tile_overlap
    if isinstance(tile_size, list):
        tile_size = tuple(tile_size)
    th, tw = pair("tile_size", tile_size)
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or not 0 <= tile_overlap < min(th, tw):
        raise ValueError(f"tile_overlap must be an int number of pixels in [0, {min(th, tw)}), got {tile_overlap!r}")
    return tile_size, tile_overlap
