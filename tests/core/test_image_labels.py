"""A train/test split of class folders without any mask folder is a set with image labels only;
where a mask folder exists, every defect image needs its mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pyanom
from pyanom.data import describe_layout, detect_layout, open_dataset


def _image(path: Path, seed: int, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _mask(path: Path, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size[1], size[0]), np.uint8)
    values[4:8, 5:9] = 255
    Image.fromarray(values).save(path)


def split_set(root: Path) -> Path:
    """train/{good,defect}, test/{good,defect}: the usual few-shot classification set, no masks."""
    seed = 0
    for split, counts in (("train", {"good": 6, "defect": 3}), ("test", {"good": 4, "defect": 4})):
        for cls, n in counts.items():
            for i in range(n):
                seed += 1
                _image(root / split / cls / f"{split}_{cls}_{i}.png", seed)
    return root


def test_a_split_without_masks_has_image_labels_only(tmp_path):
    root = split_set(tmp_path / "set")
    assert detect_layout(root) == "mvtec"
    train, test = open_dataset(root, "train"), open_dataset(root, "test")
    assert train.counts() == {"defect": 3, "good": 6} and test.counts() == {"defect": 4, "good": 4}
    assert train.labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert not train.has_masks and not test.has_masks
    assert not test.masks().any()
    line = describe_layout(root)
    assert "layout mvtec" in line and "image labels only (no masks)" in line
    assert "train defect 3, good 6; test defect 4, good 4" in line


def test_one_missing_mask_among_present_ones_is_an_error_naming_it(tmp_path):
    root = split_set(tmp_path / "set")
    masks = root / "ground_truth" / "defect"
    for name in ("train_defect_0", "train_defect_1", "train_defect_2", "test_defect_0", "test_defect_1",
                 "test_defect_3"):
        _mask(masks / f"{name}_mask.png")
    missing = root / "test" / "defect" / "test_defect_2.png"
    with pytest.raises(FileNotFoundError, match="defect image has no mask") as err:
        open_dataset(root, "train")  # the whole set is read: the one missing mask is the only problem
    assert str(err.value) == f"{missing}: defect image has no mask (expected {masks / 'test_defect_2_mask.png'})"


def test_an_empty_mask_folder_is_refused_with_what_to_do(tmp_path):
    root = split_set(tmp_path / "set")
    (root / "ground_truth").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no masks: add them, or remove it"):
        open_dataset(root, "train")


def test_labelled_folders_with_a_mask_folder_need_every_mask(tmp_path):
    root = tmp_path / "folders"
    for i in range(3):
        _image(root / "good" / f"g{i}.png", i)
        _image(root / "defect" / f"d{i}.png", 10 + i)
    (root / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"d0\.png: defect image has no mask, though .*masks exists"):
        open_dataset(root, "all")
    (root / "masks").rmdir()
    assert not open_dataset(root, "all").has_masks


def test_mask_trained_detector_refuses_image_labels_naming_detector_and_set(tmp_path):
    root = split_set(tmp_path / "set")
    det = pyanom.create("segdec", image_size=16, seg_epochs=1, dec_epochs=1)
    with pytest.raises(ValueError, match=rf"segdec learns from pixel masks, but {root} has image labels only"):
        det.fit(open_dataset(root, "train", image_size=16), progress=False)
