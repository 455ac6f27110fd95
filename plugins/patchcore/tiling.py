"""PatchCore on tiles: for images much larger than the backbone's usual input, where a defect of a
few pixels would vanish if the image were shrunk.

Fit: every image is cut into tiles and config.batch_size tiles are embedded at a
time; each tile counts as one image of the memory bank's plan (pyanom.memory), so the
features held before the coreset stay within config.memory_budget_mb however large the images
are or however many (sharded above it), plus one batch of tiles' activations. Score: every
tile's patches are scored against the memory bank, each tile's patch map upsampled to the tile,
the tiles stitched (blended where they overlap) into one map at the image's resolution, then
blurred; the image score is the largest patch score (reweighted as PatchCore does).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pyanom.anomaly_map import gaussian_blur
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


def _tile_chunks(det, image: torch.Tensor):
    """(positions, chunks): the image's tile positions, and its tiles config.batch_size at a time."""
    tile = pair("tile_size", det.config.tile_size)
    positions = tile_positions(tuple(image.shape[-2:]), tile, det.config.tile_overlap)
    step = det.config.batch_size
    chunks = (cut_tiles(image, positions[i:i + step], tile) for i in range(0, len(positions), step))
    return positions, chunks


def tile_features(det, train, progress: bool) -> tuple[int, Iterator[tuple[int, torch.Tensor]]]:
    """(number of tiles, batches of (tiles, their patch features [n * h * w, D])) over the
    training images in order, one image decoded at a time: what build_memory_bank takes."""
    tile = pair("tile_size", det.config.tile_size)
    counts = [len(tile_positions(train.image_hw(i), tile, det.config.tile_overlap)) for i in range(len(train))]

    def batches():
        with torch.inference_mode():
            for i in tqdm(range(len(train)), desc=f"{det.name}: tile features", disable=not progress):
                _, chunks = _tile_chunks(det, train[i]["image"].to(det.device))
                for tiles in chunks:
                    emb, _ = det._embed(tiles)
                    yield len(tiles), emb.reshape(-1, emb.shape[-1])

    return sum(counts), batches()


def score_tiled(det, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores [B] and anomaly maps [B, H, W] at the images' own resolution."""
    cfg = det.config
    bank = det.memory_bank
    scores, maps = [], []
    for image in images:
        positions, chunks = _tile_chunks(det, image)
        tile_maps, worst = [], (-1.0, None, None)  # (score, query feature, its nearest memory entry)
        for tiles in chunks:
            emb, (h, w) = det._embed(tiles)
            queries = emb.reshape(-1, emb.shape[-1])
            dist, nearest = det.nearest(queries, 1)
            patch = dist[:, 0]
            top = int(patch.argmax())
            if float(patch[top]) > worst[0]:
                worst = (float(patch[top]), queries[top:top + 1], nearest[top:top + 1, 0])
            tile_maps.append(F.interpolate(patch.reshape(len(tiles), 1, h, w), size=tiles.shape[-2:],
                                           mode="bilinear", align_corners=False)[:, 0])
        full = stitch(torch.cat(tile_maps), positions, tuple(image.shape[-2:]), cfg.tile_overlap)
        maps.append(gaussian_blur(full[None], cfg.blur_sigma)[0])
        score = torch.tensor([worst[0]], device=image.device)
        if cfg.reweight and cfg.num_neighbors > 1 and len(bank) > 1:
            score = score * det._reweight(worst[1], worst[2], torch.zeros(1, dtype=torch.long,
                                                                          device=image.device), 1)
        scores.append(score)
    return torch.cat(scores), torch.stack(maps)
