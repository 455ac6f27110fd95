"""Data readers, layout detection, validation, transforms and the synthetic inspection set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pyanom.data import (
    InspectionSet, Preprocess, Sample, check_samples, detect_layout, find_images, make_inspection_set, open_dataset,
    open_images, read_layout, stratified_split,
)
from pyanom.data.files import read_mask
from pyanom.data.synthetic import DEFECT_TYPES
from pyanom.data.transforms import center_crop, normalize, resize, to_tensor

# --------------------------------------------------------------------------- helpers


def write_image(path: Path, size=(12, 10), *, mode="RGB", seed=0, fmt=None) -> Path:
    """A small random image (size = width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)
    return path


def write_mask(path: Path, size=(12, 10), *, box=(2, 2, 6, 5), value=255) -> Path:
    """A mask with the box (x0, y0, x1, y1) set to value; box=None gives an empty mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size[1], size[0]), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        values[y0:y1, x0:x1] = value
    Image.fromarray(values).save(path)
    return path


def make_mvtec(root: Path) -> Path:
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(root / "test" / "good" / "000.png", seed=10)
    for i in range(2):
        write_image(root / "test" / "broken" / f"{i:03d}.png", seed=20 + i)
        write_mask(root / "ground_truth" / "broken" / f"{i:03d}_mask.png")
    return root


def make_ksdd2(root: Path, *, split=True) -> Path:
    for part in (("train", "test") if split else ("",)):
        for i in range(4):
            write_image(root / part / f"{i}.png", seed=i)
            write_mask(root / part / f"{i}_GT.png", box=(1, 1, 4, 4) if i % 2 else None)
    return root


def assert_item(item: dict, size=(256, 256)):
    assert item["image"].shape == (3, *size) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (1, *size) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["label"] in (0, 1) and isinstance(item["defect_type"], str) and Path(item["path"]).is_file()


# --------------------------------------------------------------------------- layouts


def test_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path / "part")
    assert detect_layout(root) == "mvtec"
    train = open_dataset(root, "train", image_size=16)
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 0] and set(train.defect_types) == {"good"}
    test = open_dataset(root, "test", image_size=16)
    assert test.labels.tolist() == [1, 1, 0] and test.defect_types == ["broken", "broken", "good"]
    assert [s.mask.name if s.mask else None for s in test.samples] == ["000_mask.png", "001_mask.png", None]
    defect, good = test[0], test[2]
    assert_item(defect, (16, 16))
    assert defect["mask"].sum() > 0 and good["mask"].sum() == 0 and good["label"] == 0
    assert defect["path"].endswith("broken/000.png")
    assert len(open_dataset(root, "all")) == 6
    assert test.layout == "mvtec" and test.split == "test"


def test_mvtec_items_batch_with_default_collate(tmp_path):
    root = make_mvtec(tmp_path / "part")
    batch = next(iter(torch.utils.data.DataLoader(open_dataset(root, "test", image_size=8), batch_size=3)))
    assert batch["image"].shape == (3, 3, 8, 8) and batch["mask"].shape == (3, 1, 8, 8)
    assert batch["label"].tolist() == [1, 1, 0] and batch["defect_type"] == ["broken", "broken", "good"]


def test_mvtec_other_normal_class_name(tmp_path):
    root = tmp_path / "part"
    write_image(root / "train" / "OK" / "a.png")
    write_image(root / "test" / "OK" / "b.png")
    write_image(root / "test" / "NG" / "c.png")
    write_mask(root / "ground_truth" / "NG" / "c_mask.png")
    test = open_dataset(root, "test")
    assert dict(zip(test.defect_types, test.labels.tolist())) == {"NG": 1, "OK": 0}


def test_kolektorsdd2_layout_with_split(tmp_path):
    root = make_ksdd2(tmp_path / "ksdd2")
    assert detect_layout(root) == "kolektorsdd2"
    train = open_dataset(root, "train", image_size=8)
    assert [s.image.name for s in train.samples] == ["0.png", "1.png", "2.png", "3.png"]
    assert train.labels.tolist() == [0, 1, 0, 1]  # label = mask not empty
    assert train.defect_types == ["good", "defect", "good", "defect"]
    assert all(s.mask.name == s.image.stem + "_GT.png" for s in train.samples)
    assert train[1]["mask"].sum() > 0 and train[0]["mask"].sum() == 0
    assert len(train.normal()) == 2 and train.normal().labels.tolist() == [0, 0]


def test_kolektorsdd2_flat_folder_is_split_by_fraction(tmp_path):
    root = make_ksdd2(tmp_path / "flat", split=False)
    assert detect_layout(root) == "kolektorsdd2"
    train = open_dataset(root, "train", test_fraction=0.5)
    test = open_dataset(root, "test", test_fraction=0.5)
    assert len(train) == len(test) == 2 and sorted(train.labels.tolist()) == sorted(test.labels.tolist()) == [0, 1]


def test_folders_layout_with_masks_beside_images(tmp_path):
    root = tmp_path / "tiles"
    for i in range(4):
        write_image(root / "good" / f"g{i}.png", seed=i)
    for i in range(2):
        write_image(root / "defect" / f"d{i}.png", seed=10 + i)
        write_mask(root / "defect" / f"d{i}_mask.png")
    assert detect_layout(root) == "folders"
    full = open_dataset(root, "all")
    assert full.counts() == {"defect": 2, "good": 4}
    assert all((s.mask is not None) == (s.label == 1) for s in full.samples)
    assert_item(full[0])


def test_folders_layout_magnetic_tile_style(tmp_path):
    """MT_<class>/Imgs/x.jpg with its mask x.png beside it; the normal class is found as MT_Free."""
    root = tmp_path / "mt"
    for cls, n in (("MT_Free", 3), ("MT_Crack", 2), ("MT_Blowhole", 2)):
        for i in range(n):
            write_image(root / cls / "Imgs" / f"{cls}_{i}.jpg", size=(20, 14), mode="L", seed=i)
            write_mask(root / cls / "Imgs" / f"{cls}_{i}.png", size=(20, 14),
                       box=None if cls == "MT_Free" else (1, 1, 5, 5), value=200)
    full = open_dataset(root, "all", image_size=14)
    assert full.counts() == {"MT_Blowhole": 2, "MT_Crack": 2, "MT_Free": 3}
    assert full.labels.sum() == 4 and all(s.image.suffix == ".jpg" and s.mask.suffix == ".png" for s in full.samples)
    item = full[0]
    assert item["label"] == 1 and item["mask"].sum() > 0
    assert torch.equal(item["image"][0], item["image"][1])  # greyscale replicated to RGB


def test_folders_layout_parallel_masks_folder_and_normal_class(tmp_path):
    root = tmp_path / "parts"
    for cls in ("pass", "dent"):
        for i in range(3):
            write_image(root / cls / f"{i}.png", seed=i)
    for i in range(3):
        write_mask(root / "masks" / "dent" / f"{i}.png")
    with pytest.raises(ValueError, match="normal_class"):
        open_dataset(root, "all")
    full = open_dataset(root, "all", normal_class="pass")
    assert full.counts() == {"dent": 3, "pass": 3}
    assert [s.mask is not None for s in full.samples] == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="'nope'"):
        open_dataset(root, "all", normal_class="nope")


def test_folders_layout_masks_required_once_some_exist(tmp_path):
    root = tmp_path / "parts"
    write_image(root / "good" / "0.png")
    write_image(root / "bad" / "1.png")
    write_image(root / "bad" / "2.png")
    write_mask(root / "bad" / "1_mask.png")
    with pytest.raises(FileNotFoundError, match=r"2\.png.*no mask"):
        open_dataset(root, "all")


def test_folders_layout_ambiguous_files(tmp_path):
    root = tmp_path / "parts"
    write_image(root / "good" / "0.png")
    write_image(root / "bad" / "1.png")
    write_image(root / "bad" / "1.bmp", fmt="BMP")
    write_image(root / "bad" / "1.tif", fmt="TIFF")
    with pytest.raises(ValueError, match="cannot tell image from mask"):
        open_dataset(root, "all")


def test_image_mask_layout(tmp_path):
    root = tmp_path / "seg"
    for i in range(6):
        write_image(root / "images" / f"{i}.png", seed=i)
        write_mask(root / "masks" / f"{i}.png", box=None if i < 4 else (0, 0, 3, 3))
    assert detect_layout(root) == "image_mask"
    full = open_dataset(root, "all")
    assert full.labels.tolist() == [0, 0, 0, 0, 1, 1] and full.defect_types[4] == "defect"
    assert all(s.mask.parent.name == "masks" for s in full.samples)


def test_detect_layout_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no known data set layout"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown layout"):
        open_dataset(tmp_path, layout="voc")
    write_image(tmp_path / "train" / "a.png")  # a split folder of plain images: no layout either
    with pytest.raises(ValueError, match="no known data set layout"):
        detect_layout(tmp_path)


def test_split_argument_checks(tmp_path):
    root = make_mvtec(tmp_path / "part")
    with pytest.raises(ValueError, match="split"):
        open_dataset(root, "val")
    with pytest.raises(ValueError, match="test_fraction must lie between 0 and 1, got 1.5"):
        open_dataset(root, test_fraction=1.5)
    (root / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="no 'test' part"):
        open_dataset(root, "test")


def test_a_flat_folder_is_all_good_and_all_train(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "thumbnails").mkdir()  # a sub-folder without images does not make classes
    assert detect_layout(tmp_path) == "flat"
    train = open_dataset(tmp_path, "train")
    assert train.labels.tolist() == [0, 0, 0] and train.counts() == {"good": 3}
    assert open_dataset(tmp_path, "all").counts() == {"good": 3}
    with pytest.raises(ValueError, match="layout folders needs class sub-folders .* its 3 images lie directly in it"):
        open_dataset(tmp_path, layout="folders")


def test_nested_defect_folders_are_defect_types_and_shared_sub_folders_are_not(tmp_path):
    for path in ("good/a/0.png", "good/b/1.png", "defect/scratch/2.png", "defect/dent/3.png", "defect/4.png",
                 "MT_Crack/Imgs/5.png", "MT_Crack/Imgs/6.png"):
        write_image(tmp_path / path)
    full = open_dataset(tmp_path, "all", normal_class="good")
    assert sorted(set(full.defect_types)) == ["MT_Crack", "defect", "defect/dent", "defect/scratch", "good"]


def test_an_unsupervised_split_sends_every_defect_to_test():
    samples = fake_samples({"good": 10, "crack": 5})
    train, test = stratified_split(samples, 0.3, seed=0, train_defects=False)
    assert [s.defect_type for s in train] == ["good"] * 7 and sum(s.defect_type == "crack" for s in test) == 5
    assert stratified_split(samples, 1.0, seed=0) == ([], sorted(samples, key=lambda s: s.image))


def test_the_training_files_fingerprint_follows_names_labels_and_sizes_not_the_place(tmp_path):
    from pyanom.data import files_fingerprint

    for root in (tmp_path / "a", tmp_path / "b"):
        for i in range(3):
            write_image(root / "good" / f"{i}.png", seed=i)
    a, b = (open_dataset(tmp_path / n, "all", layout="folders").samples for n in "ab")
    assert files_fingerprint(a, tmp_path / "a") == files_fingerprint(b, tmp_path / "b")
    assert files_fingerprint(a[:2], tmp_path / "a") != files_fingerprint(a, tmp_path / "a")


# --------------------------------------------------------------------------- split


def fake_samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(Path(f"/x/{t}/{i:04d}.png"), int(t != "good"), t) for t, n in counts.items() for i in range(n)]


def test_stratified_split_is_stratified_reproducible_and_disjoint():
    samples = fake_samples({"good": 100, "crack": 20, "spot": 7})
    train, test = stratified_split(samples, 0.3, seed=0)
    assert sorted(train + test, key=lambda s: s.image) == sorted(samples, key=lambda s: s.image)
    assert not set(train) & set(test)
    per_type = {t: sum(s.defect_type == t for s in test) for t in ("good", "crack", "spot")}
    assert per_type == {"good": 30, "crack": 6, "spot": 2}
    assert stratified_split(list(reversed(samples)), 0.3, seed=0) == (train, test)  # input order does not matter
    assert stratified_split(samples, 0.3, seed=1)[1] != test
    # adding a class leaves the other classes' split alone
    more = stratified_split(samples + fake_samples({"dent": 5}), 0.3, seed=0)[1]
    assert [s for s in more if s.defect_type != "dent"] == test


def test_open_dataset_split_is_seeded(tmp_path):
    root = tmp_path / "parts"
    for i in range(10):
        write_image(root / "good" / f"{i}.png", size=(4, 4), seed=i)
        write_image(root / "defect" / f"{i}.png", size=(4, 4), seed=i)
    paths = lambda split, seed: [s.image for s in open_dataset(root, split, seed=seed).samples]  # noqa: E731
    assert paths("test", 0) == paths("test", 0) and paths("test", 0) != paths("test", 5)
    assert not set(paths("train", 3)) & set(paths("test", 3))
    assert len(paths("test", 0)) == 6 and len(paths("train", 0)) == 14


# --------------------------------------------------------------------------- validation errors


def corrupt_png(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 4] = bytes(b ^ 0xFF for b in data[start:start + 4])
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "not_an_image", "empty_file"])
def test_bad_image_is_named(tmp_path, damage):
    root = make_mvtec(tmp_path / "part")
    bad = root / "train" / "good" / "001.png"
    write_image(bad, size=(64, 64))
    if damage == "corrupt":
        corrupt_png(bad)
    elif damage == "truncated":
        truncate(bad)
    elif damage == "not_an_image":
        bad.write_text("this is not a picture")
    else:
        bad.write_bytes(b"")
    with pytest.raises(ValueError, match=str(bad)):
        open_dataset(root, "train")
    open_dataset(root, "test")  # the test split does not hold the bad file


def test_truncated_jpeg_and_bmp_are_caught(tmp_path):
    for name, fmt in (("a.jpg", "JPEG"), ("b.bmp", "BMP")):
        path = truncate(write_image(tmp_path / name, size=(64, 64), fmt=fmt))
        with pytest.raises(ValueError, match=name):
            open_images(path)


def test_all_problems_listed_in_one_error(tmp_path):
    root = make_mvtec(tmp_path / "part")
    for name in ("000.png", "002.png"):
        (root / "train" / "good" / name).write_text("junk")
    with pytest.raises(ValueError, match=r"2 problems(.|\n)*000\.png(.|\n)*002\.png"):
        open_dataset(root, "train")


def test_mask_size_mismatch_is_named(tmp_path):
    root = make_mvtec(tmp_path / "part")
    mask = write_mask(root / "ground_truth" / "broken" / "001_mask.png", size=(11, 10))
    with pytest.raises(ValueError, match=rf"{mask}.*11x10.*12x10"):
        open_dataset(root, "test")


def test_corrupt_mask_is_named(tmp_path):
    root = make_ksdd2(tmp_path / "ksdd2")
    mask = truncate(write_mask(root / "train" / "1_GT.png", size=(256, 256), box=(0, 0, 256, 256)), 0.3)
    with pytest.raises(ValueError, match=str(mask)):
        open_dataset(root, "train")


def test_missing_masks_are_named(tmp_path):
    root = make_mvtec(tmp_path / "part")
    (root / "ground_truth" / "broken" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"broken/001\.png.*no mask.*001_mask\.png"):
        open_dataset(root, "test")

    ksdd2 = make_ksdd2(tmp_path / "ksdd2")
    (ksdd2 / "test" / "2_GT.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"test/2\.png.*no mask"):
        open_dataset(ksdd2, "test")
    (ksdd2 / "train" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"3_GT\.png.*no image"):
        open_dataset(ksdd2, "train")

    seg = tmp_path / "seg"
    write_image(seg / "images" / "a.png")
    write_image(seg / "images" / "b.png")
    write_mask(seg / "masks" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"b\.png.*no mask"):
        open_dataset(seg, "all")


def test_empty_folders_are_named(tmp_path):
    root = make_mvtec(tmp_path / "part")
    (root / "test" / "scratch").mkdir()
    (root / "test" / "scratch" / "readme.txt").write_text("to do")
    with pytest.raises(FileNotFoundError, match=str(root / "test" / "scratch")):
        open_dataset(root, "test")

    folders = tmp_path / "folders"
    write_image(folders / "good" / "a.png")
    (folders / "defect").mkdir()
    with pytest.raises(FileNotFoundError, match=str(folders / "defect")):
        open_dataset(folders, "all")


def test_empty_split_is_an_error(tmp_path):
    root = tmp_path / "parts"
    write_image(root / "good" / "a.png")
    with pytest.raises(FileNotFoundError, match="no images in split 'test'"):
        open_dataset(root, "test")  # 1 image * 0.3 rounds to none


def test_inspection_set_from_samples_is_validated(tmp_path):
    good = write_image(tmp_path / "a.png")
    missing = tmp_path / "gone.png"
    with pytest.raises(FileNotFoundError, match="gone.png"):
        InspectionSet([Sample(good, 0, "good"), Sample(missing, 0, "good")])
    check_samples([Sample(good, 1, "dent", write_mask(tmp_path / "m.png"))])


# --------------------------------------------------------------------------- transforms and images


def test_resize_is_antialiased_and_masks_stay_binary():
    stripes = np.zeros((64, 64), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: aliasing would give pure black or white
    small = to_tensor(resize(Image.fromarray(stripes), 16))
    assert small.shape == (1, 16, 16) and torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)

    pre = Preprocess(image_size=(20, 30), crop_size=10)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    out = pre.mask(mask)
    assert out.shape == (1, 10, 10) and set(out.unique().tolist()) == {1.0}  # the centre lies in the box
    assert pre.mask(None).shape == (1, 10, 10) and pre.output_size == (10, 10)


def test_center_crop_takes_the_middle():
    values = np.arange(36, dtype=np.uint8).reshape(6, 6)
    crop = np.asarray(center_crop(Image.fromarray(values), (2, 4)))
    assert crop.tolist() == values[2:4, 1:5].tolist()
    with pytest.raises(ValueError, match="larger"):
        Preprocess(image_size=8, crop_size=9)
    with pytest.raises(ValueError, match="image_size"):
        Preprocess(image_size=0)


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    y = normalize(x, (0.5, 0.4, 0.3), (0.5, 0.2, 0.1))
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.4) / 0.2)


def test_image_modes(tmp_path):
    wide = np.linspace(0, 65535, 12 * 10).reshape(10, 12).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")  # 16-bit greyscale
    Image.new("RGBA", (12, 10), (10, 200, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (12, 10), 3).save(tmp_path / "palette.png")
    items = open_images(tmp_path, image_size=(10, 12))
    images = {Path(items[i]["path"]).name: items[i]["image"] for i in range(len(items))}
    deep = images["deep.png"]
    assert deep.shape == (3, 10, 12) and float(deep.min()) == 0.0 and float(deep.max()) == 1.0
    assert torch.allclose(images["alpha.png"][:, 0, 0], torch.tensor([10, 200, 30]) / 255)


@pytest.mark.parametrize("values,want", [([0, 100, 128, 255], [0, 0, 1, 1]), ([0, 1, 1, 0], [0, 1, 1, 0])])
def test_read_mask_thresholds_at_127_or_0_for_01_masks(tmp_path, values, want):
    Image.fromarray(np.asarray([values], np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").astype(int).tolist() == [want]


def test_find_images_and_open_images(tmp_path):
    for name in ("b.png", "a.JPG", "c.bmp"):
        write_image(tmp_path / "dir" / name, fmt="JPEG" if name.endswith("JPG") else None)
    (tmp_path / "dir" / "notes.txt").write_text("x")
    write_image(tmp_path / "dir" / "sub" / "deep.png")
    single = write_image(tmp_path / "z.tif")
    found = find_images(single, tmp_path / "dir")
    assert [p.name for p in found] == ["z.tif", "a.JPG", "b.png", "c.bmp"]
    items = open_images(tmp_path / "dir", image_size=8)
    assert len(items) == 3 and items[0]["image"].shape == (3, 8, 8) and items[0]["path"].endswith("a.JPG")
    with pytest.raises(FileNotFoundError, match="nothing"):
        find_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: folder holds no images"):
        find_images(single, tmp_path / "empty")
    with pytest.raises(ValueError, match="notes.txt"):
        find_images(tmp_path / "dir" / "notes.txt")


# --------------------------------------------------------------------------- real data


def test_real_mvtec_bottle(shared_data):
    root = shared_data / "mvtec" / "bottle"
    assert detect_layout(root) == "mvtec"
    splits = read_layout(root)  # headers only: counts and pairing
    assert len(splits["train"]) == 209 and all(s.label == 0 for s in splits["train"])
    test = open_dataset(root, "test")  # fully validated
    assert len(test) == 83 and sum(s.mask is not None for s in test.samples) == 63
    assert test.counts() == {"broken_large": 20, "broken_small": 22, "contamination": 21, "good": 20}
    for i in (0, 82):
        assert_item(test[i])
    assert test[0]["mask"].sum() > 0 and test[82]["defect_type"] == "good" and test[82]["mask"].sum() == 0


def test_real_magnetic_tile(shared_data):
    root = shared_data / "magnetic_tile"
    assert detect_layout(root) == "folders"
    test = open_dataset(root, "test")
    samples = read_layout(root)["all"]
    counts = {t: sum(s.defect_type == t for s in samples) for t in {s.defect_type for s in samples}}
    assert counts == {"MT_Free": 952, "MT_Blowhole": 115, "MT_Break": 85, "MT_Crack": 57, "MT_Fray": 32,
                      "MT_Uneven": 103}
    assert sum(s.label for s in samples) == 392 and all(s.mask is not None for s in samples)
    assert all(s.label == (s.defect_type != "MT_Free") for s in samples)
    defect = next(i for i, s in enumerate(test.samples) if s.defect_type == "MT_Blowhole")
    good = test.defect_types.index("MT_Free")
    assert_item(test[defect])
    assert_item(test[good])
    assert test[defect]["mask"].sum() > 0 and test[good]["mask"].sum() == 0
    assert len(test.normal()) == test.counts()["MT_Free"]


# --------------------------------------------------------------------------- synthetic set


SMALL = dict(n_train=2, n_test_good=1, n_test_defect=3, size=64)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("kind,surface", [("texture", "metal"), ("texture", "fabric"), ("texture", "grain"),
                                          ("cooccurrence", "metal")])
def test_synthetic_set_layout_masks_and_determinism(tmp_path, kind, surface):
    root = make_inspection_set(tmp_path / "a", kind=kind, surface=surface, seed=3, **SMALL)
    assert detect_layout(root) == "mvtec"
    test = open_dataset(root, "test", image_size=64)
    assert test.counts() == {"good": 1, **{t: 1 for t in DEFECT_TYPES[kind]}}
    assert len(open_dataset(root, "train")) == 2
    for s in test.samples:
        if s.label:
            assert read_mask(s.mask).any(), s.mask
        else:
            assert s.mask is None
    item = test[0]
    assert_item(item, (64, 64))
    assert float(item["image"].std()) > 0.02  # a textured image, not a flat one
    same = make_inspection_set(tmp_path / "b", kind=kind, surface=surface, seed=3, **SMALL)
    other = make_inspection_set(tmp_path / "c", kind=kind, surface=surface, seed=4, **SMALL)
    assert folder_bytes(root) == folder_bytes(same)
    assert folder_bytes(root)["train/good/000.png"] != folder_bytes(other)["train/good/000.png"]


def test_synthetic_images_do_not_depend_on_counts(tmp_path):
    small = make_inspection_set(tmp_path / "a", **SMALL)
    big = make_inspection_set(tmp_path / "b", **{**SMALL, "n_train": 4, "n_test_defect": 6})
    a, b = folder_bytes(small), folder_bytes(big)
    assert all(b[name] == data for name, data in a.items())


def test_synthetic_cooccurrence_masks_cover_the_nut_seats(tmp_path):
    root = make_inspection_set(tmp_path / "rods", kind="cooccurrence", n_train=1, n_test_good=0, n_test_defect=6,
                               size=128)
    for defect in ("both_nuts", "no_nut"):
        for mask in sorted((root / "ground_truth" / defect).iterdir()):
            # both ends: the arrangement is wrong, neither end alone
            assert ndimage.label(read_mask(mask))[1] == 2, mask


def test_synthetic_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        make_inspection_set(tmp_path, kind="wood")
    with pytest.raises(ValueError, match="n_train"):
        make_inspection_set(tmp_path, n_train=0)
    make_inspection_set(tmp_path / "x", **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_inspection_set(tmp_path / "x", **SMALL)
    make_inspection_set(tmp_path / "x", overwrite=True, **{**SMALL, "n_test_good": 0})
    assert not (tmp_path / "x" / "test" / "good").exists()
