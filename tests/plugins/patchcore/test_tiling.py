"""Tiling: a defect of 8 x 8 pixels on a 2048 x 2048 part is found when PatchCore scores tiles at
the image's own resolution, and missed when the image is shrunk to the default 256 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyanom
from pyanom.data import open_dataset
from pyanom_plugins.patchcore.tiling import blend_window, cut_tiles, stitch, tile_positions

SIDE, DEFECT = 2048, (1300, 700)  # the defect's top-left corner (row, column); it is 8 x 8 pixels


def part(seed: int, defect: bool = False) -> Image.Image:
    """A machined surface: smooth shading plus fine grain; the defect is a patch of pitting, an
    8 x 8 checkerboard of dark and bright pixels whose mean is the surface's own grey."""
    rng = np.random.default_rng(seed)
    shading = Image.fromarray(rng.normal(128, 12, (64, 64)).astype(np.float32)).resize((SIDE, SIDE), Image.BILINEAR)
    surface = np.asarray(shading) + rng.normal(0, 3, (SIDE, SIDE))
    if defect:
        y, x = DEFECT
        yy, xx = np.mgrid[0:8, 0:8]
        mean = surface[y:y + 8, x:x + 8].mean()
        surface[y:y + 8, x:x + 8] = np.where((yy + xx) % 2 == 0, mean - 90, mean + 90)
    return Image.fromarray(np.clip(surface + 0.5, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """train/good: 1 part; test/good: 2 parts; test/pitting: 1 part; val/good: 2 small crops.
    Few parts: each 2048 px part is 81 tiles through the backbone."""
    root = tmp_path_factory.mktemp("large_parts")
    images = {"train/good/0": part(0), "test/pitting/0": part(10, defect=True)}
    images.update({f"test/good/{i}": part(20 + i) for i in range(2)})
    for name, img in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / f"{name}.png", compress_level=1)
    for i in range(2):  # the threshold is not under test: two cheap good images calibrate it
        (root / "val" / "good").mkdir(parents=True, exist_ok=True)
        part(30 + i).crop((0, 0, 256, 256)).save(root / "val" / "good" / f"{i}.png")
    return root


def found(pred, test) -> tuple[bool, bool]:
    """(defect image scored above every good one, its map's maximum inside the defect)."""
    labels = test.labels.bool()
    above = bool(pred.image_scores[labels].min() > pred.image_scores[~labels].max())
    amap = pred.anomaly_maps[int(labels.nonzero()[0])]
    row, col = divmod(int(amap.argmax()), amap.shape[1])
    scale = SIDE / amap.shape[0]  # map pixels -> part pixels
    y, x = DEFECT
    inside = y <= row * scale < y + 8 and x <= col * scale < x + 8
    return above, inside


def test_a_tiny_defect_is_found_with_tiles_and_missed_at_256_px(parts):
    val = open_dataset(parts / "val", "all", layout="folders", image_size=None, test_fraction=0.5)
    tiled = pyanom.create("patchcore", image_size=None, tile_size=256, tile_overlap=32, coreset_ratio=0.005)
    tiled.fit(open_dataset(parts, "train", image_size=None), validation=val, progress=False)
    test = open_dataset(parts, "test", image_size=None)
    pred = tiled.predict(test, batch_size=1)
    assert pred.anomaly_maps.shape == (len(test), SIDE, SIDE)  # full resolution
    assert found(pred, test) == (True, True)

    plain = pyanom.create("patchcore", coreset_ratio=0.1)  # the default: the part shrunk to 256 px
    plain.fit(open_dataset(parts, "train"), validation=open_dataset(parts / "val", "all", layout="folders",
                                                                    test_fraction=0.5), progress=False)
    test256 = open_dataset(parts, "test")
    pred256 = plain.predict(test256)
    assert pred256.anomaly_maps.shape == (len(test), SIDE, SIDE)  # scored at 256 px, returned at the part's size
    assert found(pred256, test256) == (False, False)


def test_tiles_cover_the_image_and_stitch_back_exactly():
    positions = tile_positions((100, 70), (32, 32), 8)
    assert positions[0] == (0, 0) and positions[-1] == (68, 38)  # the last tiles end at the edges
    rows, cols = sorted({p[0] for p in positions}), sorted({p[1] for p in positions})
    assert all(b - a <= 32 - 8 for a, b in zip(rows, rows[1:])) and all(b - a <= 24 for a, b in zip(cols, cols[1:]))
    image = torch.rand(1, 100, 70)
    tiles = cut_tiles(image, positions, (32, 32))
    assert torch.allclose(stitch(tiles[:, 0], positions, (100, 70), 8), image[0])  # blending keeps a constant field
    window = blend_window((32, 32), 8)
    assert window[16, 16] == 1 and window[0, 16] == 1 / 9 and window[0, 0] == 1 / 81
    with pytest.raises(ValueError, match="tile_size 32x32 is larger than the image 20x70"):
        tile_positions((20, 70), (32, 32), 0)


def test_tiles_are_the_units_of_the_bounded_memory_plan(tmp_path):
    """Each tile counts as an image of the memory bank's plan: past memory_budget_mb the fit is
    sharded, so the features held at once stay bounded however large the images are."""
    for i in range(3):
        (tmp_path / "train" / "good").mkdir(parents=True, exist_ok=True)
        part(40 + i).crop((0, 0, 320, 256)).save(tmp_path / "train" / "good" / f"{i}.png")
    train = open_dataset(tmp_path, "train", image_size=None)
    det = pyanom.create("patchcore", image_size=None, tile_size=64, memory_budget_mb=1, coreset_ratio=0.05)
    det._fit(train, progress=False)  # the bank itself, no threshold: three images are too few to hold some out
    plan = det.memory_plan
    assert plan.n_images == 3 * 4 * 5  # tiles of 64 px: 4 rows x 5 columns per 256 x 320 image
    assert plan.mode == "sharded" and plan.shard_images * plan.bytes_per_image <= (1 << 20) // 2
    assert len(det.memory_bank) == -(-plan.n_images * 64 // 20)  # 5% of the 3840 patch features


def test_tiling_settings_are_checked():
    with pytest.raises(ValueError, match="tile_size 256 covers the whole 256 image: set image_size=null"):
        pyanom.create("patchcore", tile_size=256)
    with pytest.raises(ValueError, match="image_size=null keeps each image's own size, which only tiling"):
        pyanom.create("patchcore", image_size=None)
    with pytest.raises(ValueError, match=r"tile_overlap must be an int number of pixels in \[0, 64\)"):
        pyanom.create("patchcore", image_size=None, tile_size=64, tile_overlap=64)
    with pytest.raises(ValueError, match="tile_size 20 must be >= 32"):
        pyanom.create("sa_patchcore", image_size=None, tile_size=20)
