"""PatchCore on tiles: for images much larger than the backbone's usual input, where a defect of a
few pixels would vanish if the image were shrunk.

Fit: every image is cut into tiles (pyanom.tiling) and config.batch_size tiles are embedded at a
time; each tile counts as one image of the memory bank's plan (pyanom.memory_bank), so the
features held before the coreset stay within config.memory_budget_mb however large the images
are or however many (sharded above it), plus one batch of tiles' activations. Score: every
tile's patches are scored against the memory bank, each tile's patch map upsampled to the tile,
the tiles stitched (blended where they overlap) into one map at the image's resolution, then
blurred; the image score is the largest patch score (reweighted as PatchCore does).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pyanom.anomaly_map import gaussian_blur
from pyanom.data.transforms import pair
from pyanom.tiling import cut_tiles, stitch, tile_positions


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
            dist, nearest = det._nearest(queries, 1)
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
